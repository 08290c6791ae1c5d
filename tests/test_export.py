from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import training.export as export_module
from service.calibration import MIN_IMAGES, calibration_for, load_runtime
from service.manifest import (
    GraphSpec,
    InputSpec,
    LatentMapSpec,
    LatentSpec,
    Manifest,
    ParityReport,
    load_manifest,
    sha256sum,
)
from service.scoring import (
    AE_DEFAULT_SCORE,
    DEFAULT_K,
    DEFAULT_SCORE,
    DEFAULT_SEED,
    REFERENCE_KEYS,
    ScoreCalibration,
)
from training.cli import main
from training.config import TrainConfig
from training.export import ExportError, export_run
from training.train import load_run, load_run_splits, train

from .conftest import tiny_config, write_mnist_like


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_exported_files_are_self_contained_and_described(exported_vae: Path) -> None:
    assert sorted(p.name for p in exported_vae.iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "latent_map.json",  # latent_dim 2: see test_latent_map.py
        "manifest.json",
    ]
    manifest = json.loads((exported_vae / "manifest.json").read_text())
    assert manifest["encoder"]["sha256"] == sha256sum(exported_vae / "encoder.onnx")
    assert (
        manifest["name"] == "tiny-vae" and manifest["kind"] == "vae" and manifest["latent_dim"] == 2
    )
    assert manifest["input"]["shape"] == [1, 28, 28] and manifest["input"]["pixel_range"] == [
        0.0,
        1.0,
    ]
    assert manifest["input"]["background"] == "dark"  # bright bars on faint noise, as MNIST
    assert manifest["encoder"]["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": ["batch", 1, 28, 28]}
    ]
    assert [o["name"] for o in manifest["encoder"]["outputs"]] == ["mu", "logvar"]
    assert manifest["decoder"]["outputs"][0]["shape"] == ["batch", 1, 28, 28]
    assert (
        manifest["latent"]["code_output"] == "mu"
        and manifest["latent"]["sigma"] == "exp(logvar / 2)"
    )
    assert manifest["dataset"]["label_names"] == list("0123456789")
    assert manifest["training"]["epochs"] == 3 and manifest["opset"] == export_module.OPSET
    assert {"created_at", "package_version", "architecture", "parity"} <= set(manifest)
    parity = manifest["parity"]
    assert list(parity["encoder_max_abs_diff"]) == ["1", "2", "7", "64"]
    assert max(parity["decoder_max_abs_diff"].values()) <= parity["atol"]
    for part in ("encoder", "decoder"):
        model = onnx.load(str(exported_vae / f"{part}.onnx"))
        assert not {n.op_type for n in model.graph.node} & export_module.RANDOM_OPS
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


@pytest.mark.parametrize("batch", [1, 3, 100])
def test_onnxruntime_matches_torch(exported_vae: Path, vae_run: Path, batch: int) -> None:
    model = load_run(vae_run).model
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
    mu, logvar = _session(exported_vae / "encoder.onnx").run(["mu", "logvar"], {"x": x.numpy()})
    with torch.no_grad():
        t_mu, t_logvar = model.encode(x)
        assert t_logvar is not None
        images = torch.sigmoid(model.decode_logits(t_mu)).reshape(batch, 1, 28, 28)
    np.testing.assert_allclose(mu, t_mu.numpy(), atol=1e-5)
    np.testing.assert_allclose(logvar, t_logvar.numpy(), atol=1e-5)
    (decoded,) = _session(exported_vae / "decoder.onnx").run(None, {"z": mu})
    assert decoded.shape == (batch, 1, 28, 28) and decoded.dtype == np.float32
    assert decoded.min() >= 0.0 and decoded.max() <= 1.0
    np.testing.assert_allclose(decoded, images.numpy(), atol=1e-5)


