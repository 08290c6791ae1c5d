"""What an uploaded image will cost to decode, read from its bytes before any decoding.

A small file can be costly to decode: a progressive JPEG is decoded once per scan, over every
pixel, and a 346 kB file can repeat one scan 5,000 times at 4096 x 4096 (half a minute of
decoding). So an upload is measured first, in bounded work: its format from its signature, its
size from its header, and (JPEG) its scans counted from its marker segments; width x height x
scans over VAE_MAX_UPLOAD_PIXEL_SCANS is refused with 413 before Pillow sees the file.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Literal

from service.errors import InvalidInput, TooLarge, UnsupportedMediaType

MAX_UPLOAD_PIXELS = 4096 * 4096  # a decompression bomb is refused from its header alone
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# A JPEG's marker segments are parsed one by one in Python: a file of thousands of tiny ones
# would take that loop long, and no encoder writes more than a few dozen (an ICC profile split
# into 64 kB pieces, ten scans with their tables).
MAX_JPEG_SEGMENTS = 4096
# The next marker that starts a segment: 0xFF then a byte other than 0x00 (a stuffed 0xFF in
# entropy-coded data), 0x01 (TEM), 0xD0-0xD7 (restart markers, inside a scan) or 0xFF (fill).
# One 0xFF only, not `\xff+`: a long run of fill bytes must not make the search backtrack.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\x01\xd0-\xd7\xff]")
_SOS, _EOI, _SOI = 0xDA, 0xD9, 0xD8
# Start-of-frame markers (they give the size): 0xC0-0xCF but DHT, JPG and DAC.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True, slots=True)
class ImageCost:
    """An upload's format, size and scans (decoding passes over every pixel)."""

    format: Literal["PNG", "JPEG"]
    width: int
    height: int
    scans: int

    @property
    def pixel_scans(self) -> int:
        return self.width * self.height * self.scans


def check_upload(data: bytes, field: str, max_pixel_scans: int) -> ImageCost:
    """The cost of decoding `data`; 413 past `max_pixel_scans` (or a flood of JPEG segments),
    415 for an image format other than PNG and JPEG, 422 for bytes that are no image at all."""
    if data.startswith(PNG_SIGNATURE):
        cost = _png_cost(data)
    elif data.startswith(JPEG_SIGNATURE):
        cost = _jpeg_cost(data, field, max_pixel_scans)
    else:
        raise _not_png_or_jpeg(data, field)
    # Past MAX_UPLOAD_PIXELS the picture is refused for its size alone, when Pillow reads its
    # header (service.codecs.images), with that limit's words.
    if cost.width * cost.height <= MAX_UPLOAD_PIXELS and cost.pixel_scans > max_pixel_scans:
        raise _over_budget(field, cost, max_pixel_scans)
    return cost


def _png_cost(data: bytes) -> ImageCost:
    # IHDR is the first chunk: length (4), type (4), width (4), height (4). One pass over the
    # pixels, interlaced or not. A header cut short counts 0: Pillow refuses the file.
    width = int.from_bytes(data[16:20]) if len(data) >= 24 else 0
    height = int.from_bytes(data[20:24]) if len(data) >= 24 else 0
    return ImageCost("PNG", width, height, 1)


def _jpeg_cost(data: bytes, field: str, max_pixel_scans: int) -> ImageCost:
    """Walks the marker segments as libjpeg does: bytes between segments (entropy-coded data,
    or garbage libjpeg skips with a warning) are searched for the next marker in C; each
    segment is skipped by its length. Stops at EOI, at a second SOI or where the file is cut
    short (Pillow then refuses it), or as soon as the budget is spent."""
    width = height = scans = segments = 0
    position = 2
    while True:
        found = _NEXT_MARKER.search(data, position)
        if found is None:
            break
        marker = data[found.start() + 1]
        if marker in (_EOI, _SOI):
            break
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise TooLarge(
                field,
                f"holds more than {MAX_JPEG_SEGMENTS} JPEG marker segments; re-encode it (any "
                "encoder writes a few dozen)",
            )
        start = found.start() + 2
        length = int.from_bytes(data[start : start + 2])
        if marker in _SOF and start + 7 <= len(data):
            height = max(height, int.from_bytes(data[start + 3 : start + 5]))
            width = max(width, int.from_bytes(data[start + 5 : start + 7]))
        elif marker == _SOS:
            scans += 1
            if width * height * scans > max_pixel_scans:  # stop counting: already refused
                break
        position = start + max(length, 2)
    return ImageCost("JPEG", width, height, scans)


def _over_budget(field: str, cost: ImageCost, limit: int) -> TooLarge:
    # A JPEG's scans are counted only until the budget is spent: "at least".
    scans = f"at least {cost.scans} scans" if cost.format == "JPEG" else "1 pass"
    return TooLarge(
        field,
        f"would cost {cost.width}x{cost.height} pixels x {scans} to decode, over "
        f"VAE_MAX_UPLOAD_PIXEL_SCANS ({limit}); send a smaller image, or a baseline "
        "(non-progressive) JPEG",
    )


def _not_png_or_jpeg(data: bytes, field: str) -> UnsupportedMediaType | InvalidInput:
    """415 naming the format when Pillow knows it (read from its header only, nothing
    decoded); 422 for bytes that are no image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            found = img.format
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        found = None
    if found is None:
        return InvalidInput(field, "is not a readable PNG or JPEG image (unknown format)")
    return UnsupportedMediaType(field, f"is a {found} file; send PNG or JPEG")
