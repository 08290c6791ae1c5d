"""The manifest that `training export` writes beside the ONNX files, as the service reads it.

The service never imports `training`: this schema is the contract between the two.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictInt,
    ValidationError,
    model_validator,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ModelLoadError(RuntimeError):
    """A model cannot be served; the message names the model, the file and the problem."""


class TensorSpec(BaseModel):
    name: str
    dtype: Literal["float32"]
    shape: list[int | str]  # a string names a dynamic axis (the batch)


# How a graph's tensor holds a batch of images: channels first (PyTorch), channels last (Keras,
# TensorFlow) or one flat row of C*H*W values per image, in the order of `flat_order`.
Layout = Literal["NCHW", "NHWC", "flat"]
# The order of a flat row's values: channels first ("CHW": a flattened NCHW tensor, as
# `x.view(N, -1)` in PyTorch gives) or last ("HWC": a flattened NHWC tensor, as Keras' Flatten
# and the image libraries give). The same for grayscale images.
FlatOrder = Literal["CHW", "HWC"]


class GraphSpec(BaseModel):
    file: str = Field(pattern=r"^[A-Za-z0-9._-]+\.onnx$")  # a plain file name: no path tricks
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs: list[TensorSpec] = Field(min_length=1, max_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    output_range: tuple[float, float] | None = None  # the decoder's pixel range


RESAMPLE_METHODS = ("nearest", "bilinear", "bicubic", "lanczos")

# The background of the model's input images as its encoder sees them (after preprocessing):
# what `invert=auto` turns an image's background into.
Background = Literal["dark", "light"]


class InputSpec(BaseModel):
    shape: tuple[int, int, int] = Field(
        description="The model's images as (channels, height, width), whatever the graph's "
        "layout: channels 1 (grayscale) or 3 (RGB)."
    )
    dtype: Literal["float32"]
    pixel_range: tuple[float, float] = Field(
        description="The values the encoder takes for black and white: [0, 1], [0, 255], "
        "[-1, 1]... Clients always send [0, 1] (or 8-bit); the service maps them linearly."
    )
    preprocessing: dict[str, Any]
    layout: Layout = Field(
        "NCHW",
        description="How the encoder's input tensor holds the images: `NCHW`, `NHWC` or `flat` "
        "(N x C*H*W, in `flat_order`).",
    )
    flat_order: FlatOrder = Field(
        "HWC", description="For a `flat` layout, the order of each row's values: `HWC` or `CHW`."
    )
    background: Background = Field(
        "dark",
        description="The background of the images the encoder was trained on, after "
        "preprocessing: `dark` (bright strokes on black, the MNIST convention; the default) or "
        "`light`. `invert=auto` inverts an image whose border says otherwise.",
    )

    @model_validator(mode="after")
    def _known_preprocessing(self) -> InputSpec:
        channels, height, width = self.shape
        if channels not in (1, 3) or height < 1 or width < 1:
            raise ValueError(
                f"shape {list(self.shape)} is not (channels, height, width) with channels 1 "
                "(grayscale) or 3 (RGB)"
            )
        low, high = self.pixel_range
        if not low < high:
            raise ValueError(f"pixel_range {list(self.pixel_range)}: black must be below white")
        # Uploads are converted with these steps; one the service cannot apply must fail at
        # start-up, not on the first upload.
        resample = self.preprocessing.get("resample", "bilinear")
        if resample not in RESAMPLE_METHODS:
            raise ValueError(
                f"preprocessing.resample {resample!r} is not one of {RESAMPLE_METHODS}"
            )
        if not isinstance(self.preprocessing.get("invert", False), bool):
            raise ValueError("preprocessing.invert must be true or false")
        return self


class OutputSpec(BaseModel):
    """How the decoder's images are read back into pixels in [0, 1]."""

    tensor: str | None = Field(
        None, description="The decoder output holding the images; none: its first output."
    )
    layout: Layout = Field(
        "NCHW", description="How that output holds the images: `NCHW`, `NHWC` or `flat`."
    )
    flat_order: FlatOrder = Field(
        "HWC", description="For a `flat` layout, the order of each row's values: `HWC` or `CHW`."
    )
    activation: Literal["none", "sigmoid"] = Field(
        "none",
        description="`sigmoid` when the decoder ends in logits (as models trained with "
        "binary cross-entropy on logits do): the service applies it.",
    )


# What a VAE encoder's second output holds: a log-variance (the usual, and what clients get), a
# log standard deviation (log sigma = logvar / 2) or a standard deviation (sigma = exp(logvar/2)).
Variance = Literal["logvar", "log_sigma", "sigma"]


class LatentSpec(BaseModel):
    code_output: str
    logvar_output: str | None = None
    variance: Variance = Field(
        "logvar",
        description="What `logvar_output` holds: `logvar`, `log_sigma` or `sigma`; the service "
        "converts it, so clients always get a log-variance.",
    )
    sigma: str | None = None  # how a VAE's standard deviation follows from logvar, for readers
    prior: str | None = None  # the prior /generate samples from, for readers


