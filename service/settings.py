"""Service settings: every one comes from a `VAE_`-prefixed environment variable or a flag."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_NAME = "mnist-vae"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VAE_", extra="ignore", protected_namespaces=(), use_attribute_docstrings=True
    )

    host: str = "127.0.0.1"
    """Interface to bind; 0.0.0.0 in a container."""
    port: int = Field(8000, ge=1, le=65535)
    """TCP port."""
    model_dir: Path = Path("models")
    """Folder whose sub-folders each hold one exported model (manifest.json + two ONNX files)."""
    default_model: str | None = None
    """Model used when a request names none. Unset: mnist-vae if loaded, else the first by name."""
    providers: Annotated[list[str], NoDecode] = ["auto"]
    """onnxruntime execution providers: `auto` (CUDA when available, else CPU) or an ordered
    comma-separated list such as `CUDAExecutionProvider,CPUExecutionProvider`."""
    intra_op_threads: int = Field(1, ge=0)
    """Threads inside one onnxruntime call (0: one per core). 1 suits the tiny MNIST models."""
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
    access_log: bool = False
    """uvicorn's access log line per request (off: it costs throughput at thousands of req/s)."""
    max_images: int = Field(1024, ge=1)
    """Most images (or latent vectors) one request may carry."""
    max_generate: int = Field(1024, ge=1)
    """Largest `n` for /generate."""
    max_samples: int = Field(64, ge=1)
    """Largest `samples` (reconstructions per input) for sampled /reconstruct."""
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    """Largest image file accepted in a multipart upload."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """Log level of the service and of uvicorn."""

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
