"""Images in and out: JSON lists or uploaded files -> model input arrays; outputs -> PNG grids."""

from __future__ import annotations

import io
import math
import warnings
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from service.codecs.image_cost import MAX_UPLOAD_PIXELS, check_upload
from service.errors import InvalidInput, TooLarge, UnsupportedMediaType

if TYPE_CHECKING:  # the manifest's schema imports pydantic, which this module does without
    from service.manifest import Background

Array = NDArray[np.float32]
Numbers = TypeVar("Numbers", bound=NDArray[Any])
MAX_UPLOAD_PIXEL_SCANS = 24 * 4096 * 4096  # VAE_MAX_UPLOAD_PIXEL_SCANS's default
# Latent values are O(1) (the prior is N(0, I), AE codes are of the same order); far larger ones
# overflow the decoder's float32 arithmetic into NaN images (3.4e38 does on the bundled models).
MAX_LATENT = 1e6

# Whether to invert an image (1 - pixel): always, never, or "auto": where its background (see
# `light_background`) differs from the model's (the manifest's `input.background`, dark for
# bright strokes on black as MNIST has them, light for a model trained on dark ink on paper).
Invert = Literal["auto"] | bool
# An image's background is judged at its border (the outermost ring of pixels): light when its
# mean is above half of white. The playground's rule too
# (service/static/playground/playground.js, lightBorder), so that the page and the API treat the
# same picture alike. The border, not the whole picture: a bright garment filling a dark frame is
# brighter than grey on the whole, yet already bright-on-dark.
AUTO_INVERT_ABOVE = 0.5  # of white
# A border mean within float32 rounding of a tie (up to 3e-8) is a tie, and left as sent; 8-bit
# border means are 1 / (255 * pixels) apart, more than this for borders up to 39,000 pixels long.
_TIE_MARGIN = 1e-7

# Pillow is imported where images are decoded or drawn: most requests carry arrays, and the
# service's resident memory is a budget (see docs/performance.md).


def check_pixels(array: Numbers, field: str) -> Numbers:
    """Checked before any cast to float32, which would turn a huge number into infinity."""
    low, high = float(array.min()), float(array.max())  # NaN propagates into both
    if low >= 0.0 and high <= 1.0:
        return array
    if not np.isfinite(array).all():
        bad = int(np.argwhere(~np.isfinite(array).reshape(len(array), -1))[0, 0])
        raise InvalidInput(f"{field}[{bad}]", "NaN or infinity is not a pixel value; use [0, 1]")
    flat = array.reshape(len(array), -1)
    bad = int(np.argwhere((flat < 0) | (flat > 1))[0, 0])
    raise InvalidInput(
        f"{field}[{bad}]",
        f"pixel values must be in [0, 1] (found {low:.4g} .. {high:.4g}); divide 0-255 "
        "values by 255",
    )


def image_text(hwc: tuple[int, int, int]) -> str:
    """What one image of a model is, for messages: "28 rows of 28 numbers (H x W)"."""
    h, w, c = hwc
    if c == 1:
        return f"{h} rows of {w} numbers (H x W), or {h * w} numbers"
    return (
        f"{h} rows of {w} pixels of {c} channels (H x W x C, channels last), or {h * w * c} "
        "numbers in that order"
    )


def as_hwc(array: Numbers, hwc: tuple[int, int, int]) -> Numbers | None:
    """A batch (N, ...) as (N, H, W, C) when its shape is one the public contract takes: flat
    rows of H*W*C values in HWC order, (N, H, W, C); grayscale also (N, H, W) and the legacy
    (N, 1, H, W). None for any other shape."""
    h, w, c = hwc
    rest = array.shape[1:]
    if rest in ((h * w * c,), (h, w, c)) or (c == 1 and rest in ((h, w), (1, h, w))):
        return array.reshape(len(array), h, w, c)  # type: ignore[return-value]
    return None


def shape_hint(rest: tuple[int, ...], hwc: tuple[int, int, int], batch: bool) -> str:
    """The fix for an image of shape `rest` that is not one the model takes, when it is a
    channels-first one (C x H x W, as PyTorch holds images)."""
    h, w, c = hwc
    if c > 1 and rest == (c, h, w):
        axes = "0, 2, 3, 1" if batch else "1, 2, 0"
        return f"; that is channels first (C x H x W): transpose it with x.transpose({axes})"
    return ""


