"""Service settings: every one comes from a `VAE_`-prefixed environment variable or a flag."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_NAME = "mnist-vae"
# What VAE_TRACING=otlp imports (the `tracing` extra), looked for without importing it.
TRACING_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http")


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def read_key_file(path: Path) -> list[str]:
    """One key per line; blank lines and `#` comments skipped. [] when unreadable."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class Settings(BaseSettings):
    # Each field's docstring documents it (docs/settings.md's table is checked against them).
    # Not `use_attribute_docstrings`: pydantic would read and parse this file's source at every
    # start, for descriptions nothing at run time reads.
    model_config = SettingsConfigDict(env_prefix="VAE_", extra="ignore", protected_namespaces=())

    host: str = "127.0.0.1"
    """Interface to bind; 0.0.0.0 in a container."""
    port: int = Field(8000, ge=1, le=65535)
    """TCP port."""
    grpc_port: int = Field(8081, ge=0, le=65535)
    """TCP port of the Open Inference Protocol over gRPC (on VAE_HOST, beside the HTTP port,
    served by `python -m service`); 0 turns gRPC off."""
    model_dir: Path = Path("models")
    """Folder whose sub-folders each hold one exported model (manifest.json + two ONNX files)."""
    default_model: str | None = None
    """Model used when a request names none. Unset: mnist-vae if loaded, else the first by name."""
    providers: Annotated[list[str], NoDecode] = ["auto"]
    """onnxruntime execution providers: `auto` (CUDA when available, else CPU) or an ordered
    comma-separated list such as `CUDAExecutionProvider,CPUExecutionProvider`."""
    workers: int | Literal["auto"] = 1
    """Worker processes serving the port (`auto`: one per available core, within the CPU
    affinity and the cgroup's CPU quota). 1: one process, as without workers. With more, a
    supervisor checks every model, then starts them and restarts one that dies; /metrics,
    /readyz, reloads and SIGTERM act on all of them (see the deployment guide)."""
    intra_op_threads: int = Field(1, ge=0)
    """Threads inside one onnxruntime call (0: the process's share of the cores, cores /
    workers). 1 suits the tiny MNIST models; workers x this above the cores is warned about at
    start."""
    inter_op_threads: int = Field(1, ge=0)
    """Threads across independent graph nodes (0: onnxruntime decides)."""
    allow_spinning: bool = False
    """Let idle onnxruntime threads spin: a little throughput under load, a whole core when idle."""
    max_batch_size: int = Field(64, ge=1)
    """Dynamic batching: most rows (images or latent vectors) in one onnxruntime call; requests
    for the same model and graph that queue up together share a call. 1 turns batching off."""
    max_batch_delay_ms: float = Field(0.0, ge=0, le=1000)
    """How long a batch waits for more requests before it runs. 0: it takes what queued while
    the previous call ran, and adds no latency."""
    inline_max_rows: int = Field(16, ge=0)
    """Calls of at most this many rows run on the event loop (tens of microseconds, less than a
    thread hop); larger ones run in a worker thread so the loop stays free."""
    cpu_mem_arena: bool = True
    """onnxruntime's CPU memory arena: reuses buffers between calls instead of allocating."""
    mem_pattern: bool = True
    """onnxruntime's memory pattern planning: pre-plans buffers for repeated input shapes."""
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    """onnxruntime graph optimisation level applied when a session is created."""
    memory_trim_interval_s: float = Field(10.0, ge=0)
    """Every this many seconds, hand freed heap memory back to the OS (glibc malloc_trim):
    large JSON bodies leave freed but resident pages behind. 0 turns it off."""
    access_log: bool = True
    """One log line per request (request id, endpoint, model, status, latency, batch size);
    probes and docs are not logged."""
    max_images: int = Field(1024, ge=1)
    """Most images (or latent vectors) one request may carry."""
    max_request_values: int = Field(1024 * 3 * 32 * 32, ge=784)
    """Most image values (images x height x width x channels) one request may carry or ask
    for: with VAE_MAX_IMAGES, it bounds a request's memory whatever the model's image size. The
    default takes 1,024 images of 32 x 32 x 3 (or of 28 x 28), 16 of 256 x 256 x 3."""
    max_generate: int = Field(1024, ge=1)
    """Largest `n` for /generate."""
    max_samples: int = Field(64, ge=1)
    """Largest `samples` (reconstructions per input) for sampled /reconstruct."""
    max_score_values: int = Field(8 * 1024 * 3 * 32 * 32, ge=784)
    """Most decoded values one /score request may ask for: images x `k` x height x width x
    channels (a VAE decodes `k` importance samples per image). Scoring decodes them a block at a
    time, so this bounds a request's work, not its memory. The default takes 1,024 images of
    32 x 32 x 3 at the default k = 8 (1,024 of 28 x 28 at k = 31)."""
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    """Largest image file accepted in a multipart upload."""
    max_upload_pixel_scans: int = Field(24 * 4096 * 4096, ge=1)
    """Decoding budget of one uploaded image: width x height x scans (a progressive JPEG is
    decoded once per scan; PNG and baseline JPEG count one). A file over it gets 413 before it
    is decoded. The default takes a 4096 x 4096 picture with 24 scans (encoders write at most
    about 10)."""
    decode_threads: int = Field(0, ge=0)
    """Threads that decode uploaded images, per process (0: half the process's share of the
    cores, cores / workers, at least 1). Decodes wait for a free thread; those still waiting
    when their request times out or its client leaves never start."""
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Largest request body; a larger one gets 413 before the rest of it is read."""
    max_concurrent_requests: int = Field(128, ge=1)
    """Requests in flight or queued at once (probes and docs not counted); the next one gets
    503 with Retry-After at once instead of waiting in an unbounded queue."""
    request_timeout_s: float = Field(10.0, gt=0)
    """A request not answered within this many seconds of taking its slot (its body already
    received) gets 504 and frees the slot."""
    max_connections: int = Field(896, ge=1)
    """Open connections at once. At the cap a new connection replaces the one idle the longest
    (never spoke, or between requests); when none is idle it gets a canned 503 and is closed
    (logged, at most once per 10 s). Each takes a file descriptor: at start the soft
    RLIMIT_NOFILE is raised to this plus 128 when lower; the start fails when the hard limit is
    lower still."""
    max_header_bytes: int = Field(16384, ge=1024)
    """Largest request head (request line and headers, in bytes); past it the request gets 431
    and the connection is closed, before the API key check and without reading the rest."""
    max_headers: int = Field(100, ge=10)
    """Most headers one request may carry; one more gets 431 and the connection is closed."""
    head_timeout_s: float = Field(10.0, gt=0)
    """Time from a request's first byte to the end of its headers; past it, 408 and the
    connection is closed."""
    body_timeout_s: float = Field(60.0, gt=0)
    """Time from the end of a request's headers to the end of its body; past it, 408 and the
    connection is closed. The body is received before the request takes a slot, so a slow
    client holds none."""
    idle_timeout_s: float = Field(5.0, gt=0)
    """A connection that sends nothing for this long, after connecting or after its last
    answer, is closed (no answer is owed)."""
    write_timeout_s: float = Field(10.0, gt=0)
    """A connection whose unsent answer makes no progress (the client reads none of it) for
    this long is aborted, and the request it holds freed. A client that reads slowly but
    steadily is never cut off."""
    max_unsent_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024)
    """Answer bytes a connection may leave unread (held in the service's memory); past it the
    connection is aborted, whatever its pipeline holds. Keep it above the largest answer (a
    1,024-image JSON answer is about 8.6 MB)."""
    max_unsent_total_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)
    """Unread answer bytes across all connections; past it the connection stalled the longest
    is aborted first, until the total is under it."""
    max_answer_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    """Memory for answers in progress (results being computed or rendered), across requests.
    A request reserves its answer's estimated size (a 1,024-image JSON answer about 13 MB)
    before inference; one that does not fit waits, holding its slot, within
    VAE_REQUEST_TIMEOUT_S. Answers of at most 1 MiB never wait."""
    max_buffered_body_bytes: int = Field(96 * 1024 * 1024, ge=1024)
    """Request bodies held in memory at once, received or being received (the first 64 KiB of
    each not counted); a body that would pass it gets 503 with Retry-After."""
    retry_after_s: int = Field(1, ge=0)
    """The Retry-After (seconds) sent with 503 when the service is full or shutting down."""
    shutdown_grace_s: int = Field(15, ge=0)
    """On SIGTERM: readiness turns 503 and new requests are refused at once; requests already
    accepted get this many seconds (after VAE_SHUTDOWN_DRAIN_S) to finish, then the process
    exits 0."""
    shutdown_drain_s: float = Field(1.0, ge=0, le=60)
    """On SIGTERM, how long the service goes on answering new requests with 503 and
    `Connection: close` before it closes idle connections: clients on keep-alive connections get
    an answer rather than a reset. A second SIGTERM ends the window at once."""
    allow_reload: bool = True
    """Whether `POST /models/{name}/reload` and `POST /models/reload` may be used; false: they
    answer 403 (SIGHUP still reloads: only the operator can send it)."""
    reload_min_interval_s: float = Field(5.0, ge=0)
    """Least time between two reloads of the same model (or two of the whole folder) through
    the API; one sooner, or one while the last is under way, gets 429 with Retry-After."""
    api_keys: Annotated[list[SecretStr], NoDecode] = []
    """Comma-separated API keys. When set (here or in VAE_API_KEYS_FILE), every inference and
    model endpoint needs `Authorization: Bearer <key>` or `X-API-Key: <key>`; probes and docs
    stay open. Never logged."""
    api_keys_file: Path | None = None
    """A file with one API key per line (blank lines and `#` comments skipped), such as a
    mounted Kubernetes or Docker secret; adds to VAE_API_KEYS."""
    cors_origins: Annotated[list[str], NoDecode] = []
    """Comma-separated origins allowed to call the API from a browser (CORS), e.g.
    `https://app.example.com`; `*` for any. Empty: CORS off."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """Log level of the service and of uvicorn."""
    log_format: Literal["text", "json"] = "text"
    """`text` for people, `json` (one object per line) for log collectors."""
    tracing: Literal["off", "otlp"] = "off"
    """`otlp`: an OpenTelemetry span for every request and for the onnxruntime call it shared,
    the caller's `traceparent` honoured, sent as OTLP over HTTP where the standard `OTEL_*`
    variables say (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, ...); needs the
    `tracing` extra. `off`: no OpenTelemetry SDK is loaded."""

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> object:
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit() or int(text) < 1:
            raise ValueError("a number of worker processes (1 or more), or `auto`")
        return int(text)

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("tracing")
    @classmethod
    def _tracing_installed(cls, value: str) -> str:
        if value == "otlp":
            missing = [name for name in TRACING_MODULES if not module_exists(name)]
            if missing:
                raise ValueError(
                    "`otlp` needs the OpenTelemetry SDK and its OTLP exporter "
                    f"({', '.join(missing)} not found): install the `tracing` extra, "
                    "`pip install 'vae-serving[tracing]'`, or set VAE_TRACING=off"
                )
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _readable_keys(cls, value: Path | None) -> Path | None:
        if value is not None and not read_key_file(value):
            raise ValueError(f"{value} is not a readable file holding at least one key")
        return value

    @model_validator(mode="after")
    def _timeout_within_grace(self) -> Settings:
        if self.request_timeout_s > self.shutdown_grace_s > 0:
            raise ValueError(
                f"VAE_REQUEST_TIMEOUT_S ({self.request_timeout_s}) is longer than "
                f"VAE_SHUTDOWN_GRACE_S ({self.shutdown_grace_s}): requests accepted before a "
                "shutdown could be cut off; raise the grace or lower the timeout"
            )
        return self

    @model_validator(mode="after")
    def _two_ports(self) -> Settings:
        if self.grpc_port == self.port:
            raise ValueError(
                f"VAE_GRPC_PORT ({self.grpc_port}) is VAE_PORT too: give gRPC a port of its own, "
                "or 0 to turn it off"
            )
        return self

    @model_validator(mode="after")
    def _room_for_one_body(self) -> Settings:
        if self.max_buffered_body_bytes < self.max_body_bytes:
            raise ValueError(
                f"VAE_MAX_BUFFERED_BODY_BYTES ({self.max_buffered_body_bytes}) is smaller than "
                f"VAE_MAX_BODY_BYTES ({self.max_body_bytes}): a body of the largest size could "
                "never be received; raise the first or lower the second"
            )
        return self

    def api_key_list(self) -> list[str]:
        """Every accepted API key, from VAE_API_KEYS and VAE_API_KEYS_FILE."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            keys += read_key_file(self.api_keys_file)
        return keys

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        if isinstance(value, list) and not value:
            raise ValueError("name at least one provider, or `auto`")
        return value

    @field_validator("providers")
    @classmethod
    def _auto_alone(cls, value: list[str]) -> list[str]:
        if "auto" in value and len(value) > 1:
            raise ValueError("`auto` cannot be combined with explicit providers")
        return value
