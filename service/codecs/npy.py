""".npy request bodies in, .npy and .npz answers out."""

from __future__ import annotations

import functools
import io
import math
import struct
import zlib
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.codecs.images import as_hwc, check_pixels, image_text, shape_hint
from service.errors import BadRequest, InvalidInput

Array = NDArray[np.float32]
NPY = "application/x-npy"
NPZ = "application/x-npz"
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"

# numpy's own bound on the header it reads; also bounds what the header cache keeps.
NPY_HEADER_MAX = 10_000


def _npy_header_bytes(body: bytes) -> bytes:
    """The magic, version and header of a .npy body: everything before the data. Its length
    is a little-endian uint16 at bytes 8-9 in version 1.0, a uint32 at 8-11 in 2.0 and 3.0."""
    if body[6:7] == b"\x01":
        end = 10 + int.from_bytes(body[8:10], "little")
    else:
        end = 12 + int.from_bytes(body[8:12], "little")
    return body[: min(end, NPY_HEADER_MAX)]


@functools.lru_cache(maxsize=256)
def _npy_header(start: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """Shape, Fortran order, dtype and data offset from the first bytes of a .npy body. numpy
    reads the header with ast.literal_eval, slow next to a one-image request, and a client sends
    the same header again and again, so it is cached on those bytes."""
    stream = io.BytesIO(start)
    version = np.lib.format.read_magic(stream)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran_order, dtype = read_header(stream)
    return shape, fortran_order, dtype, stream.tell()


def read_npy(body: bytes, field: str, what: str = "values") -> NDArray[Any]:
    """The array of a .npy body, read in place; `what` names its rows in the message for an
    empty one ("images", "latent vectors")."""
    if body.startswith(ZIP_MAGIC):
        raise BadRequest(field, "send one .npy array, not an .npz archive")
    if not body.startswith(NPY_MAGIC):  # numpy would call anything else pickled data
        raise BadRequest(
            field,
            "the body is not a readable .npy array (it does not start with \\x93NUMPY); write it "
            "with np.save",
        )
    try:
        shape, fortran_order, dtype, offset = _npy_header(_npy_header_bytes(body))
    except (ValueError, OSError, EOFError) as exc:
        raise BadRequest(
            field, f"the body is not a readable .npy array ({exc}); write it with np.save"
        ) from exc
    if dtype.hasobject:
        raise BadRequest(
            field,
            "the body is not a readable .npy array (object arrays are not accepted; "
            "send float32 or uint8)",
        )
    count = _checked_count(shape, dtype, len(body) - offset, field)
    if count == 0:  # before numpy: an empty array may still declare (2**62, 0)
        raise InvalidInput(field, f"the array holds no {what} (shape {shape}); send at least one")
    # Not np.load: it allocates the whole array the header declares before reading any data,
    # so a 100-byte body claiming (10**12, 784) was a MemoryError, a 500. The data is read in
    # place instead (read-only), once its size matches the header.
    data = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return data.reshape(shape[::-1]).T if fortran_order else data.reshape(shape)


def _checked_count(
    shape: tuple[Any, ...], dtype: np.dtype[Any], data_bytes: int, field: str
) -> int:
    """The number of values the header's shape declares, checked against the data that
    follows it. numpy's header reader lets booleans and negative numbers through as dimensions,
    and its int64 arithmetic wraps, so the product is taken here in Python integers. With the
    data's size matching it, no dimension of a non-empty array exceeds the body's length."""
    if not all(type(d) is int and d >= 0 for d in shape):
        raise BadRequest(
            field,
            f"the .npy header's shape {shape} is not valid: dimensions are whole numbers, 0 or "
            "more; write the array with np.save",
        )
    count = math.prod(shape)
    if count * dtype.itemsize != data_bytes:
        raise BadRequest(
            field,
            f"the body is not a readable .npy array (the header declares {dtype} {shape} but "
            f"{data_bytes} bytes of data follow it); send the whole array, as np.save writes it",
        )
    return count


def images_from_npy(array: NDArray[Any], hwc: tuple[int, int, int]) -> Array:
    """A .npy batch -> float32 (N, H, W, C) in [0, 1]: (N, H, W, C) or (N, H*W*C) in HWC
    order, for grayscale also (N, H, W) and (N, 1, H, W); float32 in [0, 1] or uint8 0-255."""
    h, w, c = hwc
    if array.dtype not in (np.uint8, np.float32):
        raise InvalidInput("images", f"dtype {array.dtype}: send float32 in [0, 1] or uint8 0-255")
    images = as_hwc(array, hwc) if array.ndim >= 1 else None
    if images is None:
        taken = f"(N, {h}, {w}, {c}) or (N, {h * w * c})"
        if c == 1:
            taken = f"(N, {h}, {w}), (N, {h * w}), (N, {h}, {w}, 1) or (N, 1, {h}, {w})"
        raise InvalidInput(
            "images",
            f"array of shape {array.shape}; expected {taken}: N images of "
            f"{image_text(hwc)}{shape_hint(array.shape[1:], hwc, batch=True)}; one image: "
            "add the batch axis, x[None]",
        )
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    return check_pixels(np.ascontiguousarray(images), "images")


# --- answers ------------------------------------------------------------------------------------


def npy_bytes(array: Array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def stored_zip(members: dict[str, bytes]) -> bytes:
    """A zip archive of uncompressed members, as np.savez writes it and np.load reads it.

    Written here rather than with zipfile (which np.savez uses), whose overhead is large next to
    the two small arrays of a one-image /encode answer. The layout (PKWARE APPNOTE 4.3): per
    member a local header, then its bytes; then one central directory record per member; then
    the end record. Times are the DOS epoch, 1980-01-01.
    """
    out, directory = bytearray(), bytearray()
    for name, data in members.items():
        encoded, crc, size, offset = name.encode(), zlib.crc32(data), len(data), len(out)
        # signature, version needed (2.0), flags, method (0: stored), time, date, crc, sizes,
        # name length, extra length
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, crc, size, size, len(encoded), 0
        )
        out += encoded + data
        # as above, after "version made by"; then comment length, disk, attributes, offset
        directory += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50, 20, 20, 0, 0, 0, 0x21, crc, size, size, len(encoded), 0, 0, 0, 0, 0, offset,
        )  # fmt: skip
        directory += encoded
    count, start = len(members), len(out)
    out += directory
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory), start, 0)
    return bytes(out)


# Kept as they are in an .npz answer (/score's verdicts and float64 scores); others are float32.
KEPT_DTYPES = (np.dtype(np.bool_), np.dtype(np.float64))


def npz_bytes(arrays: dict[str, NDArray[Any]]) -> bytes:
    """Arrays as an .npz archive (uncompressed), as np.savez writes it: float32, except bool
    and float64 arrays, which keep their dtype."""
    return stored_zip(
        {
            f"{name}.npy": _kept_npy_bytes(array)
            if array.dtype in KEPT_DTYPES
            else npy_bytes(array)
            for name, array in arrays.items()
        }
    )


def _kept_npy_bytes(array: NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