def images_from_lists(images: list[Any], hwc: tuple[int, int, int], field: str = "images") -> Array:
    """JSON images (each flat H*W*C numbers in HWC order, H rows of W numbers for grayscale, or
    H rows of W pixels of C channels) -> float32 (N, H, W, C)."""
    h, w, c = hwc
    batch = np.empty((len(images), h, w, c), dtype=np.float64)  # float32 after the range check
    for i, image in enumerate(images):
        try:
            array = np.asarray(image, dtype=np.float64)
        except ValueError:  # rows of different lengths
            array = None
        image_hwc = None if array is None else as_hwc(array[None], hwc)
        if image_hwc is None:
            got = "rows of different lengths" if array is None else _shape_words(array.shape)
            hint = "" if array is None else shape_hint(array.shape, hwc, batch=False)
            raise InvalidInput(f"{field}[{i}]", f"expected {image_text(hwc)}; got {got}{hint}")
        batch[i] = image_hwc[0]
    return check_pixels(batch, field).astype(np.float32)


def _shape_words(shape: tuple[int, ...]) -> str:
    if len(shape) == 1:
        return f"{shape[0]} numbers"
    if len(shape) == 2:
        return f"{shape[0]} rows of {shape[1]} numbers"
    return "an array of shape " + " x ".join(map(str, shape))


def latents_from_lists(z: list[list[float]] | NDArray[Any], latent_dim: int) -> Array:
    if isinstance(z, np.ndarray) and z.ndim == 2 and z.shape[1] == latent_dim:
        array = z
    else:
        for i, vector in enumerate(z):
            if len(vector) != latent_dim:
                raise InvalidInput(
                    f"z[{i}]",
                    f"has {len(vector)} numbers but this model's latent size is {latent_dim}",
                )
        array = np.asarray(z, dtype=np.float64)
    if not np.isfinite(array).all():
        bad = int(np.argwhere(~np.isfinite(array))[0, 0])
        raise InvalidInput(f"z[{bad}]", "NaN or infinity is not a latent value")
    largest = float(np.abs(array).max()) if array.size else 0.0
    if largest > MAX_LATENT:
        bad = int(np.argwhere(np.abs(array) > MAX_LATENT)[0, 0])
        raise InvalidInput(
            f"z[{bad}]", f"latent values must be within +-{MAX_LATENT:g} (found {largest:.4g})"
        )
    return array.astype(np.float32, copy=False)


# How bright each channel of an RGB pixel looks (ITU-R 601, as Pillow's "L" conversion weighs
# them): a colour picture's background is judged on its luminance.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def light_background(
    images: NDArray[Any], white: float = 1.0, channels_last: bool = False
) -> NDArray[np.bool_]:
    """For each image of `images` (N, ..., H, W; with `channels_last`, (N, H, W, C)), whether
    its background is light: the mean of its border, the outermost ring of pixels, above half
    of `white` (1.0 for [0, 1] pixels, 255 for 8-bit ones). Colour images are judged on their
    luminance. An exact tie is not light."""
    weights: NDArray[np.float64] | None = None
    if channels_last:
        channels = images.shape[-1]
        weights = np.array(LUMA_WEIGHTS if channels == 3 else [1.0 / channels] * channels)
        images = np.moveaxis(images, -1, 1)  # a view: (N, C, H, W), channels summed below
    if images.ndim < 3:  # flat images: no rows to find a border in, so every pixel is border
        images = images[:, None, :]
    height, width = images.shape[-2:]
    top_and_bottom = images[..., :: max(height - 1, 1), :]  # row 0 and the last (one if height 1)
    sides = images[..., 1:-1, :: max(width - 1, 1)]  # columns 0 and the last, between those rows
    n = len(images)
    # Sums in float64: exact for 8-bit pixels, and a float64 sum is cheaper than a float64 mean.
    if weights is not None:
        per_channel = top_and_bottom.reshape(n, len(weights), -1).sum(axis=2, dtype=np.float64)
        per_channel += sides.reshape(n, len(weights), -1).sum(axis=2, dtype=np.float64)
        sums = per_channel @ weights
        count = math.prod(top_and_bottom.shape[2:]) + math.prod(sides.shape[2:])
    else:
        sums = top_and_bottom.reshape(n, -1).sum(axis=1, dtype=np.float64)
        sums += sides.reshape(n, -1).sum(axis=1, dtype=np.float64)
        count = math.prod(top_and_bottom.shape[1:]) + math.prod(sides.shape[1:])
    light: NDArray[np.bool_] = sums > (AUTO_INVERT_ABOVE + _TIE_MARGIN) * white * count
    return light


def invert_where_needed(
    images: Array,
    invert: Invert,
    background: Background = "dark",
    light: NDArray[np.bool_] | None = None,
) -> Array:
    """Images (N, H, W, C) in [0, 1] (or grayscale (N, ..., H, W)), each inverted (1 - pixel)
    when `invert` is true, none when it is false, and with "auto" those grayscale images whose
    background (`light`, by default `light_background` of `images`) differs from the model's
    `background` (colour images are left as they are). A new array wherever anything is
    inverted: `images` may be a read-only view of a request body."""
    if invert is False:
        return images
    if invert is True:
        return 1.0 - images
    if images.ndim == 4 and images.shape[-1] == 3:
        # "auto" is the ink-on-paper convention of grayscale strokes; a colour picture's
        # negative is never what a colour model was trained on, whatever its border.
        return images
    if light is None:
        light = light_background(images, channels_last=images.ndim == 4)
    mismatched = light != (background == "light")
    if not mismatched.any():
        return images
    out = images.copy()
    out[mismatched] = 1.0 - out[mismatched]
    return out


