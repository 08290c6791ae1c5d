"""The supervisor of the worker processes (VAE_WORKERS above 1).

Started by `python -m service` once every model has passed its check in this process, it binds
the port once, starts the workers with multiprocessing's spawn (fresh interpreters: onnxruntime
and its threads are not fork-safe, and the libraries' pages are shared by the OS anyway), and
hands every accepted connection to the next ready worker in turn over a Unix socket: a few
connections opened at once (a load generator, a proxy's keep-alive pool) are spread evenly,
which a shared listening socket does not do (the worker that wakes first takes them all).

It restarts a worker that dies (at once after a long life, with a doubling back-off after a
short one), tells every worker whether all of them are ready (each answers /readyz with that),
runs every reload as prepare-everywhere-then-commit-everywhere (all workers serve the new
version or none does), and on SIGTERM drains every worker by the rules of one process, keeps
handing connections over during the drain window, then waits for them and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

import orjson

from service.errors import ServiceError
from service.http.reload_gate import FOLDER, ReloadGate
from service.models.registry import ModelRegistry
from service.models.runtime import memory_trimmer
from service.observability.metrics import MULTIPROCESS_DIR
from service.settings import Settings
from service.workers.channel import Channel, Message, channel_pair
from service.workers.cores import ThreadBudget
from service.workers.memory import memory_line
from service.workers.worker import WorkerSpec, run_worker

logger = logging.getLogger("service")

BACKOFF_S = 0.5  # the first restart after a short life; doubled for each one after
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0  # a worker that lived this long is restarted at once
KILL_AFTER_S = 10.0  # past VAE_SHUTDOWN_DRAIN_S + VAE_SHUTDOWN_GRACE_S: SIGKILL
BACKLOG = 2048  # uvicorn's default


@dataclass
class Slot:
    """One worker's place: the process in it now, its channel, what it reported."""

    index: int
    process: BaseProcess | None = None
    channel: Channel | None = None
    ready: bool = False
    started_at: float = 0.0
    short_lives: int = 0  # deaths in a row within HEALTHY_AFTER_S of the start
    summary: dict[str, Any] | None = None  # the models it serves (fingerprints), the default
    waiting: dict[tuple[str, int], asyncio.Future[Message]] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid or 0 if self.process is not None else 0

    @property
    def reachable(self) -> bool:
        return self.ready and self.channel is not None and not self.channel.closed


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode}"


def _same(summaries: list[dict[str, Any]]) -> bool:
    return len({orjson.dumps(s, option=orjson.OPT_SORT_KEYS) for s in summaries}) <= 1