def test_ae_export_has_a_single_code_output(ae_run: Path, tmp_path: Path) -> None:
    manifest = export_run(ae_run, tmp_path / "tiny-ae", name="tiny-ae", version="7")
    assert manifest["kind"] == "ae" and manifest["version"] == "7"
    assert [o["name"] for o in manifest["encoder"]["outputs"]] == ["z"]
    assert manifest["latent"] == {
        "code_output": "z",
        "logvar_output": None,
        "sigma": None,
        "prior": None,
    }
    outputs = _session(tmp_path / "tiny-ae" / "encoder.onnx").run(
        None, {"x": np.zeros((2, 1, 28, 28), np.float32)}
    )
    assert len(outputs) == 1 and outputs[0].shape == (2, 4)


@pytest.mark.parametrize("res_blocks", [0, 1])
def test_conv_model_exports_with_parity(tmp_path: Path, data_dir: Path, res_blocks: int) -> None:
    from training.train import train

    cfg = tiny_config(
        data_dir,
        architecture="conv",
        hidden=(16,),
        channels=(4, 8),
        res_blocks=res_blocks,
        epochs=1,
    )
    train(cfg, tmp_path / "run", progress=False)
    manifest = export_run(tmp_path / "run", tmp_path / "conv")
    assert manifest["architecture"]["architecture"] == "conv"
    assert manifest["architecture"]["res_blocks"] == res_blocks
    assert max(manifest["parity"]["encoder_max_abs_diff"].values()) <= manifest["parity"]["atol"]


def test_the_service_reads_back_every_entry_export_writes(exported_vae: Path) -> None:
    written = json.loads((exported_vae / "manifest.json").read_text())
    loaded = load_manifest(exported_vae)  # the service's loader: schema and checksums
    assert loaded.model_dump(mode="json", exclude_unset=True) == written  # nothing lost
    assert loaded.model_extra == {}  # every entry is declared in the service's schema
    parts = {
        "input": InputSpec,
        "encoder": GraphSpec,
        "decoder": GraphSpec,
        "latent": LatentSpec,
        "latent_map": LatentMapSpec,
        "parity": ParityReport,
    }
    for part, schema in parts.items():
        assert set(written[part]) <= set(schema.model_fields), part
    assert set(written) <= set(Manifest.model_fields)