def image_from_file(
    data: bytes,
    field: str,
    hwc: tuple[int, int, int],
    preprocessing: dict[str, Any],
    invert: Invert = "auto",
    background: Background = "dark",
    max_pixel_scans: int = MAX_UPLOAD_PIXEL_SCANS,
) -> Array:
    """An uploaded PNG/JPEG -> (H, W, C), with the training pipeline's steps from the manifest:
    grayscale (a 1-channel model) or RGB (a 3-channel one: RGBA, palette and gray pictures are
    converted), resize (bilinear by default), pixel / 255; then inverted as `invert` says
    ("auto": a grayscale model's upload where its background, judged on its luminance, differs
    from the model's `background`; a colour model's never). "auto" judges the picture as sent,
    at its own resolution (`light_background`): resizing blends the border with what lies
    inside it. What decoding
    would cost is checked first (`check_upload`): 413 past `max_pixel_scans`."""
    from PIL import Image

    h, w, c = hwc
    cost = check_upload(data, field, max_pixel_scans)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Only the plugin of the format measured: no other parser sees the bytes.
            with Image.open(io.BytesIO(data), formats=[cost.format]) as img:
                if img.format not in ("PNG", "JPEG"):
                    raise UnsupportedMediaType(field, f"is a {img.format} file; send PNG or JPEG")
                if img.width * img.height > MAX_UPLOAD_PIXELS:
                    raise _too_many_pixels(field, f"is {img.width}x{img.height} pixels")
                picture = img.convert("L" if c == 1 else "RGB")
    except (UnsupportedMediaType, TooLarge):
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        # Pillow's own, larger limits, hit while opening: the same refusal as above.
        raise _too_many_pixels(field, "claims far too many pixels") from exc
    except Image.UnidentifiedImageError as exc:  # its message is the repr of a BytesIO
        raise InvalidInput(field, "is not a readable PNG or JPEG image (unknown format)") from exc
    except (OSError, ValueError) as exc:
        raise InvalidInput(field, f"is not a readable PNG or JPEG image ({exc})") from exc
    light = None
    if invert == "auto" and c == 1:
        sent = np.asarray(picture).reshape(picture.height, picture.width, c)
        light = light_background(sent[None], white=255, channels_last=True)
    if picture.size != (w, h):
        resample = Image.Resampling[preprocessing.get("resample", "bilinear").upper()]
        picture = picture.resize((w, h), resample)
    pixels = (np.asarray(picture, dtype=np.float32) / 255.0).reshape(1, h, w, c)
    return invert_where_needed(pixels, invert, background, light)[0]


def _too_many_pixels(field: str, what: str) -> TooLarge:
    return TooLarge(field, f"{what}; at most {MAX_UPLOAD_PIXELS} pixels are accepted")


def png_grid(images: Array) -> bytes:
    """(N, H, W, C) -> a near-square grid, row-major; (N, K, H, W, C) -> N rows of K. One 8-bit
    PNG: mode L for one channel, RGB for three."""
    from PIL import Image

    if images.ndim == 4:
        n = len(images)
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        padded = np.zeros((rows * cols, *images.shape[1:]), dtype=images.dtype)
        padded[:n] = images
        tiles = padded.reshape(rows, cols, *images.shape[1:])
    else:
        tiles = images
    rows, cols, h, w, c = tiles.shape
    mosaic = tiles.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)
    pixels = np.round(np.clip(mosaic, 0, 1) * 255).astype(np.uint8)
    picture = (
        Image.fromarray(pixels[..., 0], mode="L") if c == 1 else Image.fromarray(pixels, "RGB")
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


# The heat map's colours ("hot": black, red, yellow, white) at evenly spaced error levels.
HEAT_STOPS = np.array(
    [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=np.float32
)


def heat_map(squared_error: Array) -> Array:
    """Squared errors per pixel (N, H, W, C) -> RGB (N, H, W, 3) in [0, 1]: the absolute error
    |x - x'| (root mean square over channels) on a fixed scale, 0 black, 1/3 red, 2/3 yellow,
    1 white. Fixed rather than stretched per image, so that two maps compare: a well
    reconstructed image stays dark."""
    error = np.sqrt(np.clip(squared_error.mean(axis=-1), 0.0, 1.0))
    position = error * (len(HEAT_STOPS) - 1)
    low = np.minimum(position.astype(np.int64), len(HEAT_STOPS) - 2)
    frac = (position - low)[..., None].astype(np.float32)
    return HEAT_STOPS[low] * (1.0 - frac) + HEAT_STOPS[low + 1] * frac
