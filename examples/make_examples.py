"""Regenerate the sample images in examples/ from the MNIST and Fashion-MNIST test sets.

    python examples/make_examples.py --data-dir DIR

DIR holds mnist/ and fashion-mnist/ with the official gzip IDX files (downloaded there first
when missing and the machine is online, as `python -m training train` does). The output is the
same on every run: fixed test images and a fixed random seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter

from training.data import IDX_DATASETS, ensure_idx_files, read_idx_pair, resolve_data_dir

HERE = Path(__file__).resolve().parent

# (dataset, index in its test set, file name); the label is checked so a wrong file is caught.
DIGIT = ("mnist", 0, 7, "digit-7.png")
FASHION = ("fashion-mnist", 0, 9, "fashion-ankle-boot.png")
PHOTO = ("mnist", 1, 2, "photo-digit-2.jpg")
PHOTO_SIZE = 200
SEED = 14


def test_image(dataset: str, index: int, label: int, data_dir: Path) -> NDArray[np.uint8]:
    paths = ensure_idx_files(IDX_DATASETS[dataset], data_dir)
    images, labels = read_idx_pair(paths["test_images"], paths["test_labels"])
    if int(labels[index]) != label:
        raise SystemExit(f"{dataset} test image {index} is a {labels[index]}, expected {label}")
    return images[index]


def photo_of(digit: NDArray[np.uint8], size: int, seed: int) -> Image.Image:
    """A phone-photo look: dark ink on slightly uneven, warm paper, soft focus, sensor noise."""
    rng = np.random.default_rng(seed)
    # Bicubic upscaling smooths MNIST's 28 px steps into strokes; the digit fills ~80 % of the
    # frame, a little off-centre, as a hand-held shot would.
    stroke_px = int(size * 0.8)
    ink = Image.fromarray(digit).resize((stroke_px, stroke_px), Image.Resampling.BICUBIC)
    alpha = np.zeros((size, size), np.float32)
    top, left = int(size * 0.08), int(size * 0.13)
    alpha[top : top + stroke_px, left : left + stroke_px] = np.asarray(ink, np.float32) / 255
    alpha = np.clip(alpha * 1.2, 0, 1)

    # Paper: brighter at the top left (the light), darker towards one corner, warm white.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    light = 0.93 - 0.16 * (0.6 * xx + 0.4 * yy) ** 1.5
    paper_rgb = np.array([1.0, 0.97, 0.9], np.float32)
    ink_rgb = np.array([0.12, 0.13, 0.22], np.float32)  # blue-black ballpoint
    paper = light[..., None] * paper_rgb
    rgb = paper * (1 - alpha[..., None]) + ink_rgb * alpha[..., None]
    rgb += rng.normal(0, 0.018, rgb.shape).astype(np.float32)
    image = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), mode="RGB")
    return image.filter(ImageFilter.GaussianBlur(radius=1.2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", help="folder holding mnist/ and fashion-mnist/ (default $VAE_DATA_DIR)"
    )
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default here)")
    args = parser.parse_args()
    data_dir = resolve_data_dir(args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)

    for dataset, index, label, name in (DIGIT, FASHION):
        Image.fromarray(test_image(dataset, index, label, data_dir), mode="L").save(
            args.out / name, optimize=True
        )
    dataset, index, label, name = PHOTO
    photo = photo_of(test_image(dataset, index, label, data_dir), PHOTO_SIZE, SEED)
    photo.save(args.out / name, quality=80, optimize=True)
    for name in (DIGIT[3], FASHION[3], PHOTO[3]):
        path = args.out / name
        with Image.open(path) as written:
            size = f"{written.width}x{written.height} {written.mode}"
        print(f"{path}: {size}, {path.stat().st_size} B")


if __name__ == "__main__":
    main()