class ParityReport(BaseModel):
    """How far onnxruntime's outputs were from torch's at export, per batch size."""

    atol: float = Field(ge=0)
    encoder_max_abs_diff: dict[str, FiniteFloat]
    decoder_max_abs_diff: dict[str, FiniteFloat]


class LatentMapSpec(BaseModel):
    """The manifest's entry for latent_map.json (latent_dim 2 only)."""

    file: str = Field(pattern=r"^[A-Za-z0-9._-]+\.json$")  # a plain file name: no path tricks
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    split: Literal["test"] = "test"
    points: int = Field(ge=1)


class LatentMap(BaseModel):
    """latent_map.json: the latent means (an AE: its codes) of a split, with their labels."""

    split: Literal["test"]
    dataset: str
    points: int = Field(ge=1)
    label_names: list[str]
    mu: list[Annotated[list[FiniteFloat], Field(min_length=2, max_length=2)]]
    labels: list[StrictInt]

    @model_validator(mode="after")
    def _consistent(self) -> LatentMap:
        if len(self.mu) != self.points or len(self.labels) != self.points:
            raise ValueError(
                f"points is {self.points}, but mu holds {len(self.mu)} points and labels "
                f"{len(self.labels)}"
            )
        return self


# ---------------------------------------------------------------------------------------------
# Anomaly-score calibration (issue 18). The scores themselves are computed by service/scoring.py,
# which imports Pillow and numpy at module level; this schema names them without importing it
# (tests/test_scoring.py checks that the names here are scoring.SCORES' own).

ScoreName = Literal[
    "complexity_residual",
    "nll",
    "reconstruction_error",
    "complexity_corrected",
    "typicality",
    "complexity_adjusted",
]
SCORE_NAMES: tuple[str, ...] = get_args(ScoreName)
# The scores computable only with a calibration's held-out statistics (its `reference`).
SCORES_NEEDING_REFERENCE = frozenset(("complexity_residual", "typicality", "complexity_adjusted"))
REFERENCE_KEYS = frozenset(
    ("nll_median", "nll_scale", "complexity_median", "complexity_scale", "slope", "intercept")
)
LikelihoodKind = Literal["bernoulli", "gaussian"]
Compressor = Literal["png", "zlib"]


