"""onnxruntime sessions for the exported models: loading, checking, warming up and running them."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
import orjson
from numpy.typing import NDArray

from service.manifest import (
    GraphSpec,
    LatentMap,
    Manifest,
    ModelLoadError,
    folder_fingerprint,
    load_latent_map,
    load_manifest,
)
from service.models.adapter import GraphAdapter, graph_shape, signature_problems
from service.models.batching import DynamicBatcher, Observer
from service.settings import Settings
from service.workers.cores import ThreadBudget

logger = logging.getLogger("service")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
Array = NDArray[np.float32]


class BatchObservers(Protocol):
    """Gives each graph of each model the observer of its batches (the metrics)."""

    def batch_observer(self, model: str, graph: str) -> Observer: ...


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


def limit_malloc_arenas(arenas: int = 2, mmap_threshold: int = 4 * 1024 * 1024) -> bool:
    """glibc gives every thread that allocates its own heap arena, and keeps their freed pages
    resident; the worker threads that parse large bodies and run large batches would each keep
    one. Two arenas for the whole process is plenty for an event loop and a few workers.

    Blocks of `mmap_threshold` bytes or more (large request bodies, their parsed tensors, large
    rendered answers) are mapped on their own and unmapped when freed. glibc would otherwise
    raise that threshold to the largest block freed so far, and 16 MB bodies would then be
    carved from the heap and stay resident after they are freed, until the next trim. (4 MiB:
    at 1 MiB, the page faults of mapping every 256-image body cost 256-image /encode ~6%.)"""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        arenas_set = libc.mallopt(-8, arenas)  # M_ARENA_MAX
        mapped = libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD
        # A fixed threshold also fixes the heap's trim threshold (128 KiB), and the heap would be
        # shrunk and grown again on every large request; the periodic malloc_trim does that job.
        kept = libc.mallopt(-1, 64 * 1024 * 1024)  # M_TRIM_THRESHOLD
        return bool(arenas_set and mapped and kept)
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
    # VAE_INTRA_OP_THREADS, or this process's share of the cores when 0 (onnxruntime's own 0
    # would take every core of the machine in every worker)
    options.intra_op_num_threads = ThreadBudget.of(settings).intra_op_threads
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
    adapter: GraphAdapter = field(init=False)
    _encoder: ort.InferenceSession | None = None
    _decoder: ort.InferenceSession | None = None
    _encode_batcher: DynamicBatcher | None = None
    _decode_batcher: DynamicBatcher | None = None
    # Requests using this version now (`acquire`/`release`, maybe from a parsing thread), and
    # whether a newer one has replaced it: a retired version is closed when its last one ends.
    _leases: int = 0
    _retired: bool = False
    _lease_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.adapter = GraphAdapter(self.manifest)

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
    def image_hwc(self) -> tuple[int, int, int]:
        """One image as the service holds it: (height, width, channels)."""
        channels, height, width = self.manifest.input.shape
        return height, width, channels

    @property
    def public_image_shape(self) -> tuple[int, ...]:
        """One image as clients send and get it: (H, W) grayscale, (H, W, C) colour."""
        height, width, channels = self.image_hwc
        return (height, width) if channels == 1 else (height, width, channels)

    @property
    def image_values(self) -> int:
        """Values in one image: channels x height x width."""
        channels, height, width = self.manifest.input.shape
        return channels * height * width

    @classmethod
    def load(
        cls,
        folder: Path,
        settings: Settings,
        providers: list[str],
        executor: ThreadPoolExecutor,
    ) -> ModelRuntime:
        """Check the manifest and files, open both sessions on `providers` and warm them up."""
        fingerprint = folder_fingerprint(folder)  # before reading: a change meanwhile shows next
        runtime = cls(folder, load_manifest(folder), fingerprint=fingerprint)
        latent_map = load_latent_map(folder, runtime.manifest)
        if latent_map is not None:
            runtime.latent_map_body = runtime._latent_map_body(latent_map)
        options = session_options(settings)
        runtime._encoder = runtime._open(runtime.manifest.encoder, options, providers)
        runtime._decoder = runtime._open(runtime.manifest.decoder, options, providers)
        runtime.providers = runtime._encoder.get_providers()
        runtime._check_signatures()
        runtime._warm_up()
        batching = (
            settings.max_batch_size,
            settings.max_batch_delay_ms / 1000,
            settings.inline_max_rows,
        )
        name = runtime.name
        runtime._encode_batcher = DynamicBatcher(
            runtime._encode_rows, *batching, executor, model=name, graph="encoder"
        )
        runtime._decode_batcher = DynamicBatcher(
            runtime._decode_rows, *batching, executor, model=name, graph="decoder"
        )
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
        return session

    def _check_signatures(self) -> None:
        """The structural contract (`signature_problems`): every tensor the service feeds or
        reads has the rank, sizes and dtype the manifest says; then the manifest's own lists
        of tensors against the graphs'. One message per model, naming the file at fault."""
        assert self._encoder is not None and self._decoder is not None
        graphs = {"encoder": self._encoder, "decoder": self._decoder}
        problems = [
            (graph, f"takes {len(inputs)} inputs {[t.name for t in inputs]}; the service feeds "
             "one (the images, or the latent vectors): export the graph with one input")
            for graph, session in graphs.items()
            if len(inputs := session.get_inputs()) != 1
        ]
        if not problems:
            problems = signature_problems(
                self.manifest,
                [*self._encoder.get_inputs(), *self._encoder.get_outputs()],
                [*self._decoder.get_inputs(), *self._decoder.get_outputs()],
            )
        if not problems:
            problems = [
                problem
                for graph, session in graphs.items()
                if (problem := self._declared_problem(graph, session)) is not None
            ]
        if problems:
            raise self._load_error(problems)

    def _declared_problem(
        self, graph: str, session: ort.InferenceSession
    ) -> tuple[str, str] | None:
        """The manifest's list of a graph's inputs and outputs against the graph's own."""
        spec: GraphSpec = getattr(self.manifest, graph)
        for kind, actual, declared in (
            ("input", session.get_inputs(), spec.inputs),
            ("output", session.get_outputs(), spec.outputs),
        ):
            actual_names = [t.name for t in actual]
            declared_names = [t.name for t in declared]
            if actual_names != declared_names:
                return graph, (
                    f"the graph's {kind}s are {actual_names}, the manifest lists "
                    f"{declared_names}: list them as the graph has them"
                )
            for tensor, spec_tensor in zip(actual, declared, strict=True):
                fixed_actual = [d if isinstance(d, int) else None for d in tensor.shape]
                fixed_declared = [d if isinstance(d, int) else None for d in spec_tensor.shape]
                if fixed_actual != fixed_declared:
                    return graph, (
                        f"{kind} {tensor.name!r} is {list(tensor.shape)}, the manifest says "
                        f"{spec_tensor.shape}: write the graph's shape in the manifest"
                    )
        return None

    def _load_error(self, problems: list[tuple[str, str]]) -> ModelLoadError:
        """The model's problems, each after the file it is in."""
        where = {"encoder": self.manifest.encoder.file, "decoder": self.manifest.decoder.file}
        text = "; ".join(f"{self.folder / where[graph]}: {problem}" for graph, problem in problems)
        return ModelLoadError(f"model {self.name!r} cannot be served: {text}")

    def _warm_up(self) -> None:
        """Run both graphs as requests will, on black and grey images, before the model is
        ready (the first run of a session also allocates its arena and picks kernels): a graph
        that fails, answers in another shape, or gives NaN or infinity is refused here, not on
        its first request."""
        h, w, c = self.image_hwc
        for batch, grey in ((1, 0.0), (2, 0.5), (8, 0.0)):
            images = np.full((batch, h, w, c), grey, dtype=np.float32)
            what = f"a batch of {batch} {'grey' if grey else 'black'} images"
            mu, logvar = self._checked_encode(images, what)
            self._checked_decode(mu, what)

    def _run_checked(
        self, graph: str, outputs: list[str], feed: Array, what: str
    ) -> list[Array]:
        session = self._encoder if graph == "encoder" else self._decoder
        assert session is not None
        spec: GraphSpec = getattr(self.manifest, graph)
        try:
            return list(session.run(outputs, {spec.inputs[0].name: feed}))
        except Exception as exc:  # onnxruntime's own exception types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise self._load_error(
                [
                    (
                        graph,
                        f"fails when run on {what} (input {list(feed.shape)}): {first_line}; "
                        "the graph must run on any batch size: export it with a dynamic batch "
                        "axis and check it with onnxruntime",
                    )
                ]
            ) from exc

    def _check_values(self, graph: str, name: str, value: Array, want: list[int], what: str) -> None:
        if list(value.shape) != want:
            raise self._load_error(
                [
                    (
                        graph,
                        f"{name!r} is {list(value.shape)} when run on {what}; the manifest says "
                        f"{want}: set the manifest's shapes and layout to what the graph gives",
                    )
                ]
            )
        if not np.isfinite(value).all():
            raise self._load_error(
                [(graph, f"{name!r} holds NaN or infinity when run on {what}")]
            )

    def _checked_encode(self, images: Array, what: str) -> tuple[Array, Array | None]:
        n = len(images)
        names = self._encoder_outputs()
        raw = self._run_checked("encoder", names, self.adapter.encoder_input(images), what)
        for name, value in zip(names, raw, strict=True):
            self._check_values("encoder", name, value, [n, self.latent_dim], what)
        logvar = self.adapter.logvar(raw[1]) if len(raw) > 1 else None
        if logvar is not None and not np.isfinite(logvar).all():
            raise self._load_error(
                [
                    (
                        "encoder",
                        f"{names[1]!r} gives a log-variance of NaN or infinity when run on "
                        f"{what} (latent.variance is {self.manifest.latent.variance!r}: is that "
                        "what the output holds?)",
                    )
                ]
            )
        return raw[0], logvar

    def _checked_decode(self, z: Array, what: str) -> None:
        out = self.manifest.output
        name = self.manifest.image_output
        [decoded] = self._run_checked("decoder", [name], z, what)
        want = [len(z), *graph_shape(out.layout, out.flat_order, self.manifest.input.shape)]
        self._check_values("decoder", name, decoded, want, what)

    def _encoder_outputs(self) -> list[str]:
        """The encoder outputs the service reads: the code (mean), then a VAE's variance."""
        latent = self.manifest.latent
        return [latent.code_output, *([latent.logvar_output] if latent.logvar_output else [])]

    def _encode_rows(self, images: Array) -> tuple[Array, ...]:
        """(N, H, W, C) in [0, 1] -> (code,) for an AE, (mu, logvar) for a VAE; converted from
        and to the graph's tensors here, in the batcher's call (a worker thread when large)."""
        assert self._encoder is not None
        feed = {self.manifest.encoder.inputs[0].name: self.adapter.encoder_input(images)}
        outputs = self._encoder.run(self._encoder_outputs(), feed)
        if len(outputs) > 1:
            return outputs[0], self.adapter.logvar(outputs[1])
        return (outputs[0],)

    def _decode_rows(self, z: Array) -> tuple[Array, ...]:
        """(N, latent) -> ((N, H, W, C) in [0, 1],): only the decoder's image output is run."""
        assert self._decoder is not None
        feed = {self.manifest.decoder.inputs[0].name: z}
        [decoded] = self._decoder.run([self.manifest.image_output], feed)
        # Contiguous: the answer's renderers (orjson, np.save) want it so.
        return (np.ascontiguousarray(self.adapter.images(decoded)),)

    def encode(self, images: Array) -> tuple[Array, Array | None]:
        """(N, H, W, C) in [0, 1] -> (mu, logvar); an AE's code comes back as mu, logvar None.
        Runs here and now; the service's requests go through `encode_batched`."""
        outputs = self._encode_rows(images)
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    def decode(self, z: Array) -> Array:
        """(N, latent) -> (N, H, W, C) pixel means in [0, 1]."""
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
            "image_shape": list(self.public_image_shape),
            "default": default,
            "ready": self.ready,
            "providers": self.providers,
            "latent_map": self.latent_map_body is not None,
            "manifest": self.manifest.model_dump(mode="json"),
        }

    def acquire(self) -> bool:
        """One more request uses this version; False (nothing taken) once it is retired: the
        request takes the version that replaced it."""
        with self._lease_lock:
            if self._retired:
                return False
            self._leases += 1
            return True

    def release(self) -> bool:
        """A request is done with this version; True when it was the last on a retired one,
        which the caller then closes."""
        with self._lease_lock:
            self._leases -= 1
            return self._retired and self._leases == 0

    def retire(self) -> bool:
        """No new request takes this version; True when none holds it, so it can be closed at
        once (else the last `release` says so)."""
        with self._lease_lock:
            self._retired = True
            return self._leases == 0

    @property
    def leases(self) -> int:
        return self._leases

    def attach(self, observers: BatchObservers) -> None:
        """Report this model's batches to the observers `observers` gives."""
        for graph, batcher in (
            ("encoder", self._encode_batcher),
            ("decoder", self._decode_batcher),
        ):
            if batcher is not None:
                batcher.observer = observers.batch_observer(self.name, graph)

    async def close(self) -> None:
        self.ready = False
        for batcher in (self._encode_batcher, self._decode_batcher):
            if batcher is not None:
                await batcher.close()
        self._encoder = self._decoder = None
