"""Training configuration: one dataclass, loadable from a TOML or JSON file."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from training.model import (
    Architecture,
    Kind,
    Likelihood,
    ModelConfig,
    conv_size_problem,
    conv_widths,
)

# The IDX datasets are grayscale; their names, kept here so a config can be checked without
# importing the data module.
GRAYSCALE_DATASETS = ("mnist", "fashion-mnist")
IMAGE_CHANNELS = (1, 3)

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
    # conv widths, one stride-2 layer each; None: as many as the image size needs (model.py)
    conv_channels: tuple[int, ...] | None = None
    res_blocks: int = 0  # conv only: residual blocks on the smallest map (model.py)
    # data
    dataset: str = "mnist"  # mnist, fashion-mnist, a folder of images, or a .npy/.npz file
    # (height, width) the images are resized to; None: the data's own size
    image_size: tuple[int, int] | None = None
    channels: int | None = None  # 1 (grayscale) or 3 (RGB); None: the data's own
    data_dir: str | None = None  # default: $VAE_DATA_DIR or ./data
    val_size: int = 5000
    invert: bool = False  # for dark-on-light images of your own
    binarize: bool = False  # dynamic binarisation: resample x ~ Bernoulli(pixels) every batch
    # objective
    likelihood: Likelihood = "bernoulli"
    gaussian_sigma: float = 0.1
    beta: float = 1.0
    # KL weight rises linearly from 0 to beta over this many epochs, so the decoder learns to use
    # z before the KL pulls q(z|x) to the prior (Bowman et al. 2016; Sønderby et al. 2016)
    warmup_epochs: float = 0.0
    # optimisation
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    # cosine: the step size anneals to 0 over the run (Loshchilov & Hutter 2017, without restarts),
    # so the last epochs settle instead of hopping around a minimum
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
        if self.conv_channels is not None and (
            not self.conv_channels or min(self.conv_channels) < 1
        ):
            raise ConfigError(
                f"conv_channels must be one or more positive widths, got {self.conv_channels}"
            )
        if self.res_blocks < 0:
            raise ConfigError(f"res_blocks must be >= 0, got {self.res_blocks}")
        if self.res_blocks and self.architecture != "conv":
            raise ConfigError(
                f"res_blocks={self.res_blocks} needs architecture='conv' (--architecture conv); "
                "the MLP has no feature maps to put them on"
            )
        self._check_image_settings()

    def _check_image_settings(self) -> None:
        if self.channels is not None and self.channels not in IMAGE_CHANNELS:
            raise ConfigError(
                f"channels={self.channels!r}: the images' colour channels are 1 (grayscale) or 3 "
                "(RGB); the widths of the conv layers are conv_channels (--conv-channels)"
            )
        if self.channels == 3 and self.dataset in GRAYSCALE_DATASETS:
            raise ConfigError(
                f"channels=3: {self.dataset} is grayscale; three channels would only hold three "
                "copies of each image. Leave --channels out (or pass 1), or train on colour data: "
                "a folder of colour images or an .npy/.npz of N x H x W x 3"
            )
        if self.image_size is None:
            return
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError(
                f"image_size={list(self.image_size)}: give a height and width >= 1, e.g. 32 or "
                "[64, 48]"
            )
        if self.architecture == "conv":
            height, width = self.image_size
            stages = len(self.conv_channels or conv_widths(height, width))
            problem = conv_size_problem(height, width, stages)
            if problem:
                raise ConfigError(f"image_size={height}x{width}: {problem}")

    def model_config(self, image_shape: tuple[int, int, int] | None = None) -> ModelConfig:
        """The network for images of `image_shape` (channels, height, width), the data's shape
        once loaded (the conv layers' default widths follow from it); without it, the shape this
        config asks for, 1 x 28 x 28 where it leaves it to the data."""
        if image_shape is None:
            image_shape = (self.channels or 1, *(self.image_size or (28, 28)))
        _, height, width = image_shape
        if self.architecture == "conv":
            stages = len(self.conv_channels or conv_widths(height, width))
            problem = conv_size_problem(height, width, stages)
            if problem:
                raise ConfigError(f"the data's images are {height}x{width}: {problem}")
        return ModelConfig(
            kind=self.model,
            architecture=self.architecture,
            latent_dim=self.latent_dim,
            hidden=self.hidden,
            conv_channels=self.conv_channels or conv_widths(height, width),
            res_blocks=self.res_blocks,
            image_shape=image_shape,
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
            if name == "channels" and isinstance(value, list | tuple):
                # Runs and config files from before issue #17: `channels` held the conv widths.
                name = "conv_channels"
            if name == "image_size":
                value = _image_size(value)
            elif name in ("hidden", "conv_channels") and value is not None:
                value = tuple(value)
            cleaned[name] = value
        return cls(**cleaned)


def _image_size(value: Any) -> tuple[int, ...] | None:
    """`image_size` as a config file may write it: 32, [32, 48], "32,48" or "32x48"."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().replace("x", ",").replace(" ", ",").split(",")
        try:
            value = [int(p) for p in parts if p]
        except ValueError:
            raise ConfigError(
                f"image_size={value!r}: give a side (32) or height,width (64,48)"
            ) from None
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return tuple(value) * 2 if len(value) == 1 else tuple(value)
    raise ConfigError(f"image_size={value!r}: give a side (32) or [height, width] ([64, 48])")


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
