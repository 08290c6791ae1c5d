"""Every model of the model directory, by name: loading, the default, reloading a new version,
and reading the whole folder again (rescan).

A reload or a rescan is done in two steps: `prepare_*` loads and checks what changed (nothing
served changes), `commit` swaps it in at once, or `abort` closes it. One process does both in a
row; worker processes (`service.workers`) prepare in every worker and commit only when all of
them could, so that every worker serves the new version or none does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from service.errors import InvalidInput, NotFound
from service.manifest import ModelLoadError, folder_fingerprint, model_folders
from service.models.budget import AnswerBudget
from service.models.runtime import BatchObservers, ModelRuntime, resolve_providers
from service.observability.context import current_request, note_model
from service.settings import DEFAULT_MODEL_NAME, Settings
from service.workers.cores import ThreadBudget

logger = logging.getLogger("service")


class ModelObserver(BatchObservers, Protocol):
    """Told which model versions are loaded, and gives their batches' observers (the metrics)."""

    def model_loaded(
        self, model: str, version: str, kind: str, providers: Sequence[str]
    ) -> None: ...
    def model_unloaded(self, model: str) -> None: ...


def default_model_name(models: dict[str, ModelRuntime], settings: Settings) -> str:
    """VAE_DEFAULT_MODEL when set; else mnist-vae when loaded, else the first model."""
    if settings.default_model is not None:
        return settings.default_model
    return DEFAULT_MODEL_NAME if DEFAULT_MODEL_NAME in models else next(iter(models))


def _name_taken(runtime: ModelRuntime, holder: ModelRuntime) -> str:
    return (
        f"model name {runtime.name!r} is used by both {holder.folder} and {runtime.folder}; "
        "names must be unique"
    )


def _renamed(old: ModelRuntime, new: ModelRuntime) -> str:
    return (
        f"{old.folder}/manifest.json now names the model {new.name!r}, not {old.name!r}; a reload "
        "cannot rename a model: give the renamed one a folder of its own, remove this one, and "
        "reload the model folder (POST /models/reload or SIGHUP)"
    )


def _log_loaded(runtime: ModelRuntime) -> None:
    logger.info(
        "loaded model %s (%s, latent %d) from %s on %s",
        runtime.name,
        runtime.manifest.kind,
        runtime.latent_dim,
        runtime.folder,
        ", ".join(runtime.providers),
    )


def _log_reloaded(old: ModelRuntime, new: ModelRuntime) -> None:
    logger.info(
        "reloaded model %s: version %s -> %s", new.name, old.manifest.version, new.manifest.version
    )


@dataclass(frozen=True)
class Refusal:
    """A folder a rescan did not take: `model` is the name served from it before (None for a
    new folder), `problem` what is wrong (its message names the file)."""

    model: str | None
    folder: Path
    problem: str

    def log_line(self) -> str:
        if self.model is None:
            return f"new model folder {self.folder} refused, not added: {self.problem}"
        return f"reload of {self.model} refused, the previous version keeps serving: {self.problem}"


def _refuse(folder: Path, old: ModelRuntime | None, problem: str) -> Refusal:
    return Refusal(None if old is None else old.name, folder, problem)


@dataclass
class RescanReport:
    """What a rescan of the model folder changed, by model name."""

    added: list[str]
    dropped: list[str]
    reloaded: list[str]
    unchanged: list[str]
    refused: list[Refusal]
    default: str = ""

    @classmethod
    def between(
        cls,
        before: dict[str, ModelRuntime],
        after: dict[str, ModelRuntime],
        refused: list[Refusal],
    ) -> RescanReport:
        kept = after.keys() & before.keys()
        refused_names = {r.model for r in refused}
        return cls(
            added=sorted(after.keys() - before.keys()),
            dropped=sorted(before.keys() - after.keys()),
            reloaded=sorted(n for n in kept if after[n] is not before[n]),
            # A model whose new version was refused is listed there, not here.
            unchanged=sorted(n for n in kept if after[n] is before[n] and n not in refused_names),
            refused=refused,
        )


@dataclass
class StagedSwap:
    """A reload or a rescan loaded and checked but not yet served: the models to serve, the
    default, the versions they retire (by name) and the runtimes it opened (closed by `abort`)."""

    models: dict[str, ModelRuntime]
    default: str
    retired: dict[str, ModelRuntime]
    opened: list[ModelRuntime]
    report: RescanReport | None = None  # a rescan's; None for a reload of one model

    def summary(self) -> dict[str, Any]:
        """What it would serve, comparable across processes: each model's folder fingerprint,
        the default, and the folders refused."""
        refused = [] if self.report is None else self.report.refused
        return {
            "models": {name: runtime.fingerprint for name, runtime in self.models.items()},
            "default": self.default,
            "refused": sorted(str(r.folder) for r in refused),
        }