class ScoreCalibration(BaseModel):
    """How a model's default score is distributed on held-out data the model never trained on,
    so that a score can be read as a percentile and a threshold set for a false-positive rate.

    Written at export (the run's held-out split) or by the importer (the user's `.npy` of normal
    data); the service reads it and never rescores data at start-up."""

    model_config = ConfigDict(extra="forbid")

    score: str = Field(description="name of the score in service.scoring.SCORES")
    definition: str = Field(description="the score's formula, in words, for people")
    k: int = Field(ge=1, description="importance samples per image the scores were computed with")
    seed: int = Field(description="seed of the importance samples")
    likelihood: LikelihoodKind = Field(description="the decoder likelihood the NLL used")
    gaussian_sigma: float | None = Field(default=None, gt=0, description="gaussian only")
    compressor: Compressor = Field(default="png", description="the compressor of L(x)")
    split: str = Field(description="the held-out data scored, e.g. 'mnist test, even indices'")
    images: int = Field(ge=1, description="how many held-out images were scored")
    target_fpr: float = Field(gt=0, lt=1, description="the false-positive rate of `threshold`")
    threshold: float = Field(description="the score's (1 - target_fpr) quantile on held-out data")
    reference: dict[str, float] = Field(
        default_factory=dict,
        description="held-out statistics the score needs (reference_statistics: nll_median, ...)",
    )
    quantiles: list[float] = Field(
        min_length=2,
        description="the held-out scores' quantiles at evenly spaced probabilities 0, ..., 1",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ScoreCalibration:
        # A calibration the service cannot use is refused at load, not answered with a 500.
        values = self.quantiles
        if not all(math.isfinite(v) for v in values) or any(
            b < a for a, b in itertools.pairwise(values)
        ):
            raise ValueError("quantiles must be finite and non-decreasing")
        if self.score not in SCORE_NAMES:
            raise ValueError(f"score {self.score!r}: expected one of {sorted(SCORE_NAMES)}")
        missing = sorted(REFERENCE_KEYS - set(self.reference))
        if self.score in SCORES_NEEDING_REFERENCE and missing:
            raise ValueError(f"score {self.score!r} needs reference statistics {missing}")
        return self


class Manifest(BaseModel):
    """manifest.json; `training export` validates what it writes against this same schema."""

    model_config = ConfigDict(extra="allow")

    manifest_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    version: str = "1"
    description: str = ""
    kind: Literal["ae", "vae"]
    latent_dim: int = Field(ge=1)
    input: InputSpec
    encoder: GraphSpec
    decoder: GraphSpec
    output: OutputSpec = OutputSpec()
    latent: LatentSpec
    opset: int
    dataset: dict[str, Any] = {}
    metrics: dict[str, Any] | None = None
    latent_map: LatentMapSpec | None = None
    # A record of how the model was made; the service shows it and does not act on it.
    architecture: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    parity: ParityReport | None = None
    created_at: str | None = None
    package_version: str | None = None
    producer: dict[str, str] | None = None
    # The default score's distribution on held-out data (issue 18): percentiles, the threshold at
    # a false-positive rate. None: scores are served without percentiles, and /score says so.
    score_calibration: ScoreCalibration | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        outputs = [t.name for t in self.encoder.outputs]
        if self.latent.code_output not in outputs:
            raise ValueError(f"latent.code_output {self.latent.code_output!r} not in {outputs}")
        if self.kind == "vae" and self.latent.logvar_output not in outputs:
            raise ValueError("a vae needs latent.logvar_output naming an encoder output")
        if self.kind == "ae" and self.latent.logvar_output is not None:
            raise ValueError("an ae has no logvar output")
        decoder_outputs = [t.name for t in self.decoder.outputs]
        if self.output.tensor is not None and self.output.tensor not in decoder_outputs:
            raise ValueError(f"output.tensor {self.output.tensor!r} not in {decoder_outputs}")
        if self.decoder.inputs[0].shape[1:] != [self.latent_dim]:
            raise ValueError(
                f"decoder input shape {self.decoder.inputs[0].shape} does not end in "
                f"latent_dim {self.latent_dim}"
            )
        if self.latent_map is not None and self.latent_dim != 2:
            raise ValueError(f"a latent map is for latent_dim 2, not {self.latent_dim}")
        return self

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width)."""
        return self.input.shape

    @property
    def image_output(self) -> str:
        """The name of the decoder output holding the images."""
        return self.output.tensor or self.decoder.outputs[0].name


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _problems(exc: ValidationError, what: str) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in exc.errors()
    )


def model_folders(model_dir: Path) -> list[Path]:
    """Every sub-folder of `model_dir` holding a manifest.json, by name."""
    if not model_dir.is_dir():
        raise ModelLoadError(f"VAE_MODEL_DIR={model_dir} is not a folder")
    return sorted(p.parent for p in model_dir.glob("*/manifest.json"))


def folder_fingerprint(folder: Path) -> str:
    """What a model folder holds now, cheaply: the manifest's bytes (which carry the sha256 of
    every file it names) and the name, size and modification time of every file beside it. Two
    equal fingerprints: nothing to reload. A folder that cannot be read gets a fingerprint of its
    own, so that loading it is tried (and tells what is wrong)."""
    digest = hashlib.sha256()
    try:
        digest.update((folder / "manifest.json").read_bytes())
        for path in sorted(folder.iterdir()):
            info = path.stat()
            digest.update(f"\0{path.name}\0{info.st_size}\0{info.st_mtime_ns}".encode())
    except OSError as exc:
        digest.update(f"unreadable: {exc}".encode())
    return digest.hexdigest()


def load_manifest(folder: Path) -> Manifest:
    """Parse and check `folder/manifest.json` and the sha256 of the files it names."""
    path = folder / "manifest.json"
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ModelLoadError(f"model folder {folder}: cannot read {path}: {exc}") from exc
    except ValidationError as exc:
        problems = _problems(exc, "manifest")
        raise ModelLoadError(f"model folder {folder}: {path} is invalid: {problems}") from exc
    files: list[tuple[str, GraphSpec | LatentMapSpec]] = [
        ("encoder", manifest.encoder),
        ("decoder", manifest.decoder),
    ]
    if manifest.latent_map is not None:
        files.append(("latent map", manifest.latent_map))
    for part, spec in files:
        file = folder / spec.file
        if not file.is_file():
            raise ModelLoadError(f"model {manifest.name!r}: {part} file {file} is missing")
        actual = sha256sum(file)
        if actual != spec.sha256:
            raise ModelLoadError(
                f"model {manifest.name!r}: {file} has sha256 {actual}, but the manifest says "
                f"{spec.sha256}; the file is corrupt or was replaced after export"
            )
    return manifest


def load_latent_map(folder: Path, manifest: Manifest) -> LatentMap | None:
    """Read and check the latent map the manifest names (its sha256 was checked by
    `load_manifest`): N points of 2 finite numbers, N labels, N as the manifest says."""
    spec = manifest.latent_map
    if spec is None:
        return None
    path = folder / spec.file
    try:
        latent_map = LatentMap.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ModelLoadError(f"model {manifest.name!r}: cannot read {path}: {exc}") from exc
    except ValidationError as exc:
        raise ModelLoadError(
            f"model {manifest.name!r}: {path} is invalid: {_problems(exc, 'latent map')}"
        ) from exc
    if latent_map.points != spec.points or latent_map.split != spec.split:
        raise ModelLoadError(
            f"model {manifest.name!r}: {path} holds {latent_map.points} points of the "
            f"{latent_map.split} split, the manifest says {spec.points} of the {spec.split} split"
        )
    return latent_map
