"""Request and response bodies of the JSON API, with the examples shown in /docs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt
from pydantic_core import PydanticCustomError

MAX_SEED = 2**63 - 1

# An image: a flat list of H*W*C numbers in [0, 1] (HWC order), H rows of W numbers (grayscale)
# or H rows of W pixels of C numbers (colour). Strict floats: a string such as "0.5" where a
# number belongs is an error, not something to guess about.
FlatImage = list[StrictFloat]
NestedImage = list[list[StrictFloat]]
ColourImage = list[list[list[StrictFloat]]]
Images = list[FlatImage | NestedImage | ColourImage]

_EXAMPLE_ROW = [0.0] * 28
EXAMPLE_IMAGE = (
    [_EXAMPLE_ROW] * 12 + [[0.0] * 10 + [1.0] * 8 + [0.0] * 10] * 4 + [_EXAMPLE_ROW] * 12
)

ModelField = Field(
    None,
    description="Model name (see GET /models); the default model when absent. May also be given "
    "as the `?model=` query parameter.",
    examples=["mnist-vae"],
)
ImagesField = Field(
    min_length=1,
    description="Images with pixels in [0, 1], of the model's `image_shape` (GET /models): "
    "grayscale, H rows of W numbers (28 rows of 28 for the bundled models); colour, H rows of W "
    "pixels of C numbers (channels last); or each flat, H*W*C numbers in that order. The "
    "bundled models take bright strokes on a dark background, as in MNIST.",
)
SeedField = Field(
    None,
    ge=0,
    le=MAX_SEED,
    description="Seed of the noise; the same seed gives the same result. Drawn and returned when "
    "absent, so any result can be reproduced.",
)

INVERT_VALUES = ("auto", "true", "false")


def _invert_choice(value: object) -> object:
    """`invert` as JSON (true, false, "auto") or as text (a form field, a query parameter)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in INVERT_VALUES:
        word = value.strip().lower()
        return word if word == "auto" else word == "true"
    raise PydanticCustomError(
        "invert", "expected 'auto', true or false, got {got}", {"got": repr(value)[:40]}
    )


InvertChoice = Annotated[Literal["auto"] | bool | None, BeforeValidator(_invert_choice)]
InvertField = Field(
    None,
    description="Invert the images (1 - pixel): `true`, `false`, or `auto`: invert an image "
    "whose background differs from the model's (`input.background` in its manifest; dark, "
    "bright strokes on black, for the bundled models). An image's background is light when "
    "its border, the outermost ring of pixels, is above 0.5 on average (dark ink on light "
    "paper); uploads are judged at their own size. Default: `auto` for uploaded files, "
    "`false` for arrays (JSON, .npy), which are taken as the model's input.",
    examples=["auto"],
)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EncodeParams(_Request):
    model: str | None = ModelField
    invert: InvertChoice = InvertField


class EncodeRequest(EncodeParams):
    images: Images = ImagesField


class ReconstructParams(_Request):
    model: str | None = ModelField
    invert: InvertChoice = InvertField
    mode: Literal["deterministic", "sampled"] = Field(
        "deterministic",
        description="`deterministic`: decode(mu), identical on every call. `sampled`: decode(z) "
        "with z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) from `seed` (VAE only).",
    )
    seed: StrictInt | None = SeedField
    samples: StrictInt | None = Field(
        None,
        ge=1,
        description="Sampled mode: this many reconstructions per input, grouped by input "
        "(`images` is then inputs x samples x H x W, or x C for colour).",
    )


class ReconstructRequest(ReconstructParams):
    images: Images = ImagesField


class GenerateRequest(_Request):
    model: str | None = ModelField
    n: StrictInt = Field(1, ge=1, description="How many images to generate.")
    seed: StrictInt | None = SeedField
    temperature: StrictFloat = Field(
        1.0,
        ge=0,
        le=10,
        allow_inf_nan=False,  # else NaN (a JSON literal pydantic reads) fails as "<= 10"
        description="Scale of the prior: z = temperature * eps, eps ~ N(0, I). Below 1 gives "
        "more typical, less varied images; 0 decodes the prior's mean, z = 0.",
    )


class DecodeParams(_Request):
    model: str | None = ModelField


class DecodeRequest(DecodeParams):
    z: list[list[StrictFloat]] = Field(
        min_length=1, description="Latent vectors, each of the model's latent_dim numbers."
    )


class ScoreParams(_Request):
    model: str | None = ModelField
    invert: InvertChoice = InvertField
    k: StrictInt | None = Field(
        None,
        ge=1,
        description="VAE: importance samples per image for the `nll` estimate (IWAE); more "
        "samples cost more and tighten the estimate, the ranking barely moves. Default: the k "
        "the model's calibration was made with, else 8. Bounded by VAE_MAX_SCORE_VALUES "
        "(images x k x pixels). Not for an AE.",
    )
    seed: StrictInt | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="VAE: seed of the importance samples; the same seed gives the same numbers. "
        "Drawn and returned when absent. Not for an AE.",
    )
    fpr: StrictFloat | None = Field(
        None,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description="Set the threshold for this false-positive rate on the model's held-out "
        "data (needs a calibrated model). Default: the calibration's own (1 %). Not with "
        "`threshold`.",
    )
    threshold: StrictFloat | None = Field(
        None,
        allow_inf_nan=False,
        description="`is_outlier` is `score > threshold`, in the units of `score_name`. "
        "Default: the calibration's threshold. Not with `fpr`.",
    )
    per_pixel: bool = Field(
        False,
        description="Also answer `per_pixel_error`: the squared error of decode(mu) per pixel. "
        "Needed for Accept: image/png (a heat map).",
    )


class ScoreRequest(ScoreParams):
    images: Images = ImagesField


