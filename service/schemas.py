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
