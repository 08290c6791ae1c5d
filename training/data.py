"""Datasets: IDX files (MNIST, Fashion-MNIST), a folder of images, or a NumPy array.

Every dataset comes out as float32 images of shape (N, C, H, W) with pixels in [0, 1] (C = 1 for
grayscale, 3 for RGB) and int64 labels (-1 where there are none). Size and colour are the data's
own unless asked for (`image_size`, `channels`): images are then resized with PIL's bilinear
filter (which widens with the shrink factor, so shrinking averages rather than skips pixels) and
converted as PIL converts (mode 'L' for grayscale, 'RGB' for colour: a grayscale image's value
copied into the three channels). The preprocessing for a user's own images is
`preprocess_image`, and the manifest describes it (`preprocessing`) so the service can apply the
same steps.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

IMAGE_SIZE = 28  # the IDX datasets' side
# Without --image-size, a folder's or array's images train at their own size up to this side;
# larger ones must be given a size (the model, and the data in memory, grow with the pixels).
AUTO_SIZE_LIMIT = 256
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
DATA_DIR_ENV = "VAE_DATA_DIR"
DEFAULT_DATA_DIR = Path("data")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

RESAMPLE = "bilinear"
COLOR = {1: "grayscale (PIL mode 'L')", 3: "RGB (PIL mode 'RGB')"}
# What the IDX datasets' images show; a user's data has no known description (its background,
# judged from the images, is the manifest's `input.background`).
FOREGROUND = {
    "mnist": "bright strokes on a dark background, as in MNIST",
    "fashion-mnist": "bright garments on a dark background, as in Fashion-MNIST",
}


def preprocessing(
    dataset: str, image_shape: tuple[int, int, int], invert: bool = False
) -> dict[str, object]:
    """How an image becomes the input of a model trained on `dataset` at `image_shape`: the
    manifest carries this so the service converts uploads the same way."""
    channels, height, width = image_shape
    steps: dict[str, object] = {
        "color": COLOR[channels],
        "resize": [height, width],
        "resample": RESAMPLE,
        "scale": "pixel / 255",
        "invert": invert,
    }
    if dataset in FOREGROUND:
        steps["foreground"] = FOREGROUND[dataset]
    return steps


# The preprocessing of the default model (MNIST at 28 x 28), as before issue #17.
PREPROCESSING = preprocessing("mnist", (1, IMAGE_SIZE, IMAGE_SIZE))


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or of the wrong shape; the message says what to do."""


@dataclass(frozen=True)
class RemoteFile:
    name: str
    md5: str


@dataclass(frozen=True)
class IdxDataset:
    """One of the IDX datasets: where to fetch it and what its files must hash to."""

    name: str
    mirrors: tuple[str, ...]
    files: dict[str, RemoteFile]
    label_names: tuple[str, ...]


