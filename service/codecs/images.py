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


def images_from_lists(
    images: list[Any], shape: tuple[int, int, int], field: str = "images"
) -> Array:
    """JSON images (each flat C*H*W numbers or H rows of W) -> float32 (N, C, H, W)."""
    c, h, w = shape
    flat_size = c * h * w
    batch = np.empty((len(images), c, h, w), dtype=np.float64)  # float32 after the range check
    for i, image in enumerate(images):
        nested = bool(image) and isinstance(image[0], list)
        if nested and c == 1 and (len(image) != h or any(len(row) != w for row in image)):
            widths = sorted({len(row) for row in image})
            raise InvalidInput(
                f"{field}[{i}]",
                f"expected {h} rows of {w} numbers, got {len(image)} rows of {widths} numbers",
            )
        if not nested and len(image) != flat_size:
            raise InvalidInput(
                f"{field}[{i}]",
                f"expected {flat_size} numbers (or {h} rows of {w}), got {len(image)}",
            )
        batch[i] = np.asarray(image, dtype=np.float64).reshape(c, h, w)
    return check_pixels(batch, field).astype(np.float32)


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


def light_background(images: NDArray[Any], white: float = 1.0) -> NDArray[np.bool_]:
    """For each image of `images` (N, ..., H, W), whether its background is light: the mean of
    its border, the outermost ring of pixels, above half of `white` (1.0 for [0, 1] pixels, 255
    for 8-bit ones). An exact tie is not light."""
    if images.ndim < 3:  # flat images: no rows to find a border in, so every pixel is border
        images = images[:, None, :]
    height, width = images.shape[-2:]
    top_and_bottom = images[..., :: max(height - 1, 1), :]  # row 0 and the last (one if height 1)
    sides = images[..., 1:-1, :: max(width - 1, 1)]  # columns 0 and the last, between those rows
    count = math.prod(top_and_bottom.shape[1:]) + math.prod(sides.shape[1:])
    n = len(images)
    # Sums in float64: exact for 8-bit pixels, and a float64 sum is cheaper than a float64 mean.
    sums = top_and_bottom.reshape(n, -1).sum(axis=1, dtype=np.float64)
    sums += sides.reshape(n, -1).sum(axis=1, dtype=np.float64)
    light: NDArray[np.bool_] = sums > (AUTO_INVERT_ABOVE + _TIE_MARGIN) * white * count
    return light


def invert_where_needed(
    images: Array,
    invert: Invert,
    background: Background = "dark",
    light: NDArray[np.bool_] | None = None,
) -> Array:
    """Images (N, ..., H, W) in [0, 1], each inverted (1 - pixel) when `invert` is true, none when
    it is false, and with "auto" those whose background (`light`, by default `light_background`
    of `images`) differs from the model's `background`. A new array wherever anything is
    inverted: `images` may be a read-only view of a request body."""
    if invert is False:
        return images
    if invert is True:
        return 1.0 - images
    if light is None:
        light = light_background(images)
    mismatched = light != (background == "light")
    if not mismatched.any():
        return images
    out = images.copy()
    out[mismatched] = 1.0 - out[mismatched]
    return out


def image_from_file(
    data: bytes,
    field: str,
    shape: tuple[int, int, int],
    preprocessing: dict[str, Any],
    invert: Invert = "auto",
    background: Background = "dark",
    max_pixel_scans: int = MAX_UPLOAD_PIXEL_SCANS,
) -> Array:
    """An uploaded PNG/JPEG -> (C, H, W), with the training pipeline's steps from the manifest:
    grayscale, resize (bilinear by default), pixel / 255; then inverted as `invert` says ("auto":
    where its background differs from the model's `background`). "auto" judges the picture as
    sent, at its own resolution (`light_background`): resizing blends the border with what lies
    inside it. What decoding would cost is checked first (`check_upload`): 413 past
    `max_pixel_scans`."""
    from PIL import Image

    c, h, w = shape
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
                gray = img.convert("L")
    except (UnsupportedMediaType, TooLarge):
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        # Pillow's own, larger limits, hit while opening: the same refusal as above.
        raise _too_many_pixels(field, "claims far too many pixels") from exc
    except Image.UnidentifiedImageError as exc:  # its message is the repr of a BytesIO
        raise InvalidInput(field, "is not a readable PNG or JPEG image (unknown format)") from exc
    except (OSError, ValueError) as exc:
        raise InvalidInput(field, f"is not a readable PNG or JPEG image ({exc})") from exc
    light = light_background(np.asarray(gray)[None], white=255) if invert == "auto" else None
    if gray.size != (w, h):
        resample = Image.Resampling[preprocessing.get("resample", "bilinear").upper()]
        gray = gray.resize((w, h), resample)
    pixels = invert_where_needed(
        (np.asarray(gray, dtype=np.float32) / 255.0)[None], invert, background, light
    )[0]
    return np.broadcast_to(pixels, (c, h, w)).copy()


def _too_many_pixels(field: str, what: str) -> TooLarge:
    return TooLarge(field, f"{what}; at most {MAX_UPLOAD_PIXELS} pixels are accepted")


def png_grid(images: Array) -> bytes:
    """(N, H, W) -> a near-square grid, row-major; (N, K, H, W) -> N rows of K. One 8-bit PNG."""
    from PIL import Image

    if images.ndim == 3:
        n = len(images)
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        padded = np.zeros((rows * cols, *images.shape[1:]), dtype=images.dtype)
        padded[:n] = images
        tiles = padded.reshape(rows, cols, *images.shape[1:])
    else:
        tiles = images
    rows, cols, h, w = tiles.shape
    mosaic = tiles.transpose(0, 2, 1, 3).reshape(rows * h, cols * w)
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(mosaic, 0, 1) * 255).astype(np.uint8), mode="L").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()
