from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import (
    AUTO_SIZE_LIMIT,
    IDX_DATASETS,
    DatasetError,
    IdxDataset,
    RemoteFile,
    download_verified,
    ensure_idx_files,
    load_array_file,
    load_image_folder,
    load_splits,
    read_idx,
    read_idx_pair,
    write_idx,
)

from .conftest import N_TEST, N_TRAIN, synthetic_digits, write_mnist_like


def test_idx_round_trip_gzip_and_raw(tmp_path: Path) -> None:
    images, labels = synthetic_digits(5, seed=0)
    for name in ("x.idx3-ubyte.gz", "x.idx3-ubyte"):
        write_idx(tmp_path / name, images)
        assert np.array_equal(read_idx(tmp_path / name), images)
    write_idx(tmp_path / "y.gz", labels)
    assert np.array_equal(read_idx(tmp_path / "y.gz"), labels)
    # The writer emits the official header: magic 2051, then N, rows, cols, big-endian.
    raw = (tmp_path / "x.idx3-ubyte").read_bytes()
    assert struct.unpack(">4i", raw[:16]) == (2051, 5, 28, 28)


def test_truncated_idx_is_a_clear_error(tmp_path: Path) -> None:
    images, _ = synthetic_digits(10, seed=0)
    write_idx(tmp_path / "raw.idx", images)
    data = (tmp_path / "raw.idx").read_bytes()
    (tmp_path / "cut.idx").write_bytes(data[:-100])
    with pytest.raises(DatasetError, match=r"shape \(10, 28, 28\).*truncated"):
        read_idx(tmp_path / "cut.idx")
    # A gzip stream cut in the middle fails as a corrupt file too, not with a raw EOFError.
    write_idx(tmp_path / "full.gz", images)
    gz = (tmp_path / "full.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        read_idx(tmp_path / "cut.gz")


def test_foreign_file_is_rejected_by_magic_number(tmp_path: Path) -> None:
    (tmp_path / "png.gz").write_bytes(gzip.compress(b"\x89PNG\r\n\x1a\n" + bytes(100)))
    with pytest.raises(DatasetError, match="magic number 0x89504e47"):
        read_idx(tmp_path / "png.gz")
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match="too short"):
        read_idx(tmp_path / "tiny")


def test_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    images, labels = synthetic_digits(10, seed=0)
    write_idx(tmp_path / "x.gz", images)
    write_idx(tmp_path / "y.gz", labels[:9])
    with pytest.raises(DatasetError, match=r"10 images but .* 9 labels"):
        read_idx_pair(tmp_path / "x.gz", tmp_path / "y.gz")
    write_idx(tmp_path / "small.gz", np.zeros((10, 14, 14), np.uint8))
    with pytest.raises(DatasetError, match="14x14, expected 28x28"):
        read_idx_pair(tmp_path / "small.gz", tmp_path / "y.gz")


def test_splits_from_a_data_dir(data_dir: Path) -> None:
    splits = load_splits("mnist", data_dir, val_size=50, download=False)
    assert splits.train.images.shape == (N_TRAIN - 50, 1, 28, 28)
    assert splits.val.images.shape == (50, 1, 28, 28)
    assert splits.test.images.shape == (N_TEST, 1, 28, 28)  # the test file, untouched
    assert splits.train.images.dtype == np.float32
    assert splits.train.images.min() >= 0.0 and splits.train.images.max() <= 1.0
    assert splits.label_names == tuple("0123456789")
    # The validation split is carved with a fixed seed: the same images every time.
    again = load_splits("mnist", data_dir, val_size=50, download=False)
    assert np.array_equal(again.val.images, splits.val.images)