IDX_DATASETS: dict[str, IdxDataset] = {
    "mnist": IdxDataset(
        name="mnist",
        # yann.lecun.com often refuses downloads now; the S3 copy is the one torchvision uses.
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        files={
            "train_images": RemoteFile(
                "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"
            ),
            "train_labels": RemoteFile(
                "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"
            ),
            "test_images": RemoteFile(
                "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"
            ),
            "test_labels": RemoteFile(
                "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"
            ),
        },
        label_names=tuple(str(d) for d in range(10)),
    ),
    "fashion-mnist": IdxDataset(
        name="fashion-mnist",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files={
            "train_images": RemoteFile(
                "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
            ),
            "train_labels": RemoteFile(
                "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"
            ),
            "test_images": RemoteFile(
                "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"
            ),
            "test_labels": RemoteFile(
                "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"
            ),
        },
        label_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
}


# ---------------------------------------------------------------------------------------------
# IDX format (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS"): big-endian int32 magic and
# dimension sizes, then unsigned bytes.


def read_idx(path: Path) -> NDArray[np.uint8]:
    """Read a gzip-compressed or raw IDX file of unsigned bytes into an array of its shape."""
    path = Path(path)
    try:
        with path.open("rb") as probe:
            gzipped = probe.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip raises EOFError on a cut-off stream
        raise DatasetError(
            f"{path}: cannot read ({exc}); the file is corrupt or truncated"
        ) from exc
    if len(raw) < 4:
        raise DatasetError(f"{path}: only {len(raw)} bytes, too short to be an IDX file")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        raise DatasetError(
            f"{path}: magic number {magic:#010x} is not an IDX file of unsigned bytes "
            f"(expected {IDX_IMAGES_MAGIC:#010x} for images or {IDX_LABELS_MAGIC:#010x} for labels)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: header truncated ({len(raw)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: header announces shape {tuple(shape)} = {expected} bytes of data, "
            f"but the file holds {len(raw) - header}; it is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: Path, array: NDArray[np.uint8]) -> None:
    """Write an array of unsigned bytes as an IDX file (gzip when the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim
    payload = struct.pack(f">i{array.ndim}i", magic, *array.shape) + array.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def read_idx_pair(
    images_path: Path, labels_path: Path
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DatasetError(
            f"{images_path}: expected 3 dimensions (N, rows, cols), got {images.shape}"
        )
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetError(
            f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    if labels.ndim != 1:
        raise DatasetError(f"{labels_path}: expected 1 dimension (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    return images, labels


# ---------------------------------------------------------------------------------------------
# Download with checksum verification


def download_verified(
    name: str, md5: str, mirrors: Sequence[str], dest: Path, timeout: float = 30.0
) -> Path:
    """Fetch `name` from the first mirror that serves it with the right md5, into `dest`.

    The download goes to a temporary file elsewhere and reaches `dest` only once its md5 matches,
    so a failed, broken or tampered download leaves neither a file nor a new folder behind.
    """
    errors = []
    for mirror in mirrors:
        url = mirror + name
        try:
            with tempfile.TemporaryFile() as fetched:
                digest = hashlib.md5(usedforsecurity=False)
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        digest.update(block)
                        fetched.write(block)
                if digest.hexdigest() != md5:
                    errors.append(
                        f"{url}: md5 {digest.hexdigest()} does not match the expected {md5}"
                    )
                    continue
                fetched.seek(0)
                _move_into_place(fetched, dest)
                return dest
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            errors.append(f"{url}: {exc}")
    raise DatasetError(f"could not download {name}:\n  " + "\n  ".join(errors))


def _move_into_place(source: IO[bytes], dest: Path) -> None:
    """Copy `source` to `dest` through a temporary name in its folder, creating the folder; on
    failure, remove the folders this call created."""
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out)
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def ensure_idx_files(spec: IdxDataset, data_dir: Path, download: bool = True) -> dict[str, Path]:
    """Paths of the dataset's four files under data_dir/<name>/, downloading missing ones.

    When a file cannot be fetched the others are not tried (offline, each would fail the same
    way); the error says where each file comes from and where to put it by hand.
    """
    folder = Path(data_dir) / spec.name
    paths = {key: folder / f.name for key, f in spec.files.items()}
    missing = [key for key, path in paths.items() if not path.exists()]
    if not missing:
        return paths
    failure = ""
    if download:
        for key in missing:
            remote = spec.files[key]
            try:
                download_verified(remote.name, remote.md5, spec.mirrors, paths[key])
            except DatasetError as exc:
                failure = str(exc)
                break
    still_missing = [key for key in missing if not paths[key].exists()]
    if not still_missing:
        return paths
    mirror = spec.mirrors[0]
    listing = "\n".join(
        f"  {paths[key]}  <- {mirror}{spec.files[key].name}  (md5 {spec.files[key].md5})"
        for key in still_missing
    )
    if failure:
        kept = len(missing) - len(still_missing)
        written = f"{kept} verified file(s) were kept" if kept else "nothing was written"
        reason = f"the download failed ({written}).\n{failure}\n"
    else:
        reason = "downloading was not allowed here.\n"
    others = f" (or the mirror {', '.join(spec.mirrors[1:])})" if len(spec.mirrors) > 1 else ""
    raise DatasetError(
        f"{spec.name}: {len(still_missing)} of {len(paths)} file(s) missing from {folder} and "
        f"{reason}To place them by hand, download each file from {mirror}{others} and save it, "
        f"still gzip-compressed, under the name shown:\n{listing}\n"
        f"Or pass --data-dir (or set {DATA_DIR_ENV}) to a folder that already holds "
        f"{spec.name}/ with these files."
    )


# ---------------------------------------------------------------------------------------------
# A user's own images


def preprocess_image(
    image: Image.Image,
    invert: bool = False,
    size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE),
    channels: int = 1,
) -> NDArray[np.float32]:
    """PIL image -> float32 in [0, 1], (H, W) grayscale or (H, W, 3) RGB: converted to mode 'L'
    or 'RGB', resized bilinearly to `size` (height, width), pixel / 255, inverted if asked."""
    converted = _convert(image, channels)
    height, width = size
    if converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(converted, dtype=np.float32) / 255.0
    return 1.0 - pixels if invert else pixels


def _convert(image: Image.Image, channels: int) -> Image.Image:
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)


def _folder_size(files: list[Path], folder: Path) -> tuple[int, int]:
    """The one size of a folder's images (height, width), read from their headers; refused, with
    what to pass, when they differ or are too large to take as they are."""
    counts: dict[tuple[int, int], int] = {}
    for path in files:
        try:
            with Image.open(path) as img:
                width, height = img.size
        except OSError as exc:
            raise DatasetError(f"{path}: not a readable image ({exc})") from exc
        counts[(height, width)] = counts.get((height, width), 0) + 1
    if len(counts) > 1:
        common = sorted(counts.items(), key=lambda item: -item[1])
        listing = ", ".join(f"{h}x{w} ({n} images)" for (h, w), n in common[:5])
        more = f" and {len(common) - 5} other sizes" if len(common) > 5 else ""
        raise DatasetError(
            f"{folder}: the images have different sizes: {listing}{more}; pass --image-size "
            "H[,W] (e.g. --image-size 64) to resize them all to one"
        )
    ((height, width),) = counts
    _check_auto_size(height, width, str(folder))
    return height, width


def _check_auto_size(height: int, width: int, where: str) -> None:
    if max(height, width) > AUTO_SIZE_LIMIT:
        raise DatasetError(
            f"{where}: the images are {height}x{width}; above {AUTO_SIZE_LIMIT} pixels a side "
            "they are not taken at their own size: pass --image-size H[,W] (e.g. 64 or 128) to "
            "resize them"
        )


def load_image_folder(
    folder: Path,
    invert: bool = False,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.int64], tuple[str, ...]]:
    """Images from a folder: (N, H, W) grayscale or (N, H, W, 3) RGB float32 in [0, 1].
    Sub-folders name the labels (as torchvision's ImageFolder); images directly in the folder
    are unlabelled (-1).

    `image_size` (height, width), default the images' own (which must then be one size); every
    image is resized to it. `channels` 1 or 3; by default 3 when any image holds colour (a pixel
    whose red, green and blue differ), else 1, so RGB files of gray pictures stay grayscale.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} images found")
    size = image_size or _folder_size(files, folder)
    class_names = sorted({p.parent.name for p in files if p.parent != folder})
    class_index = {name: i for i, name in enumerate(class_names)}
    # Without a channel count, decode as RGB and decide from the pixels: a gray image's RGB
    # channels are its 'L' values exactly (PIL's L = (299 R + 587 G + 114 B) / 1000), and
    # resizing treats each channel alike, so taking one channel gives what mode 'L' gives.
    decode_channels = channels or 3
    shape = (len(files), *size) + ((3,) if decode_channels == 3 else ())
    images = np.empty(shape, dtype=np.float32)
    labels = np.full(len(files), -1, dtype=np.int64)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                images[i] = preprocess_image(img, invert, size, decode_channels)
        except OSError as exc:
            raise DatasetError(f"{path}: not a readable image ({exc})") from exc
        if path.parent != folder:
            labels[i] = class_index[path.parent.name]
    if channels is None and not _holds_colour(images):
        images = np.ascontiguousarray(images[..., 0])
    return images, labels, tuple(class_names)


def _holds_colour(images: NDArray[np.float32]) -> bool:
    """Whether any pixel of (N, H, W, 3) images has red, green and blue not all equal."""
    return bool(
        np.any(images[..., 0] != images[..., 1]) or np.any(images[..., 1] != images[..., 2])
    )


# PIL's grayscale conversion (ITU-R 601-2 luma), applied to arrays of colour images.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def convert_channels(images: NDArray[np.float32], channels: int) -> NDArray[np.float32]:
    """(N, H, W) or (N, H, W, 3) images as `channels`: colour to gray by PIL's luma weights,
    gray to colour by copying the value into red, green and blue (as PIL's 'RGB' does)."""
    have = 1 if images.ndim == 3 else 3
    if have == channels:
        return images
    if channels == 1:
        return np.asarray(images @ LUMA, dtype=np.float32)
    return np.repeat(images[..., None], 3, axis=-1)


def resize_images(images: NDArray[Any], size: tuple[int, int]) -> NDArray[Any]:
    """(N, H, W) or (N, H, W, C) images, uint8 or float, resized to `size` (height, width) with
    PIL's bilinear filter: 8-bit images as PIL images (as the service resizes uploads), floats
    one channel at a time in PIL's 32-bit float mode."""
    height, width = size
    if images.shape[1:3] == (height, width):
        return images
    out = np.empty((len(images), height, width, *images.shape[3:]), dtype=images.dtype)
    bilinear = Image.Resampling.BILINEAR
    for i, image in enumerate(images):
        if images.dtype == np.uint8:
            out[i] = np.asarray(Image.fromarray(image).resize((width, height), bilinear))
        elif image.ndim == 2:
            out[i] = np.asarray(Image.fromarray(image, mode="F").resize((width, height), bilinear))
        else:
            for c in range(image.shape[2]):
                plane = Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F")
                out[i, ..., c] = np.asarray(plane.resize((width, height), bilinear))
    return out


ARRAY_SHAPES = "(N, H, W), (N, H, W, 1), (N, H, W, 3), (N, 1, H, W) or (N, 784)"


def load_array_file(
    path: Path, image_size: tuple[int, int] | None = None, channels: int | None = None
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Images from .npy or from .npz with `x`/`images` and optional `y`/`labels`, of shape
    (N, H, W) (grayscale), (N, H, W, 1) or (N, H, W, 3) (RGB, as image libraries hold them);
    (N, 1, H, W) and (N, 784) (28 x 28) are also taken. uint8 arrays are scaled by 1/255; floats
    must already be in [0, 1]. Returns (N, H, W) or (N, H, W, 3) float32 in [0, 1], resized to
    `image_size` and converted to `channels` when those are given."""
    path = Path(path)
    labels: NDArray[np.int64] | None = None
    if path.suffix == ".npz":
        with np.load(path) as archive:
            key = next((k for k in ("x", "images") if k in archive), None)
            if key is None:
                raise DatasetError(
                    f"{path}: no array named 'x' or 'images' (found {sorted(archive.files)})"
                )
            raw = archive[key]
            label_key = next((k for k in ("y", "labels") if k in archive), None)
            if label_key is not None:
                labels = archive[label_key].astype(np.int64)
    else:
        raw = np.load(path)
    if raw.ndim == 2 and raw.shape[1] == IMAGE_SIZE * IMAGE_SIZE:
        raw = raw.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    if raw.ndim == 4 and raw.shape[1] == 1 and raw.shape[3] not in (1, 3):
        raw = raw[:, 0]
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if not (raw.ndim == 3 or (raw.ndim == 4 and raw.shape[3] == 3)) or min(raw.shape[1:3]) < 1:
        raise DatasetError(
            f"{path}: images have shape {raw.shape}; expected {ARRAY_SHAPES} (a channels-first "
            "colour array (N, 3, H, W) becomes (N, H, W, 3) with np.moveaxis(x, 1, -1))"
        )
    if raw.dtype != np.uint8:
        raw = raw.astype(np.float32)
        if not np.isfinite(raw).all() or raw.min() < 0.0 or raw.max() > 1.0:
            raise DatasetError(
                f"{path}: float pixels must be finite and in [0, 1] "
                f"(found [{np.nanmin(raw):.3g}, {np.nanmax(raw):.3g}]); "
                "store uint8 0-255 or scale them first"
            )
    if image_size is None:
        _check_auto_size(raw.shape[1], raw.shape[2], str(path))
    else:
        raw = resize_images(raw, image_size)  # before scaling: 8-bit images resize as PIL's
    images = raw.astype(np.float32) / 255.0 if raw.dtype == np.uint8 else raw
    if channels is not None:
        images = convert_channels(images, channels)
    if labels is None:
        labels = np.full(len(images), -1, dtype=np.int64)
    elif labels.shape != (len(images),):
        raise DatasetError(f"{path}: {len(images)} images but labels of shape {labels.shape}")
    return images, labels


# ---------------------------------------------------------------------------------------------
# Splits


@dataclass
class Split:
    images: NDArray[np.float32]  # (N, C, H, W) in [0, 1]
    labels: NDArray[np.int64]  # (N,), -1 where unknown

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Splits:
    name: str
    train: Split
    val: Split
    test: Split
    label_names: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image."""
        channels, height, width = self.train.images.shape[1:]
        return channels, height, width


SPLIT_SEED = 0  # fixed, so runs with different training seeds share one validation set


def channels_first(images: NDArray[np.float32]) -> NDArray[np.float32]:
    """(N, H, W) or (N, H, W, C) images as the (N, C, H, W) float32 the model takes."""
    nchw = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(nchw, dtype=np.float32)


def _split(images: NDArray[np.float32], labels: NDArray[np.int64]) -> Split:
    return Split(images, labels.astype(np.int64))


def carve(
    images: NDArray[np.float32], labels: NDArray[np.int64], size: int, seed: int = SPLIT_SEED
) -> tuple[Split, Split]:
    """Split off `size` random examples of (N, C, H, W) images: (rest, carved)."""
    if not 0 <= size < len(images):
        raise DatasetError(f"cannot carve {size} examples out of {len(images)}")
    order = np.random.default_rng(seed).permutation(len(images))
    rest, carved = order[: len(images) - size], order[len(images) - size :]
    return _split(images[rest], labels[rest]), _split(images[carved], labels[carved])


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR))


def _idx_images(
    images: NDArray[np.uint8], image_size: tuple[int, int] | None
) -> NDArray[np.float32]:
    """IDX images (N, 28, 28) uint8 -> (N, 1, H, W) float32 in [0, 1], resized as PIL would."""
    if image_size is not None:
        images = resize_images(images, image_size)
    return channels_first(images.astype(np.float32) / 255.0)


def load_splits(
    dataset: str,
    data_dir: str | Path | None = None,
    val_size: int = 5000,
    test_fraction: float = 0.1,
    invert: bool = False,
    download: bool = True,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> Splits:
    """Train/validation/test splits of a named dataset or of a user's folder or array file, as
    (N, C, H, W) images of `image_size` (height, width) and `channels` (default: the data's own;
    see `load_image_folder` and `load_array_file`).

    The validation set is carved out of the training set; the test set is the dataset's own
    (or, for a user's data, a fixed fraction carved out first) and is used only by evaluation.
    """
    if dataset in IDX_DATASETS:
        if channels == 3:
            raise DatasetError(
                f"{dataset} is grayscale; three channels would only hold three copies of each "
                "image. Leave --channels out (or pass 1), or train on colour data: a folder of "
                "colour images or an .npy/.npz of N x H x W x 3"
            )
        spec = IDX_DATASETS[dataset]
        paths = ensure_idx_files(spec, resolve_data_dir(data_dir), download=download)
        train_x, train_y = read_idx_pair(paths["train_images"], paths["train_labels"])
        test_x, test_y = read_idx_pair(paths["test_images"], paths["test_labels"])
        train, val = carve(_idx_images(train_x, image_size), train_y.astype(np.int64), val_size)
        test = _split(_idx_images(test_x, image_size), test_y.astype(np.int64))
        return Splits(dataset, train, val, test, spec.label_names)

    path = Path(dataset)
    if path.is_dir():
        images, labels, names = load_image_folder(path, invert, image_size, channels)
    elif path.suffix in (".npy", ".npz") and path.is_file():
        images, labels = load_array_file(path, image_size, channels)
        names = tuple(str(i) for i in range(int(labels.max()) + 1)) if labels.max() >= 0 else ()
    else:
        known = ", ".join(IDX_DATASETS)
        raise DatasetError(
            f"dataset {dataset!r} is neither a known name ({known}) nor an existing folder of "
            "images or .npy/.npz file"
        )
    test_size = max(1, round(len(images) * test_fraction))
    rest, test = carve(channels_first(images), labels, test_size)
    val_size = min(val_size, max(1, len(rest) // 10))
    train, val = carve(rest.images, rest.labels, val_size)
    return Splits(path.name, train, val, test, names)
