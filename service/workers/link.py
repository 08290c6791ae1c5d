"""A worker's side of the channel to its supervisor: it says when it is ready, takes part in
reloads (prepares, then commits or aborts as the supervisor decides), asks the supervisor for
the reloads its own clients (or a SIGHUP sent to it) ask for, and keeps the supervisor's word on
whether every worker is ready."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from service.errors import Forbidden, ServiceError, TooManyRequests
from service.manifest import ModelLoadError
from service.models.registry import ModelRegistry, RescanReport, StagedSwap
from service.workers.channel import Channel, Message

logger = logging.getLogger("service")
KEPT_REPORTS = 16  # rescan reports kept for the requests that asked (SIGHUP's have none)


def relayed_refusal(status: int, message: str, headers: dict[str, str]) -> ServiceError:
    """The supervisor's reload gate refused (403, 429): the same error here."""
    if status == TooManyRequests.status:
        return TooManyRequests("", message, int(headers.get("Retry-After", "1")))
    return Forbidden("", message)


class WorkerLink:
    """The worker's end of the channel, and its registry's reload coordinator."""

    def __init__(self, sock: socket.socket, registry: ModelRegistry, index: int) -> None:
        self.sock = sock
        self.registry = registry
        self.index = index
        self.peers_ready = False  # every worker ready, as the supervisor says
        self.channel: Channel | None = None
        self._asked: dict[int, asyncio.Future[Message]] = {}
        self._ids = itertools.count(1)
        self._decisions: dict[int, asyncio.Future[bool]] = {}
        self._reports: dict[int, RescanReport] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        on_connection: Callable[[socket.socket], object],
        on_stop: Callable[[bool], object],
    ) -> None:
        """On the event loop, once the app is ready: listen, and tell the supervisor.
        `on_stop(now)`: drain and stop (now: stop draining at once)."""
        self.channel = Channel(self.sock, self._on_message, on_connection, self._gone)
        self._on_stop = on_stop
        # SIGHUP sent to a worker reloads every worker, as one sent to the supervisor does.
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._send({"op": "hangup"})))
        self._spawn(self._send({"op": "ready", "pid": os.getpid(), **self.registry.summary()}))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, message: Message) -> None:
        if self.channel is not None:
            await self.channel.send(message)

    def _gone(self) -> None:
        logger.error("the supervisor is gone: this worker drains and stops")
        for future in self._asked.values():
            if not future.done():
                future.set_result({"ok": False, "error": "the supervisor is gone"})
        for decision in self._decisions.values():
            if not decision.done():
                decision.set_result(False)
        self._on_stop(False)

    def _on_message(self, message: Message) -> None:
        op = message.get("op")
        if op == "peers":
            self.peers_ready = bool(message["ready"])
        elif op == "stop":
            self._on_stop(bool(message["now"]))
        elif op == "prepare":
            self._spawn(self._take_part(message))
        elif op in ("commit", "abort"):
            decision = self._decisions.get(message["tx"])
            if decision is not None and not decision.done():
                decision.set_result(op == "commit")
        elif op == "outcome":
            asked = self._asked.pop(message["id"], None)
            if asked is not None and not asked.done():
                asked.set_result(message)

    async def _take_part(self, message: Message) -> None:
        """Prepare the reload (or rescan) the supervisor names, say how it went, then commit or
        abort it as told; the registry serves nothing new until the commit."""
        tx: int = message["tx"]
        decision: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._decisions[tx] = decision
        registry = self.registry
        try:
            async with registry.exclusive:
                staged: StagedSwap | None = None
                try:
                    if message["kind"] == "reload":
                        staged = await registry.prepare_reload(message["name"])
                    else:
                        staged = await registry.prepare_rescan()
                    reply = {"ok": True, "summary": staged.summary()}
                except ModelLoadError as exc:
                    reply = {"ok": False, "error": str(exc)}
                await self._send({"op": "prepared", "tx": tx, **reply})
                commit = await decision
                if staged is not None and commit:
                    registry.commit(staged)
                    if staged.report is not None:  # for the request that asked, if here
                        self._reports[tx] = staged.report
                        for old in [t for t in self._reports if t <= tx - KEPT_REPORTS]:
                            del self._reports[old]
                elif staged is not None:
                    await registry.abort(staged)
        finally:
            self._decisions.pop(tx, None)
            await self._send({"op": "done", "tx": tx})

    async def _ask(self, kind: str, name: str | None = None) -> Message:
        ask_id = next(self._ids)
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._asked[ask_id] = answer
        await self._send({"op": "request", "id": ask_id, "kind": kind, "name": name})
        outcome = await answer
        if outcome.get("status") is not None:
            raise relayed_refusal(outcome["status"], outcome["error"], outcome["headers"])
        if not outcome["ok"]:
            raise ModelLoadError(outcome["error"])
        return outcome

    async def reload(self, name: str) -> None:
        await self._ask("reload", name)

    async def rescan(self) -> RescanReport:
        outcome = await self._ask("rescan")
        report = self._reports.pop(outcome["tx"], None)
        if report is None:  # this worker was starting and took no part: the others did
            raise ModelLoadError("this worker was not ready during the reload; ask again")
        return report
