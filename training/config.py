"""Training configuration: one dataclass, loadable from a TOML or JSON file."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from training.model import Architecture, Kind, Likelihood, ModelConfig

LrSchedule = Literal["constant", "cosine"]


class ConfigError(ValueError):
    """A configuration value is unknown or out of range; the message names it."""


@dataclass(frozen=True)
class TrainConfig:
    # what to train
    model: Kind = "vae"
    architecture: Architecture = "mlp"
    latent_dim: int = 16
    hidden: tuple[int, ...] = (512,)
    channels: tuple[int, ...] = (32, 64)
    # data
    dataset: str = "mnist"  # mnist, fashion-mnist, a folder of images, or a .npy/.npz file
    data_dir: str | None = None  # default: $VAE_DATA_DIR or ./data
    val_size: int = 5000
    invert: bool = False  # for dark-on-light images of your own
    binarize: bool = False  # dynamic binarisation: resample x ~ Bernoulli(pixels) every batch
    # objective
    likelihood: Likelihood = "bernoulli"
    gaussian_sigma: float = 0.1
    beta: float = 1.0
    warmup_epochs: float = 0.0  # KL weight rises linearly from 0 to beta over this many epochs
    # optimisation
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: LrSchedule = "constant"
    seed: int = 0
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N

    def __post_init__(self) -> None:
        choices = {
            "model": get_args(Kind),
            "architecture": get_args(Architecture),
            "likelihood": get_args(Likelihood),
            "lr_schedule": get_args(LrSchedule),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: choose one of {list(allowed)}")
        positive = ("latent_dim", "epochs", "batch_size", "lr", "gaussian_sigma")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.beta < 0 or self.warmup_epochs < 0 or self.val_size < 1:
            raise ConfigError("beta and warmup_epochs must be >= 0 and val_size >= 1")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"hidden must be one or more positive layer sizes, got {self.hidden}")
        if self.binarize and self.likelihood != "bernoulli":
            raise ConfigError("binarize needs likelihood='bernoulli'")

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            kind=self.model,
            architecture=self.architecture,
            latent_dim=self.latent_dim,
            hidden=self.hidden,
            channels=self.channels,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        cleaned: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
            cleaned[name] = tuple(value) if name in ("hidden", "channels") else value
        return cls(**cleaned)


def load_config_file(path: Path) -> dict[str, Any]:
    """Settings from a .toml or .json file (keys as the TrainConfig fields)."""
    path = Path(path)
    try:
        if path.suffix == ".toml":
            with path.open("rb") as f:
                return tomllib.load(f)
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: expected a JSON object of settings")
            return data
    except (OSError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    raise ConfigError(f"{path}: config files must end in .toml or .json")
