"""Every model of the model directory, by name: loading, the default, reloading a new version."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from service.errors import InvalidInput, NotFound
from service.manifest import ModelLoadError
from service.models.runtime import BatchObservers, ModelRuntime, resolve_providers
from service.observability.context import note_model
from service.settings import DEFAULT_MODEL_NAME, Settings

logger = logging.getLogger("service")


class ModelObserver(BatchObservers, Protocol):
    """Told which model versions are loaded, and gives their batches' observers (the metrics)."""

    def model_loaded(self, model: str, version: str, kind: str, providers: Sequence[str]) -> None: ...


@dataclass
class ModelRegistry:
    """Every model in the model directory, by name, and which one is the default."""

    models: dict[str, ModelRuntime]
    default_name: str
    executor: ThreadPoolExecutor
    providers: list[str]
    settings: Settings
    _retiring: set[asyncio.Task[None]] = field(default_factory=set)
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)
    observer: ModelObserver | None = None

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
        """The model a request names (in its body, its query, or neither: the default)."""
        if from_body and from_query and from_body != from_query:
            raise InvalidInput(
                "model", f"the body says {from_body!r} but ?model= says {from_query!r}"
            )
        name = from_body or from_query or self.default_name
        model = self.models.get(name)
        if model is None:
            raise NotFound("model", f"no model named {name!r}; available: {', '.join(self.models)}")
        note_model(name)  # for the request's log line and metrics
        return model

    @classmethod
    def load(cls, settings: Settings) -> ModelRegistry:
        model_dir = settings.model_dir
        if not model_dir.is_dir():
            raise ModelLoadError(f"VAE_MODEL_DIR={model_dir} is not a folder")
        folders = sorted(p.parent for p in model_dir.glob("*/manifest.json"))
        if not folders:
            raise ModelLoadError(
                f"VAE_MODEL_DIR={model_dir} holds no model: each model is a sub-folder with a "
                "manifest.json (python -m training export RUN --out DIR/NAME writes one)"
            )
        providers = resolve_providers(settings.providers)
        # Worker threads for large batches, shared by every graph.
        executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="ort")
        models: dict[str, ModelRuntime] = {}
        for folder in folders:
            runtime = ModelRuntime.load(folder, settings, providers, executor)
            if runtime.name in models:
                raise ModelLoadError(
                    f"model name {runtime.name!r} is used by both {models[runtime.name].folder} "
                    f"and {folder}; names must be unique"
                )
            models[runtime.name] = runtime
            logger.info(
                "loaded model %s (%s, latent %d) from %s on %s",
                runtime.name,
                runtime.manifest.kind,
                runtime.latent_dim,
                folder,
                ", ".join(runtime.providers),
            )
        if settings.default_model is not None:
            if settings.default_model not in models:
                raise ModelLoadError(
                    f"VAE_DEFAULT_MODEL={settings.default_model} is not among the loaded models: "
                    f"{', '.join(models)}"
                )
            default = settings.default_model
        else:
            default = DEFAULT_MODEL_NAME if DEFAULT_MODEL_NAME in models else next(iter(models))
        return cls(models, default, executor, providers, settings)

    async def reload(self, name: str) -> ModelRuntime:
        """Load `name` again from its folder (a new version put there) and swap it in. A new
        version that fails any check raises ModelLoadError and the old one keeps serving."""
        async with self._reloading:  # one at a time: each swap must see the one before it
            return await self._reload(name)

    async def _reload(self, name: str) -> ModelRuntime:
        old = self.models[name]
        loop = asyncio.get_running_loop()
        new = await loop.run_in_executor(
            self.executor,
            ModelRuntime.load,
            old.folder,
            self.settings,
            self.providers,
            self.executor,
        )
        if new.name != name:
            await new.close()
            raise ModelLoadError(
                f"{old.folder}/manifest.json now names the model {new.name!r}, not {name!r}; "
                "a reload cannot rename a model (restart the service instead)"
            )
        self._observe(new)
        self.models[name] = new
        # Requests that picked the old version finish on it; none outlives the request
        # timeout, so it is closed after that.
        retire = loop.create_task(self._close_later(old, self.settings.request_timeout_s))
        self._retiring.add(retire)
        retire.add_done_callback(self._retiring.discard)
        logger.info(
            "reloaded model %s: version %s -> %s", name, old.manifest.version, new.manifest.version
        )
        return new

    @staticmethod
    async def _close_later(runtime: ModelRuntime, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await runtime.close()

    @property
    def ready(self) -> bool:
        return bool(self.models) and all(m.ready for m in self.models.values())

    async def close(self) -> None:
        for retire in list(self._retiring):
            retire.cancel()
        for model in self.models.values():
            await model.close()
        self.executor.shutdown(wait=True)
