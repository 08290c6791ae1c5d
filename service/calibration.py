"""Calibrating a model folder: score normal images the model never trained on with the service's
own runtime and write the distribution of its default score into manifest.json.

`training export` calls `calibrate_folder` with the run's validation split, the importer with the
user's `.npy` of normal data (`--calibration-images`), and `python -m service.calibrate` does it
for any model folder. The service only reads the result (`score_calibration` in the manifest): it
never scores data at start-up. The numbers are those `/score` computes: the same runtime
(`ModelRuntime.load`, `encode`, `decode`: the same layout and pixel conversions), the same k
and seed, the model's own decoder likelihood.
"""

from __future__ import annotations

import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.manifest import Manifest, ModelLoadError
from service.models.runtime import CPU, ModelRuntime
from service.scoring import (
    DEFAULT_K,
    DEFAULT_SEED,
    DEFAULT_TARGET_FPR,
    DecoderLikelihood,
    ScoreCalibration,
    ScoreParts,
    build_calibration,
    default_score_name,
    score_parts,
)
from service.settings import Settings

Array = NDArray[np.float32]

# The quantile table has 1,001 entries (a percentile to 0.1 %): below 1,000 images its steps are
# coarser than the table, and the 1 % threshold would rest on fewer than 10 images above it.
MIN_IMAGES = 1000
ENCODE_BATCH = 1024  # images per encoder call: bounds the memory of any image size
MANIFEST = "manifest.json"
CALIBRATION_KEY = "score_calibration"


class CalibrationError(ValueError):
    """The images (or the folder) cannot calibrate the model; the message says why and the fix."""


def normal_images(
    raw: NDArray[Any], image_hwc: tuple[int, int, int], what: str = "images"
) -> Array:
    """`raw` (N, H, W) or (N, H, W, C), uint8 0-255 or float in [0, 1], as the (N, H, W, C)
    float32 in [0, 1] a model of one image `image_hwc` takes; refused when they do not fit."""
    height, width, channels = image_hwc
    want = f"(N, {height}, {width})" if channels == 1 else f"(N, {height}, {width}, {channels})"
    if raw.ndim == 3 and channels == 1:
        raw = raw[..., None]
    if raw.ndim != 4 or raw.shape[1:] != (height, width, channels):
        raise CalibrationError(
            f"{what} of shape {raw.shape}: the model takes {want} images"
            f"{' or (N, H, W, 1)' if channels == 1 else ''}; resize them to {width} x {height} "
            "first (images are not resized for calibration)"
        )
    if raw.dtype == np.uint8:
        images = raw.astype(np.float32) / 255.0
    elif np.issubdtype(raw.dtype, np.floating):
        images = raw.astype(np.float32)
        if not np.isfinite(images).all():
            raise CalibrationError(
                f"{what}: {int((~np.isfinite(images)).sum())} values are NaN "
                "or infinite; drop those images"
            )
        low, high = float(images.min(initial=0.0)), float(images.max(initial=0.0))
        if low < 0.0 or high > 1.0:
            raise CalibrationError(
                f"{what}: float pixels in [{low:.3g}, {high:.3g}]; they must be in [0, 1] "
                "(divide 0-255 values by 255, or store uint8)"
            )
    else:
        raise CalibrationError(
            f"{what} of dtype {raw.dtype}: expected uint8 (0-255) or float (0-1) pixels"
        )
    if len(images) < MIN_IMAGES:
        raise CalibrationError(
            f"{what}: {len(images)} images; calibration needs at least {MIN_IMAGES:,} normal "
            "images the model did not train on (its percentiles are kept to 0.1 %, and the 1 % "
            "threshold should rest on at least 10 images above it)"
        )
    return np.ascontiguousarray(images)


