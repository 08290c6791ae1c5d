"""Logging configuration: the service's and uvicorn's loggers, as text or JSON lines.

A log line cannot be forged: a client's path, say, is percent-decoded and may hold a line break
(`%0A`) followed by what looks like a line of its own. The text format escapes every control
character and line separator in the line (`\\n`, `\\x85`, `\\u2028`); the JSON format escapes
them inside its strings, including the three that JSON allows raw (U+0085, U+2028, U+2029) and
that some log readers still take for the end of a line.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import orjson

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: everything
# str.splitlines() breaks on, and what a terminal would act on.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# What JSON writers leave raw that a reader may still take for a line break.
_JSON_RAW = re.compile("[\x85\u2028\u2029]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape(text: str) -> str:
    """`text` with its control characters and line separators written as Python writes them
    (`\\n`, `\\x85`, `\\u2028`): what a client sent, fit for one line of a log."""
    if text.isascii() and text.isprintable():  # the usual case, in C
        return text
    return _UNSAFE.sub(_escape_one, text)


def json_line(entry: dict[str, Any]) -> str:
    """`entry` as one line of JSON, with nothing in it a reader could split the line at."""
    try:
        line = orjson.dumps(entry).decode()
    except TypeError:  # a field orjson cannot write: fall back to str()
        line = json.dumps(entry, default=str)
    if line.isascii():
        return line
    # Only inside strings can these appear; their \u escapes mean the same characters.
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus the record's `fields` (and,
    in a worker process, `worker`: its number)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json_line(entry)


class TextFormatter(logging.Formatter):
    """`time level logger: message` (`logger[worker N]` in a worker process), the message
    escaped (see the module docstring). A traceback after it keeps its own lines."""

    def __init__(self, worker: int | None = None) -> None:
        who = "%(name)s" if worker is None else f"%(name)s[worker {worker}]"
        super().__init__(f"%(asctime)s %(levelname)s {who}: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))


def configure_logging(level: str, log_format: str, worker: int | None = None) -> None:
    """The service's and uvicorn's loggers, as text or one JSON object per line; every line of
    a worker process says which worker it is."""
    handler = logging.StreamHandler()
    formatter = JSONFormatter(worker) if log_format == "json" else TextFormatter(worker)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