def test_data_dir_from_environment(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_DATA_DIR", str(data_dir))
    assert len(load_splits("mnist", None, val_size=50, download=False).test) == N_TEST


def test_missing_files_offline_say_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_splits("fashion-mnist", tmp_path, download=False)
    message = str(info.value)
    for remote in IDX_DATASETS["fashion-mnist"].files.values():
        assert str(tmp_path / "fashion-mnist" / remote.name) in message
        assert remote.md5 in message
    assert "VAE_DATA_DIR" in message and "--data-dir" in message


def _mirror(tmp_path: Path) -> tuple[str, Path]:
    mirror = write_mnist_like(tmp_path / "mirror") / "mnist"
    return mirror.as_uri() + "/", mirror


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_keeps_a_file_whose_md5_matches(tmp_path: Path) -> None:
    url, mirror = _mirror(tmp_path)
    name = "t10k-labels-idx1-ubyte.gz"
    dest = tmp_path / "dl" / name
    download_verified(name, _md5(mirror / name), [url], dest)
    assert dest.read_bytes() == (mirror / name).read_bytes()


def test_download_with_wrong_checksum_leaves_nothing_behind(tmp_path: Path) -> None:
    url, _ = _mirror(tmp_path)
    name = "t10k-labels-idx1-ubyte.gz"
    dest = tmp_path / "dl" / name
    with pytest.raises(DatasetError, match=r"md5 [0-9a-f]{32} does not match the expected 0{32}"):
        download_verified(name, "0" * 32, [url], dest)
    assert not dest.parent.exists()  # neither the file, nor a .part, nor its folder


def test_download_falls_back_to_the_next_mirror(tmp_path: Path) -> None:
    url, mirror = _mirror(tmp_path)
    name = "t10k-labels-idx1-ubyte.gz"
    dead = (tmp_path / "nowhere").as_uri() + "/"
    dest = tmp_path / "dl" / name
    download_verified(name, _md5(mirror / name), [dead, url], dest)
    assert dest.exists()


def test_missing_dataset_files_are_downloaded_and_verified(tmp_path: Path) -> None:
    url, mirror = _mirror(tmp_path)
    official = IDX_DATASETS["mnist"]
    spec = IdxDataset(
        name="mnist",
        mirrors=(url,),
        files={k: RemoteFile(f.name, _md5(mirror / f.name)) for k, f in official.files.items()},
        label_names=official.label_names,
    )
    paths = ensure_idx_files(spec, tmp_path / "fresh")
    assert all(p.exists() for p in paths.values())
    # A bad checksum for one file: that download fails, and the error lists what to do.
    bad = IdxDataset(
        "mnist",
        (url,),
        {**spec.files, "test_labels": RemoteFile(spec.files["test_labels"].name, "f" * 32)},
        (),
    )
    with pytest.raises(DatasetError, match=r"does not match the expected f{32}") as info:
        ensure_idx_files(bad, tmp_path / "other")
    # The three files that verified are kept, so a second try fetches only the fourth.
    assert "3 verified file(s) were kept" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "other" / "mnist").iterdir()) == sorted(
        f.name for k, f in spec.files.items() if k != "test_labels"
    )


def test_a_failed_download_leaves_no_folder_and_says_where_files_come_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried: list[str] = []

    def offline(url: str, timeout: float) -> None:
        tried.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetError) as info:
        ensure_idx_files(IDX_DATASETS["mnist"], data_dir)
    assert not data_dir.exists()
    message = str(info.value)
    mirrors = IDX_DATASETS["mnist"].mirrors
    # One file tried on every mirror, then no more: offline the others would fail the same way.
    assert tried == [m + "train-images-idx3-ubyte.gz" for m in mirrors]
    assert "Temporary failure in name resolution" in message and "nothing was written" in message
    for remote in IDX_DATASETS["mnist"].files.values():
        line = next(line for line in message.splitlines() if remote.name in line and "<-" in line)
        assert str(data_dir / "mnist" / remote.name) in line
        assert mirrors[0] + remote.name in line and remote.md5 in line
    assert "still gzip-compressed" in message and "--data-dir" in message


