"""onnxruntime sessions for the exported models: loading, checking, warming up and running them."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
from numpy.typing import NDArray

from service.batching import DynamicBatcher
from service.manifest import (
    GraphSpec,
    LatentMap,
    Manifest,
    ModelLoadError,
    folder_fingerprint,
    load_latent_map,
    load_manifest,
    model_folders,
)
from service.metrics import Metrics
from service.settings import DEFAULT_MODEL_NAME, Settings

logger = logging.getLogger("service")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
Array = NDArray[np.float32]


def resolve_providers(requested: list[str], available: list[str] | None = None) -> list[str]:
    """`auto` -> CUDA then CPU when onnxruntime offers CUDA, else CPU. An explicit list must be
    fully available: asking for a provider and silently running on another is worse than failing."""
    available = ort.get_available_providers() if available is None else available
    if requested == ["auto"]:
        return [CUDA, CPU] if CUDA in available else [CPU]
    missing = [p for p in requested if p not in available]
    if missing:
        raise ModelLoadError(
            f"VAE_PROVIDERS asks for {', '.join(missing)}, but this onnxruntime offers only "
            f"{', '.join(available)}. Install the matching onnxruntime build (onnxruntime-gpu for "
            "CUDA) or set VAE_PROVIDERS=auto."
        )
    return requested


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """glibc gives every thread that allocates its own heap arena, and keeps their freed pages
    resident; the worker threads that parse large bodies and run large batches would each keep
    one. Two arenas for the whole process is plenty for an event loop and a few workers."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, arenas))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def memory_trimmer() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), where there is one (Linux with glibc; not musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[settings.graph_optimization]
    options.enable_cpu_mem_arena = settings.cpu_mem_arena
    options.enable_mem_pattern = settings.mem_pattern
    spinning = "1" if settings.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    return options