def test_export_refuses_a_model_the_service_would_refuse(
    vae_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    with pytest.raises(ExportError) as info:
        export_run(vae_run, models / "out", name="two words")
    message = str(info.value)
    assert message.startswith("the service would refuse this model: model folder ")
    assert "name: String should match pattern" in message
    assert str(models / "out") in message and ".out." not in message  # not the temporary name
    assert list(models.iterdir()) == []  # nothing written, no temporary folder left behind

    monkeypatch.setattr(export_module, "MANIFEST_VERSION", 2)
    with pytest.raises(ExportError, match="manifest_version: Input should be 1"):
        export_run(vae_run, models / "out")
    assert list(models.iterdir()) == []


def test_export_command_reports_a_refused_name(
    vae_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "my model"  # the name defaults to the folder's, which has a space
    assert main(["export", str(vae_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the service would refuse this model") and "name:" in err
    assert not out.exists()


def test_the_manifest_schema_needs_only_pydantic() -> None:
    """Training imports the service's manifest module: it must not pull in the server."""
    code = (
        "import sys, service.manifest; "
        "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'onnxruntime', 'PIL')"
        " if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_failed_parity_fails_loudly_and_writes_nothing(
    vae_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "PARITY_ATOL", -1.0)  # no difference can pass
    out = tmp_path / "models" / "broken"
    with pytest.raises(ExportError, match=r"batch 1: onnxruntime differs from torch by"):
        export_run(vae_run, out)
    assert not out.exists()
    assert list((tmp_path / "models").iterdir()) == []  # no temporary folder left behind either


def test_own_image_folder_labels_reach_the_manifest(tmp_path: Path) -> None:
    from PIL import Image

    from training.train import train

    rng = np.random.default_rng(0)
    for label in ("circle", "square"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(
                tmp_path / "imgs" / label / f"{i}.png"
            )
    cfg = tiny_config(tmp_path, dataset=str(tmp_path / "imgs"), epochs=1)
    train(cfg, tmp_path / "run", progress=False)
    manifest = export_run(tmp_path / "run", tmp_path / "shapes")
    assert manifest["dataset"]["name"] == "imgs"
    assert manifest["dataset"]["label_names"] == ["circle", "square"]
    assert sum(manifest["dataset"]["sizes"].values()) == 60


def write_ink_on_paper(folder: Path, n: int = 40) -> Path:
    """A folder of dark strokes on light paper, two classes, as a user's scans might be."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        label = ("bar", "post")[i % 2]
        (folder / label).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(215, 256, (28, 28), dtype=np.uint8)
        if label == "bar":
            pixels[10:16, 4:24] = rng.integers(0, 40)
        else:
            pixels[4:24, 10:16] = rng.integers(0, 40)
        Image.fromarray(pixels).save(folder / label / f"{i}.png")
    return folder


@pytest.mark.parametrize(("invert", "background"), [(False, "light"), (True, "dark")])
def test_export_records_the_background_the_model_was_trained_on(
    tmp_path: Path, invert: bool, background: str
) -> None:
    from training.train import train

    images = write_ink_on_paper(tmp_path / "scans")
    cfg = tiny_config(tmp_path, dataset=str(images), epochs=1, invert=invert)
    train(cfg, tmp_path / "run", progress=False)
    manifest = export_run(tmp_path / "run", tmp_path / "models" / "scans")
    assert manifest["input"]["preprocessing"]["invert"] is invert
    assert manifest["input"]["background"] == background
    assert load_manifest(tmp_path / "models" / "scans").input.background == background


def test_without_the_data_the_background_is_judged_from_the_decoder(tmp_path: Path) -> None:
    from training.train import train

    images = write_ink_on_paper(tmp_path / "scans")
    cfg = tiny_config(tmp_path, dataset=str(images), epochs=3)
    train(cfg, tmp_path / "run", progress=False)
    shutil.rmtree(images)
    manifest = export_run(tmp_path / "run", tmp_path / "models" / "scans")
    assert "latent_map" not in manifest
    assert manifest["input"]["background"] == "light"
    assert export_module.input_background(load_run(tmp_path / "run").model, None) == "light"


def _colour_squares(n: int, size: tuple[int, int], channels: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, H, W, C) images: a bright square in one of the channels on dark noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, (n, *size, channels), dtype=np.uint8)
    for i in range(n):
        top, left = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
        images[i, top : top + size[0] // 3, left : left + size[1] // 3, i % channels] = 220
    return images


def _train_and_export(tmp_path: Path, dataset: Path, **overrides: object) -> tuple[Path, dict]:
    values: dict[str, object] = {
        "dataset": str(dataset),
        "hidden": (16,),
        "latent_dim": 3,
        "epochs": 2,
        "batch_size": 16,
        "val_size": 8,
        "device": "cpu",
    }
    values.update(overrides)
    run = tmp_path / "run"
    train(TrainConfig.from_dict(values), run, progress=False)
    out = tmp_path / "served" / "model"
    export_run(run, out)
    return out, json.loads((out / "manifest.json").read_text())  # as the file says


def _check_shapes_and_parity(folder: Path, run: Path, shape: tuple[int, int, int]) -> None:
    """The exported pair takes and gives N x C x H x W, as torch does, at two batch sizes."""
    model = load_run(run).model
    encoder, decoder = _session(folder / "encoder.onnx"), _session(folder / "decoder.onnx")
    for batch in (1, 5):
        x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(batch))
        mu, logvar = encoder.run(None, {"x": x.numpy()})
        (images,) = decoder.run(None, {"z": mu})
        assert images.shape == (batch, *shape) and images.dtype == np.float32
        with torch.no_grad():
            t_mu, t_logvar = model.encode(x)
            t_images = torch.sigmoid(model.decode_logits(t_mu)).reshape(batch, *shape)
        assert np.allclose(mu, t_mu.numpy(), atol=1e-4)
        assert np.allclose(logvar, t_logvar.numpy(), atol=1e-4)
        assert np.allclose(images, t_images.numpy(), atol=1e-4)


def test_a_colour_conv_vae_from_an_npz(tmp_path: Path) -> None:
    images = _colour_squares(64, (32, 32), 3)
    np.savez(tmp_path / "squares.npz", x=images, y=np.arange(64) % 3)
    out, manifest = _train_and_export(
        tmp_path, tmp_path / "squares.npz", architecture="conv", conv_channels=(4, 8, 8)
    )
    spec = manifest["input"]
    assert spec["shape"] == [3, 32, 32] and spec["layout"] == "NCHW"
    assert manifest["output"] == {"tensor": "x_mean", "layout": "NCHW", "activation": "none"}
    assert spec["preprocessing"]["color"] == "RGB (PIL mode 'RGB')"
    assert spec["preprocessing"]["resize"] == [32, 32]
    assert "foreground" not in spec["preprocessing"]  # nothing is known about a user's data
    assert manifest["encoder"]["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert manifest["decoder"]["outputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert manifest["architecture"]["conv_channels"] == [4, 8, 8]
    assert manifest["dataset"]["image_shape"] == [3, 32, 32]
    assert manifest["dataset"]["label_names"] == ["0", "1", "2"]
    loaded = load_manifest(out)
    assert loaded.image_shape == (3, 32, 32) and loaded.image_output == "x_mean"
    _check_shapes_and_parity(out, tmp_path / "run", (3, 32, 32))


def test_a_colour_conv_vae_from_a_folder_of_pngs(tmp_path: Path) -> None:
    folder = tmp_path / "pictures"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
    for i, pixels in enumerate(_colour_squares(48, (40, 40), 3, seed=1)):
        Image.fromarray(pixels).save(folder / "ab"[i % 2] / f"{i}.png")
    out, manifest = _train_and_export(
        tmp_path,
        folder,
        architecture="conv",
        conv_channels=(4, 8, 8),
        image_size=32,
        channels=3,
    )
    steps = manifest["input"]["preprocessing"]
    assert manifest["input"]["shape"] == [3, 32, 32] and manifest["input"]["background"] == "dark"
    assert steps["color"] == "RGB (PIL mode 'RGB')" and steps["resize"] == [32, 32]
    assert steps["resample"] == "bilinear" and "foreground" not in steps
    assert manifest["dataset"]["label_names"] == ["a", "b"]
    load_manifest(out)
    _check_shapes_and_parity(out, tmp_path / "run", (3, 32, 32))


def test_a_grayscale_conv_vae_at_64(tmp_path: Path) -> None:
    np.save(tmp_path / "big.npy", _colour_squares(40, (64, 64), 1, seed=2)[..., 0])
    out, manifest = _train_and_export(
        tmp_path, tmp_path / "big.npy", architecture="conv", conv_channels=(4, 4, 8, 8)
    )
    assert manifest["input"]["shape"] == [1, 64, 64]
    assert manifest["input"]["preprocessing"]["color"] == "grayscale (PIL mode 'L')"
    assert manifest["input"]["preprocessing"]["resize"] == [64, 64]
    assert load_manifest(out).image_shape == (1, 64, 64)
    _check_shapes_and_parity(out, tmp_path / "run", (1, 64, 64))


@pytest.mark.parametrize(("architecture", "size"), [("mlp", (20, 24)), ("conv", (21, 27))])
def test_odd_colour_sizes(tmp_path: Path, architecture: str, size: tuple[int, int]) -> None:
    # conv at 21 x 27: both sides odd, so every transposed layer needs its output_padding.
    images = _colour_squares(40, size, 3, seed=3) / 255.0
    np.savez(tmp_path / "odd.npz", images=images)
    out, manifest = _train_and_export(
        tmp_path, tmp_path / "odd.npz", architecture=architecture, conv_channels=(4, 8)
    )
    assert manifest["input"]["shape"] == [3, *size]
    assert manifest["input"]["preprocessing"]["resize"] == list(size)
    assert load_manifest(out).image_shape == (3, *size)
    _check_shapes_and_parity(out, tmp_path / "run", (3, *size))


def test_an_idx_model_keeps_its_description(exported_vae: Path) -> None:
    steps = json.loads((exported_vae / "manifest.json").read_text())["input"]["preprocessing"]
    assert steps == {
        "color": "grayscale (PIL mode 'L')",
        "resize": [28, 28],
        "resample": "bilinear",
        "scale": "pixel / 255",
        "invert": False,
        "foreground": "bright strokes on a dark background, as in MNIST",
    }


# --- score calibration ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """A tiny VAE and AE whose validation split is large enough to calibrate on: (run, export)."""
    root = tmp_path_factory.mktemp("calibrated")
    data = write_mnist_like(root / "data", n_train=1300, n_test=40)
    folders = {}
    for kind, latent in (("vae", 2), ("ae", 4)):
        run = root / "runs" / kind
        cfg = tiny_config(data, model=kind, latent_dim=latent, epochs=1, val_size=MIN_IMAGES)
        train(cfg, run, progress=False)
        folders[kind] = (run, root / "models" / f"tiny-{kind}")
        export_run(run, folders[kind][1])
    return folders


def _validation_images(run: Path) -> np.ndarray:
    splits = load_run_splits(load_run(run, device="cpu"))
    return splits.val.images.transpose(0, 2, 3, 1)


def test_export_calibrates_on_the_validation_split(
    calibrated: dict[str, tuple[Path, Path]],
) -> None:
    run, out = calibrated["vae"]
    written = json.loads((out / "manifest.json").read_text())["score_calibration"]
    calibration = ScoreCalibration.model_validate(written)
    assert calibration.score == DEFAULT_SCORE and calibration.images == MIN_IMAGES
    assert (calibration.k, calibration.seed, calibration.likelihood) == (
        DEFAULT_K,
        DEFAULT_SEED,
        "bernoulli",
    )
    assert calibration.split.startswith("mnist validation split: 1,000 images")
    assert calibration.target_fpr == 0.01
    quantiles = np.asarray(calibration.quantiles)
    assert len(quantiles) == 1001 and np.all(np.diff(quantiles) >= 0)
    assert quantiles[0] < quantiles[-1]
    # The 99 % quantile is the table's entry 990; 1 % of held-out scores lie above the threshold.
    assert calibration.threshold == pytest.approx(quantiles[990])
    assert set(calibration.reference) == REFERENCE_KEYS
    # The service's numbers: its own runtime on the same images gives the same calibration.
    again = calibration_for(load_runtime(out), _validation_images(run), calibration.split)
    assert again == calibration
    # The service loads the folder; the graphs are the ones the checksums name.
    manifest = load_manifest(out)
    assert manifest.encoder.sha256 == sha256sum(out / "encoder.onnx")


def test_an_autoencoder_is_calibrated_on_its_reconstruction_error(
    calibrated: dict[str, tuple[Path, Path]],
) -> None:
    _, out = calibrated["ae"]
    calibration = ScoreCalibration.model_validate(
        json.loads((out / "manifest.json").read_text())["score_calibration"]
    )
    assert calibration.score == AE_DEFAULT_SCORE and calibration.k == 1
    assert calibration.quantiles[0] >= 0.0  # a mean squared error
    assert np.all(np.diff(calibration.quantiles) >= 0)


def test_a_calibration_is_reproduced_by_a_second_export(
    calibrated: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    run, out = calibrated["vae"]
    manifest = export_run(run, tmp_path / "again")
    first = json.loads((out / "manifest.json").read_text())["score_calibration"]
    assert manifest["score_calibration"] == first  # seeded: the same numbers, bit for bit
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())["score_calibration"] == (
        first
    )


def test_a_small_validation_split_exports_without_calibration(
    vae_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="training.export"):
        manifest = export_run(vae_run, tmp_path / "small")  # val_size 50
    assert "score_calibration" not in manifest
    assert "score_calibration" not in json.loads((tmp_path / "small" / "manifest.json").read_text())
    [record] = caplog.records
    message = record.getMessage()
    assert "holds 50 images, fewer than the 1000" in message
    assert "no score calibration written" in message and "python -m service.calibrate" in message
