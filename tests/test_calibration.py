"""service/calibration.py and python -m service.calibrate: a model folder calibrated on normal
images with the service's own runtime, written into its manifest and nothing else; every bad input
refused with exit code 2 and a message naming the fix, the manifest left as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.calibrate import main
from service.calibration import MIN_IMAGES, CalibrationError, calibrate_folder, normal_images
from service.manifest import load_manifest
from service.scoring import (
    AE_DEFAULT_SCORE,
    DEFAULT_K,
    DEFAULT_SCORE,
    DecoderLikelihood,
    ScoreCalibration,
    build_calibration,
    default_score_name,
    percentile,
    score_parts,
)

from .conftest import digits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def vae_folder(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir / "tiny-vae", tmp_path / "models" / "tiny-vae"))


@pytest.fixture
def normal_npy(tmp_path: Path) -> Path:
    path = tmp_path / "normal.npy"
    np.save(path, digits(MIN_IMAGES))
    return path


def _document(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_only_the_calibration_is_added_to_the_manifest(vae_folder: Path) -> None:
    before = _document(vae_folder)
    graphs = {p.name: p.read_bytes() for p in vae_folder.glob("*.onnx")}
    calibration = calibrate_folder(vae_folder, digits(MIN_IMAGES), "synthetic bars")
    after = _document(vae_folder)
    assert after.pop("score_calibration") == calibration.model_dump(mode="json")
    assert after == before  # every other field, in its order
    assert list(after) == list(before)
    assert {p.name: p.read_bytes() for p in vae_folder.glob("*.onnx")} == graphs
    assert sorted(p.name for p in vae_folder.iterdir()) == [  # no temporary file left behind
        "decoder.onnx",
        "encoder.onnx",
        "latent_map.json",
        "manifest.json",
    ]
    load_manifest(vae_folder)  # checksums and schema: the service loads it
    assert calibration.score == DEFAULT_SCORE and calibration.split == "synthetic bars"
    assert calibration.images == MIN_IMAGES and len(calibration.quantiles) == 1001
    assert np.all(np.diff(calibration.quantiles) >= 0)
    assert percentile(np.array([calibration.threshold]), calibration)[0] == pytest.approx(99.0)


def test_the_numbers_are_the_onnx_files_own(vae_folder: Path) -> None:
    """The same calibration as scoring.score_parts on the graphs run directly (NCHW, the
    manifest's likelihood): the runtime adds no conversion of its own."""
    images = digits(MIN_IMAGES)[..., None]
    calibration = calibrate_folder(vae_folder, images, "bars")
    encoder = ort.InferenceSession(str(vae_folder / "encoder.onnx"))
    decoder = ort.InferenceSession(str(vae_folder / "decoder.onnx"))
    mu, logvar = encoder.run(None, {"x": images.transpose(0, 3, 1, 2)})

    def decode(z: np.ndarray) -> np.ndarray:
        return decoder.run(None, {"z": z})[0].transpose(0, 2, 3, 1)

    likelihood = DecoderLikelihood.from_training(_document(vae_folder)["training"])
    parts = score_parts(images, mu, logvar, decode, likelihood=likelihood)
    direct = build_calibration(parts, score=DEFAULT_SCORE, split="bars", likelihood=likelihood)
    assert calibration.threshold == pytest.approx(direct.threshold, rel=1e-6, abs=1e-6)
    assert calibration.quantiles == pytest.approx(direct.quantiles, rel=1e-6, abs=1e-6)


def test_uint8_and_float_grayscale_layouts_agree(vae_folder: Path) -> None:
    pixels = (digits(MIN_IMAGES) * 255).round().astype(np.uint8)
    first = calibrate_folder(vae_folder, pixels, "bars")
    second = calibrate_folder(vae_folder, (pixels / 255.0)[..., None], "bars")  # float64, N H W 1
    assert first == second  # and recalibrating gives the same numbers: seeded


def test_an_autoencoder_gets_its_reconstruction_error(model_dir: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(model_dir / "tiny-ae", tmp_path / "tiny-ae"))
    calibration = calibrate_folder(folder, digits(MIN_IMAGES), "bars", target_fpr=0.05)
    assert calibration.score == AE_DEFAULT_SCORE and calibration.target_fpr == 0.05
    assert calibration.threshold == pytest.approx(
        np.interp(0.95, np.linspace(0, 1, 1001), calibration.quantiles)
    )


def test_the_command_calibrates_and_says_so(
    vae_folder: Path, normal_npy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(vae_folder), "--images", str(normal_npy), "--target-fpr", "0.02"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"calibrated {vae_folder}: {DEFAULT_SCORE} on 1,000 images")
    calibration = ScoreCalibration.model_validate(_document(vae_folder)["score_calibration"])
    assert calibration.split == "normal.npy: 1,000 images" and calibration.target_fpr == 0.02
    assert main([str(vae_folder), "--images", str(normal_npy), "--split", "my data"]) == 0
    assert _document(vae_folder)["score_calibration"]["split"] == "my data"


def test_python_dash_m(vae_folder: Path, normal_npy: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.calibrate", str(vae_folder), "--images", str(normal_npy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "threshold" in result.stdout and "score_calibration" in _document(vae_folder)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (digits(MIN_IMAGES)[:, :27], "of shape (1000, 27, 28, 1): the model takes (N, 28, 28)"),
        (np.zeros((MIN_IMAGES, 28, 28, 3), np.float32), "the model takes (N, 28, 28) images"),
        (np.zeros((MIN_IMAGES, 784), np.float32), "resize them to 28 x 28 first"),
        (digits(MIN_IMAGES - 1), "999 images; calibration needs at least 1,000"),
        (np.full((MIN_IMAGES, 28, 28), np.nan, np.float32), "values are NaN or infinite"),
        (digits(MIN_IMAGES) * 255, "bad.npy: float pixels in [0, 230]; they must be in [0, 1]"),
        (np.zeros((MIN_IMAGES, 28, 28), np.int32), "dtype int32: expected uint8"),
    ],
)
def test_images_that_cannot_calibrate_are_refused(
    vae_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    images: np.ndarray,
    message: str,
) -> None:
    before = (vae_folder / "manifest.json").read_bytes()
    np.save(tmp_path / "bad.npy", images)
    assert main([str(vae_folder), "--images", str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert (vae_folder / "manifest.json").read_bytes() == before


def test_bad_files_and_options_are_refused(
    vae_folder: Path, normal_npy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "text.npy").write_text("not numpy")
    assert main([str(vae_folder), "--images", str(tmp_path / "text.npy")]) == 2
    assert "not a readable .npy file" in capsys.readouterr().err
    assert main([str(vae_folder), "--images", str(tmp_path / "missing.npy")]) == 2
    assert "missing.npy: not a readable .npy file" in capsys.readouterr().err
    assert main([str(tmp_path), "--images", str(normal_npy)]) == 2
    assert "not a model folder (no manifest.json in it)" in capsys.readouterr().err
    assert main([str(vae_folder), "--images", str(normal_npy), "--target-fpr", "1.5"]) == 2
    assert "a rate between 0 and 1" in capsys.readouterr().err
    (vae_folder / "decoder.onnx").write_bytes(b"changed")
    assert main([str(vae_folder), "--images", str(normal_npy)]) == 2
    assert "has sha256" in capsys.readouterr().err  # the service's own load refuses the folder
    assert "score_calibration" not in _document(vae_folder)


def test_normal_images_for_a_colour_model() -> None:
    images = np.random.default_rng(0).random((MIN_IMAGES, 8, 6, 3))
    assert normal_images(images, (8, 6, 3)).shape == (MIN_IMAGES, 8, 6, 3)
    with pytest.raises(CalibrationError, match=r"the model takes \(N, 8, 6, 3\) images"):
        normal_images(images[..., 0], (8, 6, 3))


@pytest.mark.parametrize(
    "name", ["mnist-vae", "fashion-vae", "mnist-ae", "mnist-ae-2d", "mnist-vae-2d"]
)
def test_the_bundled_models_are_calibrated_on_their_validation_split(name: str) -> None:
    document = _document(ROOT / "models" / name)
    calibration = ScoreCalibration.model_validate(document["score_calibration"])
    assert calibration.score == default_score_name(document["kind"] == "vae")
    dataset = document["dataset"]["name"]
    assert calibration.split.startswith(f"{dataset} validation split: 5,000 images")
    assert (calibration.images, calibration.target_fpr, len(calibration.quantiles)) == (
        5000,
        0.01,
        1001,
    )
    assert calibration.k == (DEFAULT_K if document["kind"] == "vae" else 1)
    load_manifest(ROOT / "models" / name)  # the graphs' checksums unchanged