def test_image_folder_grayscale_resize_and_labels(tmp_path: Path) -> None:
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            img = Image.new("RGB", (56, 40), color=(255, 255, 255) if label == "dog" else (0, 0, 0))
            img.save(tmp_path / label / f"{i}.png" if i else tmp_path / label / f"{i}.jpg")
    images, labels, names = load_image_folder(tmp_path, image_size=(28, 28))
    assert images.shape == (6, 28, 28) and images.dtype == np.float32
    assert names == ("cat", "dog")
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert images[labels == 1].min() > 0.99 and images[labels == 0].max() < 0.01
    inverted, _, _ = load_image_folder(tmp_path, invert=True, image_size=(28, 28))
    assert inverted[labels == 1].max() < 0.01


def test_image_folder_splits(tmp_path: Path) -> None:
    for i in range(40):
        Image.fromarray(np.full((28, 28), i * 6, np.uint8)).save(tmp_path / f"{i:02}.png")
    splits = load_splits(str(tmp_path), val_size=5000)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 40
    assert len(splits.test) == 4 and len(splits.val) >= 1
    assert (splits.train.labels == -1).all()


def test_array_files(tmp_path: Path) -> None:
    images, labels = synthetic_digits(20, seed=3)
    np.save(tmp_path / "u8.npy", images.reshape(20, 784))
    x, y = load_array_file(tmp_path / "u8.npy")
    assert x.shape == (20, 28, 28) and np.allclose(x * 255, images) and (y == -1).all()
    np.savez(tmp_path / "f.npz", images=images[:, None] / 255.0, labels=labels)
    x, y = load_array_file(tmp_path / "f.npz")
    assert x.shape == (20, 28, 28) and np.array_equal(y, labels)
    np.save(tmp_path / "bad.npy", images.astype(np.float32))  # floats 0-255: not scaled
    with pytest.raises(DatasetError, match=r"in \[0, 1\]"):
        load_array_file(tmp_path / "bad.npy")
    np.save(tmp_path / "shape.npy", np.zeros((3, 10, 10, 2), np.uint8))
    with pytest.raises(DatasetError, match="expected \\(N, H, W\\)"):
        load_array_file(tmp_path / "shape.npy")


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(DatasetError, match="mnist, fashion-mnist"):
        load_splits("cifar10")


