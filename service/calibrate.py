"""`python -m service.calibrate models/NAME --images normal.npy [--target-fpr 0.01] [--split TEXT]`:
(re)calibrate a model folder's scores on normal images it did not train on
(`service.calibration.calibrate_folder`). Exit code 0 and a summary; 2 and one message on any
problem (the manifest is then left as it was)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from service.calibration import MIN_IMAGES, CalibrationError, calibrate_folder, read_npy
from service.scoring import DEFAULT_TARGET_FPR, ScoreCalibration


def _fpr(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a rate between 0 and 1, e.g. 0.01 for 1 %")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m service.calibrate",
        description="Score normal images the model did not train on, as /score does, and keep "
        "the distribution of its default score and the threshold at --target-fpr in the model's "
        "manifest.json (nothing else in the folder changes).",
    )
    p.add_argument("folder", type=Path, help="the model folder, e.g. models/NAME")
    p.add_argument(
        "--images",
        type=Path,
        required=True,
        help=f".npy of at least {MIN_IMAGES:,} normal images, N x H x W (grayscale) or "
        "N x H x W x C, uint8 0-255 or float 0-1, at the model's size",
    )
    p.add_argument(
        "--target-fpr",
        type=_fpr,
        default=DEFAULT_TARGET_FPR,
        help="the false-positive rate of the default threshold (default 0.01)",
    )
    p.add_argument("--split", help="which data the images are, in words (default: the file name)")
    return p


def summary(folder: Path, calibration: ScoreCalibration) -> str:
    return (
        f"calibrated {folder}: {calibration.score} on {calibration.images:,} images "
        f"({calibration.split}), k = {calibration.k}, seed {calibration.seed}; threshold "
        f"{calibration.threshold:.6g} at a false-positive rate of {calibration.target_fpr:g}; "
        f"median {calibration.quantiles[len(calibration.quantiles) // 2]:.6g}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its message
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if not (args.folder / "manifest.json").is_file():
            raise CalibrationError(f"{args.folder}: not a model folder (no manifest.json in it)")
        images = read_npy(args.images)
        split = args.split or f"{args.images.name}: {len(images):,} images"
        calibration = calibrate_folder(
            args.folder, images, split, args.target_fpr, f"--images {args.images}"
        )
    except CalibrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(args.folder, calibration))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
