"""The structured log line written for every request (VAE_ACCESS_LOG)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from service.observability.logs import escape, json_line


class AccessLog:
    """One line per request (text or JSON, like the other logs), collected and written in
    batches rather than through `logging`, whose record, handler lock and write per line cost
    a large share of a one-image request. Written when 256 lines are waiting, by the app every
    0.25 s, and at shutdown. In a worker process each line says which worker answered."""

    def __init__(
        self, log_format: str, stream: TextIO | None = None, worker: int | None = None
    ) -> None:
        self.json = log_format == "json"
        self.worker = worker
        self.stream = stream
        self.pending: list[str] = []
        self._second = -1
        self._stamp = ""

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            pattern = "%Y-%m-%dT%H:%M:%S" if self.json else "%Y-%m-%d %H:%M:%S"
            self._stamp = time.strftime(
                pattern, time.gmtime(second) if self.json else time.localtime(second)
            )
        millis = int((now - second) * 1000)
        return f"{self._stamp}.{millis:03d}Z" if self.json else f"{self._stamp},{millis:03d}"

    def write(self, message: str, fields: dict[str, Any]) -> None:
        stamp = self._time(time.time())
        if self.worker is not None:
            fields["worker"] = self.worker
        if self.json:
            entry = {"time": stamp, "level": "info", "logger": "service.access", "message": message}
            line = json_line({**entry, **fields})
        else:
            # A path is percent-decoded: `%0A` would forge a line. Text escapes it.
            extras = " ".join(
                f"{k}={escape(v) if isinstance(v, str) else v}"
                for k, v in fields.items()
                if v is not None
            )
            line = f"{stamp} INFO service.access: {escape(message)} {extras}"
        self.pending.append(line)
        if len(self.pending) >= 256:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            stream = self.stream or sys.stderr
            stream.write("\n".join(self.pending) + "\n")
            stream.flush()
            self.pending.clear()