def _colour_pngs(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    """n RGB PNGs (height, width) of `size`: a red, green or blue square on dark noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = rng.integers(0, 30, (*size, 3), dtype=np.uint8)
        pixels[2:8, 3:9, i % 3] = 230
        Image.fromarray(pixels).save(folder / f"{i:03}.png")


def test_a_colour_folder_trains_as_colour_at_its_own_size(tmp_path: Path) -> None:
    _colour_pngs(tmp_path, 12, (20, 24))
    images, _, _ = load_image_folder(tmp_path)
    assert images.shape == (12, 20, 24, 3) and images.dtype == np.float32
    with Image.open(tmp_path / "001.png") as first:
        assert np.allclose(images[1], np.asarray(first) / 255.0)
    splits = load_splits(str(tmp_path))
    assert splits.image_shape == (3, 20, 24)
    assert splits.train.images.shape[1:] == (3, 20, 24) and splits.train.images.flags.c_contiguous
    # --channels 1: PIL's grayscale of each image; --image-size: bilinear resize.
    gray, _, _ = load_image_folder(tmp_path, image_size=(10, 12), channels=1)
    with Image.open(tmp_path / "001.png") as first:
        expected = first.convert("L").resize((12, 10), Image.Resampling.BILINEAR)
    assert gray.shape == (12, 10, 12) and np.allclose(gray[1], np.asarray(expected) / 255.0)


def test_gray_pictures_saved_as_rgb_stay_grayscale(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(4):
        value = rng.integers(0, 256, (16, 16), dtype=np.uint8)
        Image.fromarray(np.stack([value] * 3, axis=-1)).save(tmp_path / f"{i}.png")
    auto, _, _ = load_image_folder(tmp_path, image_size=(9, 11))
    as_gray, _, _ = load_image_folder(tmp_path, image_size=(9, 11), channels=1)
    assert auto.shape == (4, 9, 11) and np.array_equal(auto, as_gray)


def test_a_gray_folder_with_three_channels_is_converted(tmp_path: Path) -> None:
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    images, _, _ = load_image_folder(tmp_path, channels=3)
    assert images.shape == (3, 8, 8, 3)
    assert np.allclose(images[2], 80 / 255.0)


def test_a_folder_of_mixed_sizes_needs_an_image_size(tmp_path: Path) -> None:
    _colour_pngs(tmp_path, 3, (20, 24))
    _colour_pngs(tmp_path / "more", 2, (32, 32), seed=1)
    with pytest.raises(
        DatasetError,
        match=r"different sizes: 20x24 \(3 images\), 32x32 "
        r"\(2 images\); pass --image-size",
    ):
        load_image_folder(tmp_path)
    images, _, names = load_image_folder(tmp_path, image_size=(16, 16))
    assert images.shape == (5, 16, 16, 3) and names == ("more",)


def test_large_images_need_an_image_size(tmp_path: Path) -> None:
    side = AUTO_SIZE_LIMIT + 1
    Image.new("RGB", (side, 8)).save(tmp_path / "wide.png")
    with pytest.raises(DatasetError, match=f"8x{side}.*pass --image-size"):
        load_image_folder(tmp_path)
    np.save(tmp_path / "wide.npy", np.zeros((2, 8, side), np.uint8))
    with pytest.raises(DatasetError, match="pass --image-size"):
        load_array_file(tmp_path / "wide.npy")


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_colour_arrays(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, (10, 12, 14, 3), dtype=np.uint8)
    stored = raw if dtype == "uint8" else raw.astype(np.float32) / 255.0
    np.savez(tmp_path / "c.npz", x=stored, y=np.arange(10) % 2)
    images, _ = load_array_file(tmp_path / "c.npz")
    assert images.shape == (10, 12, 14, 3) and np.allclose(images, raw / 255.0, atol=1e-6)
    splits = load_splits(str(tmp_path / "c.npz"))
    assert splits.image_shape == (3, 12, 14) and splits.label_names == ("0", "1")
    resized, _ = load_array_file(tmp_path / "c.npz", image_size=(6, 7))
    expected = Image.fromarray(raw[0]).resize((7, 6), Image.Resampling.BILINEAR)
    assert resized.shape == (10, 6, 7, 3)
    assert np.allclose(resized[0], np.asarray(expected) / 255.0, atol=1 / 255 + 1e-6)
    gray, _ = load_array_file(tmp_path / "c.npz", channels=1)
    assert gray.shape == (10, 12, 14)
    luma = raw[0].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    assert np.allclose(gray[0], luma, atol=1e-5)


def test_grayscale_arrays_of_any_size(tmp_path: Path) -> None:
    np.save(tmp_path / "g.npy", np.zeros((6, 64, 64, 1), np.uint8))
    assert load_splits(str(tmp_path / "g.npy")).image_shape == (1, 64, 64)
    as_colour, _ = load_array_file(tmp_path / "g.npy", channels=3)
    assert as_colour.shape == (6, 64, 64, 3)


def test_idx_datasets_resize_but_stay_grayscale(data_dir: Path) -> None:
    splits = load_splits("mnist", data_dir, val_size=50, download=False, image_size=(32, 32))
    assert splits.image_shape == (1, 32, 32) and len(splits.test) == N_TEST
    original = load_splits("mnist", data_dir, val_size=50, download=False).test.images[0, 0]
    expected = Image.fromarray(np.round(original * 255).astype(np.uint8)).resize(
        (32, 32), Image.Resampling.BILINEAR
    )
    assert np.allclose(splits.test.images[0, 0], np.asarray(expected) / 255.0)
    with pytest.raises(DatasetError, match="mnist is grayscale"):
        load_splits("mnist", data_dir, val_size=50, download=False, channels=3)