class Supervisor:
    def __init__(
        self, settings: Settings, budget: ThreadBudget, listener: socket.socket, metrics_dir: str
    ) -> None:
        self.settings = settings
        self.budget = budget
        self.listener: socket.socket | None = listener
        self.metrics_dir = metrics_dir
        self.context = multiprocessing.get_context("spawn")
        self.slots = [Slot(index) for index in range(1, budget.workers + 1)]
        self.stopping = False
        self.all_ready = False
        self.announced = False
        self.accepting = False
        self.turn = 0  # round robin over the ready workers
        self.gate = ReloadGate()  # the reload endpoints' rules, for every worker at once
        self.transactions = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- running ----------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.exited = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self.hurry = asyncio.Event()
        self.one_at_a_time = asyncio.Lock()  # reloads, as one process's registry runs them
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._hangup("SIGHUP")))
        for slot in self.slots:
            self._start(slot)
        await self.stop_requested.wait()
        await self._shutdown()
        return 0

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, slot: Slot) -> None:
        if self.stopping:
            return
        ours, theirs = channel_pair()
        spec = WorkerSpec(slot.index, self.settings, theirs)
        process = self.context.Process(
            target=run_worker, args=(spec,), name=f"vae-worker-{slot.index}"
        )
        process.start()
        theirs.close()
        slot.process, slot.ready, slot.summary = process, False, None
        slot.started_at = time.monotonic()
        slot.channel = Channel(ours, lambda message: self._on_message(slot, message))
        asyncio.get_running_loop().add_reader(process.sentinel, self._on_exit, slot, process)
        logger.info("worker %d started (pid %d)", slot.index, process.pid)

    def _on_exit(self, slot: Slot, process: BaseProcess) -> None:
        asyncio.get_running_loop().remove_reader(process.sentinel)
        process.join()
        how = _how_it_ended(process.exitcode)
        if process.pid is not None:
            with contextlib.suppress(OSError):  # its live gauges leave the sums
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(process.pid, self.metrics_dir)
        if slot.channel is not None:
            slot.channel.close()
        for future in slot.waiting.values():
            if not future.done():
                error = f"worker {slot.index} {how} during the reload"
                future.set_result({"ok": False, "error": error})
        slot.waiting.clear()
        slot.ready = False
        self._readiness_changed()
        self.exited.set()
        if self.stopping:
            logger.info("worker %d (pid %d) %s", slot.index, process.pid, how)
            return
        lived = time.monotonic() - slot.started_at
        slot.short_lives = 0 if lived >= HEALTHY_AFTER_S else slot.short_lives + 1
        delay = (
            min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (slot.short_lives - 1)) if slot.short_lives else 0
        )
        logger.error(
            "worker %d (pid %d) %s after %.1f s; starting another in %.1f s",
            slot.index,
            process.pid,
            how,
            lived,
            delay,
        )
        asyncio.get_running_loop().call_later(delay, self._start, slot)

    def _on_message(self, slot: Slot, message: Message) -> None:
        op = message.get("op")
        if op == "ready":
            slot.ready = True
            slot.summary = {"models": message["models"], "default": message["default"]}
            logger.info("worker %d (pid %d) ready", slot.index, slot.pid)
            self._readiness_changed()
            self._check_versions(slot)
        elif op in ("prepared", "done"):
            future = slot.waiting.pop((op, message["tx"]), None)
            if future is not None and not future.done():
                future.set_result(message)
        elif op == "request":
            self._spawn(self._serve_request(slot, message))
        elif op == "hangup":
            self._spawn(self._hangup(f"SIGHUP to worker {slot.index}"))

    def _readiness_changed(self) -> None:
        ready = not self.stopping and all(slot.ready for slot in self.slots)
        if ready != self.all_ready:
            self.all_ready = ready
            for slot in self.slots:
                if slot.channel is not None:
                    self._spawn(slot.channel.send({"op": "peers", "ready": ready}))
        self._accept_while_someone_serves()
        if ready and not self.announced:
            self.announced = True
            processes = {"supervisor": os.getpid()}
            processes.update({f"worker {slot.index}": slot.pid for slot in self.slots})
            logger.info("ready: %d workers; %s", len(self.slots), memory_line(processes))

    # --- connections ------------------------------------------------------------------------

    def _accept_while_someone_serves(self) -> None:
        """Accept while a worker is ready; otherwise connections wait in the listen backlog."""
        want = self.listener is not None and any(slot.reachable for slot in self.slots)
        if want != self.accepting and self.listener is not None:
            loop = asyncio.get_running_loop()
            if want:
                loop.add_reader(self.listener.fileno(), self._accept)
            else:
                loop.remove_reader(self.listener.fileno())
            self.accepting = want

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(BACKLOG):  # what is waiting now, then back to the loop
            try:
                connection, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: the next wake-up retries
                logger.error("could not accept a connection: %s", exc)
                return
            self._hand_over(connection)

    def _hand_over(self, connection: socket.socket) -> None:
        """To the next ready worker in turn; past one that cannot take it (it has just died,
        and the supervisor has not heard yet) to the one after."""
        ready = [slot for slot in self.slots if slot.reachable]
        for _ in ready:
            self.turn = (self.turn + 1) % len(ready)
            channel = ready[self.turn].channel
            assert channel is not None
            if channel.hand_over(connection):
                return
        connection.close()  # no worker could take it: the client sees the connection close

    # --- reloads ----------------------------------------------------------------------------

    async def _serve_request(self, slot: Slot, message: Message) -> None:
        """A reload a worker's client asked for: the gate, then every worker."""
        kind, name = message["kind"], message.get("name") or ""
        outcome: Message = {"op": "outcome", "id": message["id"]}
        try:
            with self.gate.admit(FOLDER if kind == "rescan" else name, self.settings):
                outcome.update(await self.transaction(kind, name))
        except ServiceError as exc:
            error = str(exc)
            outcome.update(ok=False, status=exc.status, error=error, headers=exc.headers or {})
        if slot.channel is not None:
            await slot.channel.send(outcome)

    async def _hangup(self, why: str) -> None:
        logger.info("%s: reading the model folder again in every worker", why)
        outcome = await self.transaction("rescan", None)
        if not outcome["ok"]:
            logger.error(
                "reload of the model folder refused, nothing was changed: %s", outcome["error"]
            )

    def _check_versions(self, slot: Slot) -> None:
        """A worker started again loads the model folder as it is now; when that is not what
        the others serve (the folder changed without a reload), every worker reloads it."""
        summaries = [s.summary for s in self.slots if s.ready and s.summary is not None]
        if not _same(summaries):
            logger.warning(
                "worker %d loaded other model files than the other workers serve (the model "
                "folder changed without a reload)",
                slot.index,
            )
            self._spawn(self._hangup("to serve the same files everywhere"))

    async def _round(self, slots: list[Slot], reply: str, message: Message) -> list[Message]:
        """Send `message` to every slot and wait for each one's `reply` (or its death)."""
        loop = asyncio.get_running_loop()
        futures = []
        for slot in slots:
            future: asyncio.Future[Message] = loop.create_future()
            slot.waiting[(reply, message["tx"])] = future
            futures.append(future)
            assert slot.channel is not None
            self._spawn(slot.channel.send(message))
        return list(await asyncio.gather(*futures))

    async def transaction(self, kind: str, name: str | None) -> Message:
        """A reload of `name` (kind `reload`) or of the whole folder (`rescan`) in every ready
        worker: each prepares it (loads and checks, serving nothing new); only when all could,
        and all found the same files, does each commit it; otherwise each aborts it."""
        async with self.one_at_a_time:
            tx = next(self.transactions)
            slots = [slot for slot in self.slots if slot.reachable]
            if not slots:
                return {"ok": False, "tx": tx, "error": "no worker is ready; try again"}
            prepare = {"op": "prepare", "tx": tx, "kind": kind, "name": name}
            prepared = await self._round(slots, "prepared", prepare)
            errors = [reply["error"] for reply in prepared if not reply["ok"]]
            summaries = [reply["summary"] for reply in prepared if reply["ok"]]
            if not errors and not _same(summaries):
                errors.append(
                    "the workers found different files in the model folder (it changed during "
                    "the reload); nothing was changed: reload again"
                )
            commit = not errors
            await self._round(slots, "done", {"op": "commit" if commit else "abort", "tx": tx})
            if commit:
                for slot in slots:
                    slot.summary = {k: summaries[0][k] for k in ("models", "default")}
            return {"ok": commit, "tx": tx, "error": errors[0] if errors else ""}

    # --- stopping ---------------------------------------------------------------------------

    def _on_stop_signal(self) -> None:
        if self.stopping:  # a second signal: every worker stops draining now
            self.hurry.set()
            self._stop_workers(now=True)
            return
        logger.info("shutting down: draining %d workers", len(self.slots))
        self.stopping = True
        self._readiness_changed()
        self._stop_workers(now=False)
        self.stop_requested.set()

    def _stop_workers(self, now: bool) -> None:
        """A message, not a signal, to a worker that serves: the same SIGTERM may also reach it
        straight (systemd signals every process of the unit, a terminal the whole group), and
        two signals would cut its drain short. One still starting gets SIGTERM."""
        for slot in self.slots:
            if slot.reachable:
                assert slot.channel is not None
                self._spawn(slot.channel.send({"op": "stop", "now": now}))
            else:
                self._signal_workers(signal.SIGTERM, [slot])

    def _signal_workers(self, sig: signal.Signals, slots: list[Slot] | None = None) -> None:
        for slot in self.slots if slots is None else slots:
            if slot.process is not None and slot.process.is_alive() and slot.process.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, sig)

    async def _shutdown(self) -> None:
        # Connections go on being handed over during the drain window, where the workers
        # answer 503 with Connection: close, as one process does before it closes its port.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.hurry.wait(), self.settings.shutdown_drain_s)
        if self.listener is not None:
            if self.accepting:
                asyncio.get_running_loop().remove_reader(self.listener.fileno())
                self.accepting = False
            self.listener.close()
            self.listener = None
        limit = self.settings.shutdown_grace_s + KILL_AFTER_S
        try:
            await asyncio.wait_for(self._all_exited(), limit)
        except TimeoutError:
            logger.error("workers still running %.0f s after the drain: killing them", limit)
            self._signal_workers(signal.SIGKILL)
            await self._all_exited()
        logger.info("every worker has stopped")

    async def _all_exited(self) -> None:
        while any(s.process is not None and s.process.exitcode is None for s in self.slots):
            self.exited.clear()
            if any(s.process is not None and s.process.is_alive() for s in self.slots):
                await self.exited.wait()