IMAGES_OUT = (
    "Pixel means in [0, 1], N x H x W for a grayscale model, N x H x W x C for a colour one."
)


class EncodeResponse(BaseModel):
    model: str
    latent_dim: int
    mu: list[list[float]] = Field(description="Posterior means (an AE: its codes).")
    logvar: list[list[float]] | None = Field(
        description="Log-variance of q(z|x): sigma = exp(logvar / 2). null for an AE."
    )


class ReconstructResponse(BaseModel):
    model: str
    mode: Literal["deterministic", "sampled"]
    seed: int | None = Field(description="The seed used (null in deterministic mode).")
    images: list[Any] = Field(
        description="Pixel means in [0, 1]: inputs x H x W (grayscale) or inputs x H x W x C "
        "(colour); inputs x samples x ... when `samples` was given."
    )


class GenerateResponse(BaseModel):
    model: str
    seed: int
    z: list[list[float]] = Field(description="The latent vectors that were decoded.")
    images: list[Any] = Field(description=IMAGES_OUT)


class DecodeResponse(BaseModel):
    model: str
    images: list[Any] = Field(description=IMAGES_OUT)


NatsPerImage = list[float] | None


class ScoreResponse(BaseModel):
    model: str
    score_name: str = Field(
        description="Which score `score` is (service.scoring.SCORES): the model's calibrated "
        "one (complexity_residual for a VAE, reconstruction_error for an AE), or "
        "reconstruction_error for a model without calibration."
    )
    calibrated: bool = Field(
        description="Whether the model has a score calibration: without one, `percentile` "
        "is null and there is no default threshold (`note` says so)."
    )
    note: str | None = Field(description="What the numbers cannot tell, when anything.")
    threshold: float | None = Field(
        description="`is_outlier` is score > threshold: the request's `threshold`, the one "
        "its `fpr` sets, or the calibration's. null: no calibration and none given."
    )
    fpr: float | None = Field(
        description="The false-positive rate of the threshold on the model's held-out data "
        "(the calibration's target, 0.01, by default). null without calibration."
    )
    k: int | None = Field(description="Importance samples per image (null for an AE).")
    seed: int | None = Field(description="Seed of the importance samples (null for an AE).")
    score: list[float] = Field(
        description="Per image: the anomaly score, higher = less like the training data."
    )
    is_outlier: list[bool] | None = Field(
        description="Per image: score > threshold. null without a threshold."
    )
    percentile: list[float] | None = Field(
        description="Per image: the percentage (0-100) of the model's held-out images whose "
        "score is at or below this one. null without calibration."
    )
    nll: NatsPerImage = Field(
        description="VAE, per image: -log p(x) in nats, importance-weighted estimate with k "
        "samples. null for an AE."
    )
    elbo: NatsPerImage = Field(
        description="VAE, per image: the evidence lower bound, -(reconstruction + kl), nats."
    )
    reconstruction: NatsPerImage = Field(
        description="VAE, per image: E_q[-log p(x|z)] over the k samples, nats."
    )
    kl: NatsPerImage = Field(description="VAE, per image: KL(q(z|x) || N(0, I)), nats.")
    reconstruction_error: list[float] = Field(
        description="Per image: mean squared error per pixel of decode(mu), pixels in [0, 1]."
    )
    per_pixel_error: list[Any] | None = Field(
        description="With per_pixel: the squared error of decode(mu) per pixel, N x H x W "
        "(grayscale) or N x H x W x C (colour); its mean per image is reconstruction_error."
    )


class ModelInfo(BaseModel):
    name: str
    version: str
    kind: Literal["ae", "vae"]
    latent_dim: int
    image_shape: list[int] = Field(
        description="One image as requests and answers hold it: [H, W] for a grayscale model, "
        "[H, W, C] for a colour one (channels last). The graph's own layout is in `manifest`."
    )
    default: bool
    ready: bool
    providers: list[str] = Field(description="onnxruntime execution providers in use, in order.")
    latent_map: bool = Field(
        description="Whether GET /models/{name}/latent-map has a scatter of the test set's "
        "latent means to show (2-D models exported with their dataset)."
    )
    manifest: dict[str, Any]


class LatentMapResponse(BaseModel):
    model: str
    version: str
    split: Literal["test"] = Field(description="The dataset split the points come from.")
    dataset: str
    label_names: list[str] = Field(description="Names of the labels 0, 1, ...; -1 is unlabelled.")
    points: int = Field(description="How many points: the length of `mu` and of `labels`.")
    mu: list[list[float]] = Field(
        description="Latent means [z0, z1] of each test image (an AE: its codes), rounded to 3 "
        "decimals."
    )
    labels: list[int] = Field(description="Label of each point, an index into `label_names`.")


class ModelList(BaseModel):
    default: str
    models: list[ModelInfo]


class RefusedFolder(BaseModel):
    folder: str
    model: str | None = Field(
        description="The model served from this folder before, which keeps serving; null for a "
        "new folder, which was not added."
    )
    problem: str = Field(description="What is wrong, naming the file.")


class RepositoryReload(BaseModel):
    added: list[str] = Field(description="Models loaded from new folders.")
    dropped: list[str] = Field(
        description="Models whose folder is gone; requests already running on them finish."
    )
    reloaded: list[str] = Field(description="Models whose folder changed: a new version.")
    unchanged: list[str] = Field(description="Models whose folder did not change.")
    refused: list[RefusedFolder] = Field(
        description="Folders not taken, each with its problem; everything else was applied."
    )
    default: str = Field(description="The default model now.")


class RepositoryReloadRefused(RepositoryReload):
    detail: str = Field(description="What was refused, and why.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="What was wrong, naming the field, and what is expected.")


class Health(BaseModel):
    status: Literal["ok", "loading", "not ready", "shutting down"]