@dataclass
class ModelRuntime:
    """One exported model: its manifest, its encoder and decoder sessions and, for a 2-D model
    exported with its dataset, its latent map."""

    folder: Path
    manifest: Manifest
    providers: list[str] = field(default_factory=list)
    ready: bool = False
    # What the folder held when it was loaded (manifest.folder_fingerprint): a rescan of the
    # model folder reloads only models whose folder changed since.
    fingerprint: str = ""
    # GET /models/{name}/latent-map's answer, serialised once; the parsed map (10,000 points as
    # Python lists) is not kept.
    latent_map_body: bytes | None = None
    _encoder: ort.InferenceSession | None = None
    _decoder: ort.InferenceSession | None = None
    _encode_batcher: DynamicBatcher | None = None
    _decode_batcher: DynamicBatcher | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def is_vae(self) -> bool:
        return self.manifest.kind == "vae"

    @property
    def latent_dim(self) -> int:
        return self.manifest.latent_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.manifest.image_shape

    @classmethod
    def load(
        cls,
        folder: Path,
        settings: Settings,
        providers: list[str],
        executor: ThreadPoolExecutor,
    ) -> ModelRuntime:
        """Check the manifest and files, open both sessions on `providers` and warm them up."""
        # Taken before the files are read: a change made meanwhile is seen by the next rescan.
        fingerprint = folder_fingerprint(folder)
        runtime = cls(folder, load_manifest(folder), fingerprint=fingerprint)
        latent_map = load_latent_map(folder, runtime.manifest)
        if latent_map is not None:
            runtime.latent_map_body = runtime._latent_map_body(latent_map)
        options = session_options(settings)
        runtime._encoder = runtime._open(runtime.manifest.encoder, options, providers)
        runtime._decoder = runtime._open(runtime.manifest.decoder, options, providers)
        runtime.providers = runtime._encoder.get_providers()
        runtime._warm_up()
        batching = (
            settings.max_batch_size,
            settings.max_batch_delay_ms / 1000,
            settings.inline_max_rows,
        )
        runtime._encode_batcher = DynamicBatcher(runtime._encode_rows, *batching, executor)
        runtime._decode_batcher = DynamicBatcher(runtime._decode_rows, *batching, executor)
        runtime.ready = True
        return runtime

    def _latent_map_body(self, latent_map: LatentMap) -> bytes:
        return orjson.dumps(
            {
                "model": self.name,
                "version": self.manifest.version,
                "split": latent_map.split,
                "dataset": latent_map.dataset,
                "label_names": latent_map.label_names,
                "points": latent_map.points,
                "mu": latent_map.mu,
                "labels": latent_map.labels,
            }
        )

    def _open(
        self, spec: GraphSpec, options: ort.SessionOptions, providers: list[str]
    ) -> ort.InferenceSession:
        path = self.folder / spec.file
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelLoadError(
                f"model {self.name!r}: {path} is not a loadable ONNX graph: {exc}"
            ) from exc
        # onnxruntime drops a provider that fails to initialise (a CUDA library missing, say)
        # with only a warning; an explicitly requested provider must really be in use.
        in_use = session.get_providers()
        if providers[0] not in in_use:
            raise ModelLoadError(
                f"model {self.name!r}: {path}: provider {providers[0]} was requested but could not "
                f"be initialised (in use: {', '.join(in_use)})"
            )
        self._check_signature(session, spec, path)
        return session

    def _check_signature(self, session: ort.InferenceSession, spec: GraphSpec, path: Path) -> None:
        for kind, actual, declared in (
            ("input", session.get_inputs(), spec.inputs),
            ("output", session.get_outputs(), spec.outputs),
        ):
            actual_names = [t.name for t in actual]
            declared_names = [t.name for t in declared]
            if actual_names != declared_names:
                raise ModelLoadError(
                    f"model {self.name!r}: {path}: graph {kind}s {actual_names} differ from the "
                    f"manifest's {declared_names}"
                )
            for tensor, spec_tensor in zip(actual, declared, strict=True):
                fixed_actual = [d if isinstance(d, int) else None for d in tensor.shape]
                fixed_declared = [d if isinstance(d, int) else None for d in spec_tensor.shape]
                if fixed_actual != fixed_declared or tensor.type != "tensor(float)":
                    raise ModelLoadError(
                        f"model {self.name!r}: {path}: {kind} {tensor.name!r} is {tensor.type} "
                        f"{tensor.shape}, the manifest says float32 {spec_tensor.shape}"
                    )

    def _warm_up(self) -> None:
        # The first run of a session allocates its arena and picks kernels: pay that before ready.
        for batch in (1, 8):
            mu, _ = self.encode(np.zeros((batch, *self.image_shape), dtype=np.float32))
            self.decode(mu)

    def _encode_rows(self, images: Array) -> tuple[Array, ...]:
        """(N, C, H, W) -> (code,) for an AE, (mu, logvar) for a VAE."""
        assert self._encoder is not None
        wanted = [self.manifest.latent.code_output]
        if self.manifest.latent.logvar_output:
            wanted.append(self.manifest.latent.logvar_output)
        return tuple(self._encoder.run(wanted, {self.manifest.encoder.inputs[0].name: images}))

    def _decode_rows(self, z: Array) -> tuple[Array, ...]:
        assert self._decoder is not None
        return tuple(self._decoder.run(None, {self.manifest.decoder.inputs[0].name: z}))

    def encode(self, images: Array) -> tuple[Array, Array | None]:
        """(N, C, H, W) in [0, 1] -> (mu, logvar); an AE's code comes back as mu, logvar None.
        Runs here and now; the service's requests go through `encode_batched`."""
        outputs = self._encode_rows(images)
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    def decode(self, z: Array) -> Array:
        """(N, latent) -> (N, C, H, W) pixel means in [0, 1]."""
        return self._decode_rows(z)[0]

    async def encode_batched(self, images: Array) -> tuple[Array, Array | None]:
        """As `encode`, sharing an onnxruntime call with concurrent requests."""
        assert self._encode_batcher is not None
        outputs = await self._encode_batcher.run(images)
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    async def decode_batched(self, z: Array) -> Array:
        assert self._decode_batcher is not None
        return (await self._decode_batcher.run(z))[0]

    def describe(self, default: bool) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.manifest.version,
            "kind": self.manifest.kind,
            "latent_dim": self.latent_dim,
            "image_shape": list(self.image_shape),
            "default": default,
            "ready": self.ready,
            "providers": self.providers,
            "latent_map": self.latent_map_body is not None,
            "manifest": self.manifest.model_dump(mode="json"),
        }

    def attach(self, metrics: Metrics) -> None:
        """Record this model's batches in `metrics`."""
        for graph, batcher in (
            ("encoder", self._encode_batcher),
            ("decoder", self._decode_batcher),
        ):
            if batcher is not None:
                batcher.observer = metrics.batch_observer(self.name, graph)

    async def close(self) -> None:
        self.ready = False
        for batcher in (self._encode_batcher, self._decode_batcher):
            if batcher is not None:
                await batcher.close()
        self._encoder = self._decoder = None


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
class ModelRegistry:
    """Every model in the model directory, by name, and which one is the default."""

    models: dict[str, ModelRuntime]
    default_name: str
    executor: ThreadPoolExecutor
    providers: list[str]
    settings: Settings
    _retiring: set[asyncio.Task[None]] = field(default_factory=set)
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)
    metrics: Metrics | None = None

    def attach(self, metrics: Metrics) -> None:
        """Record every model's batches, and which versions are loaded, in `metrics`."""
        self.metrics = metrics
        for runtime in self.models.values():
            runtime.attach(metrics)
            metrics.describe_model(runtime)

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
        executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="ort")
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
        async with self._reloading:  # one at a time: each swap must see the one before it
            return await self._reload(name)

    async def _reload(self, name: str) -> ModelRuntime:
        old = self.models[name]
        new = await self._load_folder(old.folder)
        if new.name != name:
            await new.close()
            raise ModelLoadError(_renamed(old, new))
        self._swap({**self.models, name: new}, self.default_name, {name: old})
        _log_reloaded(old, new)
        return new

    async def rescan(self) -> RescanReport:
        """Read the model folder again and swap in, at once, the set of models it now holds:
        new folders loaded (checked and warmed up), models whose folder is gone dropped, changed
        folders reloaded, unchanged ones kept as they are. Whatever fails is refused and the rest
        goes ahead: a broken new folder is not added, a broken new version leaves the old one
        serving, and so does a renamed model or a name another folder already serves. The model
        named by VAE_DEFAULT_MODEL is never dropped; without it the default is chosen again as
        at start-up. A scan that would leave no model at all changes nothing (ModelLoadError)."""
        async with self._reloading:
            return await self._rescan()

    async def _rescan(self) -> RescanReport:
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
        self._swap(models, default_model_name(models, self.settings), retired)
        report.default = self.default_name
        for name in report.added:
            _log_loaded(models[name])
        for name in report.reloaded:
            _log_reloaded(retired[name], models[name])
        for name in report.dropped:
            logger.info("dropped model %s: its folder %s is gone", name, retired[name].folder)
        for refusal in refused:
            logger.error("%s", refusal.log_line())
        logger.info(
            "model folder read again: %d added, %d dropped, %d reloaded, %d unchanged, %d refused; "
            "default %s",
            len(report.added),
            len(report.dropped),
            len(report.reloaded),
            len(report.unchanged),
            len(refused),
            report.default,
        )
        return report

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
        """Serve `models` from now on, in one step; `retired` (by name) are closed once the
        requests that picked them are done."""
        if self.metrics is not None:
            for name, runtime in models.items():
                previous = self.models.get(name)
                if runtime is not previous:
                    runtime.attach(self.metrics)
                    self.metrics.describe_model(runtime, previous=previous)
            for name, old in retired.items():
                if name not in models:
                    self.metrics.forget_model(old)
        self.models = models
        self.default_name = default
        # Requests that picked an old version finish on it; none outlives the request timeout,
        # so it is closed after that.
        loop = asyncio.get_running_loop()
        for old in retired.values():
            retire = loop.create_task(self._close_later(old, self.settings.request_timeout_s))
            self._retiring.add(retire)
            retire.add_done_callback(self._retiring.discard)

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