def listen(settings: Settings) -> socket.socket:
    """The service's port, bound once (OSError when it cannot be)."""
    family = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)[0][0]
    listener = socket.create_server((settings.host, settings.port), family=family, backlog=BACKLOG)
    listener.setblocking(False)
    return listener


def grpc_port_problem(settings: Settings) -> str | None:
    """Why the workers could not serve gRPC on VAE_GRPC_PORT (None: the port is free, or 0).
    Each worker binds it beside the others (SO_REUSEPORT); this checks once that no one else
    holds it."""
    if settings.grpc_port == 0:
        return None
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR: connections of a previous run in TIME_WAIT do not hold the port;
            # on Linux it never lets a bind share a port someone listens on.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((settings.host, settings.grpc_port))
    except OSError as exc:
        return (
            f"{settings.host}:{settings.grpc_port} (VAE_GRPC_PORT): {exc}; set another "
            "VAE_GRPC_PORT, or 0 to turn gRPC off"
        )
    return None


def supervise(settings: Settings, budget: ThreadBudget, registry: ModelRegistry) -> int:
    """Serve with `budget.workers` workers once `registry` (this process's check of every
    model) has loaded; returns the exit code."""
    # The workers load their own sessions; the supervisor serves nothing.
    asyncio.run(registry.close())
    del registry
    gc.collect()
    trim = memory_trimmer()
    if trim is not None:
        trim()
    try:
        listener = listen(settings)
    except OSError as exc:
        print(f"error: cannot start: {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    problem = grpc_port_problem(settings)
    if problem is not None:  # else every worker would fail to bind it, restart after restart
        print(f"error: cannot start: {problem}", file=sys.stderr)
        return 1
    try:  # one folder per run: counts from an earlier run never add up into this one's
        metrics_dir = tempfile.mkdtemp(prefix="vae-metrics-", dir=os.environ.get(MULTIPROCESS_DIR))
    except OSError as exc:
        print(
            f"error: cannot start: no folder for the workers' metrics ({exc}): set "
            f"{MULTIPROCESS_DIR} to a writable folder, or make the temporary folder writable",
            file=sys.stderr,
        )
        return 1
    os.environ[MULTIPROCESS_DIR] = metrics_dir  # the workers inherit it
    logger.info(
        "supervisor (pid %d) on http://%s:%d: %d workers on %d cores, each with %d "
        "intra-op thread(s), %d inference thread(s), %d decode thread(s)",
        os.getpid(),
        settings.host,
        listener.getsockname()[1],
        budget.workers,
        budget.cores,
        budget.intra_op_threads,
        budget.inference_threads,
        budget.decode_threads,
    )
    try:
        return asyncio.run(Supervisor(settings, budget, listener, metrics_dir).run())
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