def read_npy(path: Path, what: str = "--images") -> NDArray[Any]:
    """The array in `path` (a `.npy` file; no pickled objects), or a CalibrationError."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{what} {path}: not a readable .npy file ({exc})") from exc
    if not isinstance(array, np.ndarray):
        raise CalibrationError(f"{what} {path}: holds several arrays; save one with np.save")
    return array


def load_runtime(folder: Path) -> ModelRuntime:
    """The model in `folder` as the service loads it (checksums, signatures, warm-up), on the CPU
    with the default settings (not the environment's VAE_*)."""
    with ThreadPoolExecutor(1) as executor:
        return ModelRuntime.load(folder, Settings.model_construct(), [CPU], executor)


def runtime_parts(runtime: ModelRuntime, images: Array) -> ScoreParts:
    """Every score part of `images` (N, H, W, C) under `runtime`, as `/score` computes them with
    its defaults (k = DEFAULT_K, seed DEFAULT_SEED, the model's likelihood)."""
    codes = [
        runtime.encode(images[i : i + ENCODE_BATCH]) for i in range(0, len(images), ENCODE_BATCH)
    ]
    mu = np.concatenate([c[0] for c in codes])
    logvars = [c[1] for c in codes if c[1] is not None]
    logvar = np.concatenate(logvars) if logvars else None
    return score_parts(
        images,
        mu,
        logvar,
        runtime.decode,
        k=DEFAULT_K,
        seed=DEFAULT_SEED,
        likelihood=DecoderLikelihood.from_training(runtime.manifest.training),
    )


def calibration_for(
    runtime: ModelRuntime,
    images: Array,
    split: str,
    target_fpr: float = DEFAULT_TARGET_FPR,
    what: str = "images",
) -> ScoreCalibration:
    """The calibration of the model's default score (a VAE: scoring.DEFAULT_SCORE, an AE:
    AE_DEFAULT_SCORE) from `images`, checked by `normal_images` first (`what` names them in
    its messages)."""
    if not 0.0 < target_fpr < 1.0:
        raise CalibrationError(f"target fpr {target_fpr}: must be between 0 and 1, e.g. 0.01")
    images = normal_images(images, runtime.image_hwc, what)
    try:
        return build_calibration(
            runtime_parts(runtime, images),
            score=default_score_name(runtime.is_vae),
            split=split,
            likelihood=DecoderLikelihood.from_training(runtime.manifest.training),
            target_fpr=target_fpr,
        )
    except ValueError as exc:  # scores not finite: the model, not the images, is at fault
        raise CalibrationError(f"model {runtime.name!r}: {exc}") from exc


def with_calibration(document: dict[str, Any], calibration: ScoreCalibration) -> dict[str, Any]:
    """The manifest `document` with `calibration` in it, every other field as it was."""
    return {**document, CALIBRATION_KEY: calibration.model_dump(mode="json")}


def manifest_text(text: str, calibration: ScoreCalibration) -> str:
    """The manifest.json `text` with `calibration` in it (every other field as it was), checked
    by the service's schema: a manifest the service would refuse is never written."""
    calibrated = json.dumps(with_calibration(json.loads(text), calibration), indent=2) + "\n"
    Manifest.model_validate_json(calibrated)
    return calibrated


def write_calibration(folder: Path, calibration: ScoreCalibration) -> None:
    """Put `calibration` into folder/manifest.json atomically (a reader sees the old file or the
    new one, never half of one), keeping every other field and the checksums of the graphs."""
    path = folder / MANIFEST
    text = manifest_text(path.read_text(), calibration)
    handle, temporary = tempfile.mkstemp(prefix=".manifest.", suffix=".calibrating", dir=folder)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def calibrate_folder(
    folder: Path,
    images: NDArray[Any],
    split: str,
    target_fpr: float = DEFAULT_TARGET_FPR,
    what: str = "images",
) -> ScoreCalibration:
    """Calibrate the model in `folder` on `images` (normal data it did not train on: (N, H, W) or
    (N, H, W, C), uint8 or float in [0, 1], at least MIN_IMAGES) and write the calibration into
    its manifest.json; `split` says in words which data it was."""
    try:
        runtime = load_runtime(Path(folder))
    except ModelLoadError as exc:
        raise CalibrationError(str(exc)) from exc
    calibration = calibration_for(runtime, images, split, target_fpr, what)
    write_calibration(Path(folder), calibration)
    return calibration