class ReloadCoordinator(Protocol):
    """Runs a reload or a rescan across every worker process (prepared in all of them, then
    committed in all or aborted in all); this process's registry takes part like the others."""

    async def reload(self, name: str) -> None: ...
    async def rescan(self) -> RescanReport: ...


@dataclass
class ModelRegistry:
    """Every model in the model directory, by name, and which one is the default."""

    models: dict[str, ModelRuntime]
    default_name: str
    executor: ThreadPoolExecutor
    providers: list[str]
    settings: Settings
    _retiring: set[asyncio.Task[None]] = field(default_factory=set)  # closing old versions
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)
    _rescans: set[asyncio.Task[RescanReport | ModelLoadError]] = field(default_factory=set)
    observer: ModelObserver | None = None
    coordinator: ReloadCoordinator | None = None  # set in a worker process
    answers: AnswerBudget = field(init=False)  # memory of answers in progress, across models

    def __post_init__(self) -> None:
        self.answers = AnswerBudget(self.settings.max_answer_bytes)

    def attach(self, observer: ModelObserver) -> None:
        """Report every model's batches, and which versions are loaded, to `observer`."""
        self.observer = observer
        for runtime in self.models.values():
            self._observe(runtime)

    def _observe(self, runtime: ModelRuntime) -> None:
        if self.observer is not None:
            runtime.attach(self.observer)
            manifest = runtime.manifest
            self.observer.model_loaded(
                runtime.name, manifest.version, manifest.kind, runtime.providers
            )

    def pick(self, from_body: str | None, from_query: str | None = None) -> ModelRuntime:
        """The model a request names (in its body, its query, or neither: the default), leased
        to the request (see `lookup`)."""
        if from_body and from_query and from_body != from_query:
            raise InvalidInput(
                "model", f"the body says {from_body!r} but ?model= says {from_query!r}"
            )
        name = from_body or from_query or self.default_name
        model = self.lookup(name)
        if model is None:
            raise NotFound("model", f"no model named {name!r}; available: {', '.join(self.models)}")
        note_model(name)  # for the request's log line and metrics
        return model

    def lookup(self, name: str) -> ModelRuntime | None:
        """The version of `name` served now (None: no such model). Within a request it is
        leased until the request ends: a reload meanwhile leaves it serving that request, and
        it is closed when the last request holding it ends (`_swap`)."""
        info = current_request.get()
        while True:
            model = self.models.get(name)
            if model is None or info is None:
                return model
            if model.acquire():
                info.at_end(lambda: self._release(model))
                return model
            # Retired between the read and the lease: self.models already holds its successor.

    def _release(self, model: ModelRuntime) -> None:
        if model.release():
            self._close_soon(model)

    def _close_soon(self, model: ModelRuntime) -> None:
        task = asyncio.get_running_loop().create_task(model.close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @classmethod
    def load(cls, settings: Settings) -> ModelRegistry:
        folders = model_folders(settings.model_dir)
        if not folders:
            raise ModelLoadError(
                f"VAE_MODEL_DIR={settings.model_dir} holds no model: each model is a sub-folder "
                "with a manifest.json (python -m training export RUN --out DIR/NAME writes one)"
            )
        providers = resolve_providers(settings.providers)
        # Worker threads for large batches, shared by every graph.
        # Sized with the worker count so that workers x threads does not exceed the cores.
        budget = ThreadBudget.of(settings)
        executor = ThreadPoolExecutor(
            max_workers=budget.inference_threads, thread_name_prefix="ort"
        )
        models: dict[str, ModelRuntime] = {}
        for folder in folders:
            runtime = ModelRuntime.load(folder, settings, providers, executor)
            if runtime.name in models:
                raise ModelLoadError(_name_taken(runtime, models[runtime.name]))
            models[runtime.name] = runtime
            _log_loaded(runtime)
        if settings.default_model is not None and settings.default_model not in models:
            raise ModelLoadError(
                f"VAE_DEFAULT_MODEL={settings.default_model} is not among the loaded models: "
                f"{', '.join(models)}"
            )
        return cls(models, default_model_name(models, settings), executor, providers, settings)

    async def reload(self, name: str) -> ModelRuntime:
        """Load `name` again from its folder (a new version put there) and swap it in. A new
        version that fails any check raises ModelLoadError and the old one keeps serving."""
        if self.coordinator is not None:  # every worker, this one included
            await self.coordinator.reload(name)
            return self.models[name]
        async with self._reloading:  # one at a time: each swap must see the one before it
            staged = await self.prepare_reload(name)
            self.commit(staged)
            return staged.models[name]

    @property
    def exclusive(self) -> asyncio.Lock:
        """Held from a `prepare_*` to its `commit` or `abort`: each swap must see the one
        before it."""
        return self._reloading

    async def prepare_reload(self, name: str) -> StagedSwap:
        """`name` loaded again from its folder and checked, not yet served (`commit`)."""
        old = self.models.get(name)
        if old is None:
            raise ModelLoadError(f"no model named {name!r} is loaded here")
        new = await self._load_folder(old.folder)
        if new.name != name:
            await new.close()
            raise ModelLoadError(_renamed(old, new))
        return StagedSwap({**self.models, name: new}, self.default_name, {name: old}, [new])

    def commit(self, staged: StagedSwap) -> None:
        """Serve what `staged` loaded, from now on, in one step; log what changed."""
        self._swap(staged.models, staged.default, staged.retired)
        report = staged.report
        if report is None:
            for name, old in staged.retired.items():
                _log_reloaded(old, staged.models[name])
            return
        for name in report.added:
            _log_loaded(staged.models[name])
        for name in report.reloaded:
            _log_reloaded(staged.retired[name], staged.models[name])
        for name in report.dropped:
            logger.info("dropped model %s: its folder %s is gone", name, staged.retired[name].folder)
        for refusal in report.refused:
            logger.error("%s", refusal.log_line())
        logger.info(
            "model folder read again: %d added, %d dropped, %d reloaded, %d unchanged, %d refused; "
            "default %s",
            len(report.added),
            len(report.dropped),
            len(report.reloaded),
            len(report.unchanged),
            len(report.refused),
            report.default,
        )

    async def abort(self, staged: StagedSwap) -> None:
        """Close what `staged` opened; what is served stays as it was."""
        for runtime in staged.opened:
            await runtime.close()

    async def add(self, folder: Path) -> ModelRuntime:
        """Load the model in `folder` (one not served) and serve it beside the others. A model
        that fails a check, or whose name another folder already serves, raises ModelLoadError
        and nothing changes."""
        async with self._reloading:
            new = await self._load_folder(folder)
            if new.name in self.models:
                await new.close()
                raise ModelLoadError(_name_taken(new, self.models[new.name]))
            models = dict(sorted({**self.models, new.name: new}.items(), key=lambda m: m[1].folder))
            self._swap(models, default_model_name(models, self.settings), {})
            _log_loaded(new)
            return new

    async def remove(self, name: str) -> None:
        """Stop serving `name` (requests already running on it finish). Refused (ModelLoadError)
        for the last model and for VAE_DEFAULT_MODEL's, which the service must always have."""
        async with self._reloading:
            if name not in self.models:
                raise NotFound("model", f"no model named {name!r} is loaded")
            if name == self.settings.default_model:
                raise ModelLoadError(
                    f"{name!r} is VAE_DEFAULT_MODEL and cannot be unloaded: set another "
                    "VAE_DEFAULT_MODEL and restart"
                )
            if len(self.models) == 1:
                raise ModelLoadError(f"{name!r} is the only model loaded; the service needs one")
            old = self.models[name]
            models = {n: m for n, m in self.models.items() if n != name}
            self._swap(models, default_model_name(models, self.settings), {name: old})
            logger.info("unloaded model %s (%s)", name, old.folder)

    def start_rescan(self) -> asyncio.Task[RescanReport | ModelLoadError]:
        """`rescan()` as a task of its own (SIGHUP, POST /models/reload): one that outlasts the
        request that started it (a 504) still finishes, rather than stopping half way. A scan
        refused as a whole is logged and its ModelLoadError returned."""
        task = asyncio.get_running_loop().create_task(self._logged_rescan())
        self._rescans.add(task)
        task.add_done_callback(self._rescans.discard)
        return task

    async def _logged_rescan(self) -> RescanReport | ModelLoadError:
        try:
            return await self.rescan()
        except ModelLoadError as exc:
            logger.error("reload of the model folder refused, nothing was changed: %s", exc)
            return exc

    async def rescan(self) -> RescanReport:
        """Read the model folder again and swap in, at once, the set of models it now holds:
        new folders loaded (checked and warmed up), models whose folder is gone dropped, changed
        folders reloaded, unchanged ones kept as they are. Whatever fails is refused and the rest
        goes ahead: a broken new folder is not added, a broken new version leaves the old one
        serving, and so does a renamed model or a name another folder already serves. The model
        named by VAE_DEFAULT_MODEL is never dropped; without it the default is chosen again as
        at start-up. A scan that would leave no model at all changes nothing (ModelLoadError)."""
        if self.coordinator is not None:  # every worker, this one included
            return await self.coordinator.rescan()
        async with self._reloading:
            staged = await self.prepare_rescan()
            self.commit(staged)
            assert staged.report is not None
            return staged.report

    async def prepare_rescan(self) -> StagedSwap:
        """The model folder read again (see `rescan`), loaded and checked, not yet served."""
        folders = model_folders(self.settings.model_dir)  # ModelLoadError when not a folder
        current = {runtime.folder: runtime for runtime in self.models.values()}
        models: dict[str, ModelRuntime] = {}
        opened: list[ModelRuntime] = []  # loaded by this scan, to close if it is called off
        refused: list[Refusal] = []
        # Folders already served first, so that their names stay theirs; then new folders.
        for folder in sorted(folders, key=lambda f: f not in current):
            old = current.get(folder)
            if old is not None and old.fingerprint == folder_fingerprint(folder):
                models[old.name] = old
                continue
            try:
                new = await self._load_folder(folder)
            except ModelLoadError as exc:
                refused.append(_refuse(folder, old, str(exc)))
                if old is not None:
                    models[old.name] = old
                continue
            problem = None
            if old is not None and new.name != old.name:
                problem = _renamed(old, new)
            elif new.name in models:
                problem = _name_taken(new, models[new.name])
            if problem is not None:
                await new.close()
                refused.append(_refuse(folder, old, problem))
                if old is not None:
                    models[old.name] = old
                continue
            opened.append(new)
            models[new.name] = new
        configured = self.settings.default_model
        if configured is not None and configured not in models and configured in self.models:
            kept = self.models[configured]
            refused.append(
                Refusal(
                    configured,
                    kept.folder,
                    f"the folder of {configured!r} is gone, but it is VAE_DEFAULT_MODEL and "
                    "keeps serving: restore the folder, or set another VAE_DEFAULT_MODEL and "
                    "restart",
                )
            )
            models[configured] = kept
        if not models:
            for new in opened:
                await new.close()
            problems = "".join(f"; {r.folder}: {r.problem}" for r in refused)
            raise ModelLoadError(
                f"VAE_MODEL_DIR={self.settings.model_dir} now holds no model that can be "
                f"served{problems}"
            )
        # In folder order, as at start-up (the default without VAE_DEFAULT_MODEL depends on it).
        models = dict(sorted(models.items(), key=lambda item: item[1].folder))
        report = RescanReport.between(self.models, models, refused)
        retired = {name: old for name, old in self.models.items() if models.get(name) is not old}
        report.default = default_model_name(models, self.settings)
        return StagedSwap(models, report.default, retired, opened, report)

    async def _load_folder(self, folder: Path) -> ModelRuntime:
        """A model loaded from `folder` in a worker thread; any failure is a ModelLoadError."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self.executor,
                ModelRuntime.load,
                folder,
                self.settings,
                self.providers,
                self.executor,
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime's own errors, from the warm-up run, say
            raise ModelLoadError(f"model folder {folder}: cannot be loaded: {exc}") from exc

    def _swap(
        self, models: dict[str, ModelRuntime], default: str, retired: dict[str, ModelRuntime]
    ) -> None:
        """Serve `models` from now on, in one step; `retired` (by name) are closed as soon as
        the last request that picked them is done (at once when none holds them)."""
        for name, runtime in models.items():
            if runtime is not self.models.get(name):
                self._observe(runtime)
        if self.observer is not None:
            for name in retired.keys() - models.keys():
                self.observer.model_unloaded(name)
        self.models = models
        self.default_name = default
        # Requests that picked an old version finish on it: each holds a lease until it ends.
        # (They were kept for the whole request timeout before: 10 s of sessions per reload.)
        for old in retired.values():
            if old.retire():
                self._close_soon(old)

    def summary(self) -> dict[str, Any]:
        """What this registry serves, comparable across processes (as `StagedSwap.summary`)."""
        return {
            "models": {name: runtime.fingerprint for name, runtime in self.models.items()},
            "default": self.default_name,
        }

    @property
    def ready(self) -> bool:
        return bool(self.models) and all(m.ready for m in self.models.values())

    async def close(self) -> None:
        for task in [*self._rescans, *self._retiring]:
            task.cancel()
        for model in self.models.values():
            await model.close()
        self.executor.shutdown(wait=True)
