"""service.importer: every foreign style imported with the flags a person would need; every
question it cannot answer asked with its flag; every way a pair does not fit refused with a
message naming the tensor and the fix; the folder written only when the service loads it."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import Tensor, nn

from service.app import create_app
from service.calibration import MIN_IMAGES, calibrate_folder
from service.importer import main
from service.manifest import ModelLoadError, load_manifest
from service.scoring import ScoreCalibration
from service.settings import Settings

from . import foreign_models
from .foreign_models import STYLES, Reference, close, export_style, public
from .foreign_models import npy_bytes as npy

ROOT = Path(__file__).resolve().parents[1]

# What a person importing each style must say: the rest the importer infers.
MINIMAL_FLAGS = {
    "keras_flat": ["--image-shape", "1,28,28"],
    "keras_nhwc": ["--mean", "StatefulPartitionedCall:0", "--logvar", "StatefulPartitionedCall:1"],
    "logits_ae": ["--output", "logits"],
    "color_vae": [],
    "gray64_vae": [],
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Every style's encoder and decoder files, exported once for the module."""
    root = tmp_path_factory.mktemp("foreign")
    return {name: export_style(name, root / name) for name in STYLES}


def run_importer(
    encoder: Path, decoder: Path, out: Path, *flags: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    code = main(["--encoder", str(encoder), "--decoder", str(decoder), "--out", str(out), *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(
    pair: tuple[Path, Path], out: Path, *flags: str, capsys: pytest.CaptureFixture[str]
) -> str:
    """The importer's one-line refusal; nothing written, nothing left behind."""
    code, stdout, stderr = run_importer(*pair, out, *flags, capsys=capsys)
    assert code == 2, stdout
    assert stderr.startswith("error: ") and "Traceback" not in stderr
    assert not out.exists() or out.is_file() or (out / "keep").exists()
    assert not [p for p in out.parent.iterdir() if ".importing" in p.name]
    return stderr


def test_every_style_has_its_minimal_flags() -> None:
    assert set(MINIMAL_FLAGS) == set(STYLES)


@pytest.mark.parametrize("name", sorted(STYLES))
def test_each_style_imports_with_the_flags_a_person_would_need(
    name: str,
    exported: dict[str, tuple[Path, Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    style = STYLES[name]
    out = tmp_path / "models" / "imported"
    code, stdout, stderr = run_importer(*exported[name], out, *MINIMAL_FLAGS[name], capsys=capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "manifest.json",
    ]
    assert [p.name for p in out.parent.iterdir()] == ["imported"]  # no staging folder left
    manifest = load_manifest(out)  # the service's schema and checksums
    assert manifest.name == "imported"
    assert manifest.kind == style.kind
    assert manifest.latent_dim == foreign_models.LATENT
    assert manifest.input.shape == style.chw
    assert manifest.input.layout == style.input_layout
    assert manifest.output.layout == style.output_layout
    assert manifest.input.flat_order == manifest.output.flat_order == "HWC"
    assert manifest.encoder.inputs[0].name == style.input_name
    assert [t.name for t in manifest.encoder.outputs] == style.encoder_outputs
    assert manifest.decoder.inputs[0].name == style.decoder_input
    assert manifest.image_output == style.decoder_output
    assert manifest.latent.code_output == style.mean
    assert manifest.latent.logvar_output == style.variance
    assert manifest.latent.variance == style.variance_kind
    assert manifest.output.activation == ("sigmoid" if style.logits else "none")
    assert manifest.decoder.output_range is None
    assert manifest.input.pixel_range == (0.0, 1.0)
    assert manifest.input.preprocessing["resize"] == list(style.chw[1:])
    assert manifest.input.preprocessing["resample"] == "bilinear"
    assert manifest.opset == 17
    for file in ("encoder.onnx", "decoder.onnx"):
        source = exported[name][0 if file == "encoder.onnx" else 1]
        assert (out / file).read_bytes() == source.read_bytes()
    # The summary says what was inferred and what the service will ignore.
    assert f"latent_dim {foreign_models.LATENT}" in stdout
    for ignored in style.ignored:
        assert f"ignored (the service does not read them): {[ignored]}" in stdout
    c, h, w = style.chw
    assert f"{c} x {h} x {w}" in stdout


def test_name_description_version_pixel_range_and_preprocessing_flags(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "folder"
    flags = ["--name", "faces-v2", "--description", "my faces", "--version", "7"]
    flags += ["--pixel-range=-1,1", "--invert", "--background", "light"]
    flags += ["--resample", "lanczos", "--output-range", "0,1"]
    code, _, stderr = run_importer(*exported["color_vae"], out, *flags, capsys=capsys)
    assert code == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["name"], manifest["description"], manifest["version"]) == (
        "faces-v2",
        "my faces",
        "7",
    )
    assert manifest["input"]["pixel_range"] == [-1.0, 1.0]
    assert manifest["input"]["background"] == "light"
    assert manifest["input"]["preprocessing"]["invert"] is True
    assert manifest["input"]["preprocessing"]["resample"] == "lanczos"
    assert manifest["input"]["preprocessing"]["color"].startswith("RGB")
    assert manifest["decoder"]["output_range"] == [0.0, 1.0]
    assert manifest["producer"]["importer"] == "python -m service.importer"
    assert manifest["producer"]["encoder"].startswith("pytorch")


def test_the_background_is_judged_from_decoded_prior_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A decoder that draws dark strokes on a light ground: the importer says "light".
    style = dataclasses.replace(STYLES["color_vae"], name="light")
    encoder, _ = export_style(style, tmp_path / "light")
    decoder = tmp_path / "light" / "light-decoder.onnx"
    export(_LightDecoder(), torch.zeros(2, 4), decoder, "z", ["recon"])
    code, stdout, stderr = run_importer(encoder, decoder, tmp_path / "m", capsys=capsys)
    assert code == 0, stderr
    assert load_manifest(tmp_path / "m").input.background == "light"
    assert "background light (judged from" in stdout


def test_the_image_shape_comes_from_whichever_graph_has_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The user: a 4-D encoder and a flat decoder; no --image-shape needed.
    style = dataclasses.replace(STYLES["keras_flat"], name="mixed", input_layout="NCHW")
    pair = export_style(style, tmp_path / "mixed")
    code, stdout, stderr = run_importer(*pair, tmp_path / "m", capsys=capsys)
    assert code == 0, stderr
    manifest = load_manifest(tmp_path / "m")
    assert (manifest.input.layout, manifest.output.layout) == ("NCHW", "flat")
    assert manifest.input.shape == (1, 28, 28)
    assert "from the encoder's input" in stdout


# --- what the importer cannot infer: asked with its flag ---


def test_a_flat_pair_needs_the_image_shape(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(exported["keras_flat"], tmp_path / "m", capsys=capsys)
    assert "--image-shape C,H,W" in err and "--image-shape 1,28,28" in err
    assert "'input_1' [N, 784]" in err


def test_mean_and_variance_unnamed_among_three_outputs_need_the_flags(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(exported["keras_nhwc"], tmp_path / "m", capsys=capsys)
    assert "--mean NAME" in err and "--logvar NAME" in err and "--kind ae" in err
    assert "StatefulPartitionedCall:0" in err and "StatefulPartitionedCall:1" in err
    # One named is enough when one other output is left besides the sample `z`.
    flags = ["--mean", "StatefulPartitionedCall:0"]
    code, stdout, stderr = run_importer(
        *exported["keras_nhwc"], tmp_path / "m", *flags, capsys=capsys
    )
    assert code == 0, stderr
    assert load_manifest(tmp_path / "m").latent.logvar_output == "StatefulPartitionedCall:1"
    assert "by elimination" in stdout


def test_a_flag_naming_no_output_is_refused_with_the_outputs(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(exported["color_vae"], tmp_path / "m", "--mean", "mean", capsys=capsys)
    assert "--mean 'mean'" in err and "['mu', 'logvar']" in err
    err = refused(exported["color_vae"], tmp_path / "m", "--image-output", "x", capsys=capsys)
    assert "--image-output 'x'" in err and "['recon']" in err


def test_logits_need_the_output_flag(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(exported["logits_ae"], tmp_path / "m", capsys=capsys)
    assert "'logits'" in err and "outside [0, 1]" in err
    assert "--output logits" in err and "--output probabilities" in err


def test_two_answers_for_the_decoders_values_are_refused(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--output", "logits", "--output-range=-1,1"]
    err = refused(exported["logits_ae"], tmp_path / "m", *flags, capsys=capsys)
    assert "--output and --output-range" in err


def test_a_vae_asked_of_an_ae_and_an_ae_asked_with_a_variance(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--output", "logits", "--kind", "vae"]
    err = refused(exported["logits_ae"], tmp_path / "m", *flags, capsys=capsys)
    assert "['code']" in err and "--kind ae" in err
    flags = ["--kind", "ae", "--logvar", "logvar"]
    err = refused(exported["color_vae"], tmp_path / "m", *flags, capsys=capsys)
    assert "--logvar" in err and "--kind ae" in err


def test_a_vae_imported_as_an_ae_reads_only_its_mean(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, stderr = run_importer(
        *exported["color_vae"], tmp_path / "m", "--kind", "ae", capsys=capsys
    )
    assert code == 0, stderr
    manifest = load_manifest(tmp_path / "m")
    assert (manifest.kind, manifest.latent.code_output) == ("ae", "mu")
    assert "ignored (the service does not read them): ['logvar']" in stdout


def test_a_variance_named_sigma_but_negative_needs_the_variance_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Named `std`, but a plain linear output: not a standard deviation.
    style = dataclasses.replace(
        STYLES["color_vae"], name="std", encoder_outputs=["mu", "std"], variance="std"
    )
    pair = export_style(style, tmp_path / "std")
    err = refused(pair, tmp_path / "m", capsys=capsys)
    assert "'std'" in err and "negative" in err
    assert "--variance logvar" in err and "--variance log_sigma" in err
    code, _, stderr = run_importer(*pair, tmp_path / "m", "--variance", "log_sigma", capsys=capsys)
    assert code == 0, stderr
    assert load_manifest(tmp_path / "m").latent.variance == "log_sigma"


def test_an_unnamed_variance_is_read_as_a_log_variance_and_said_so(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    style = dataclasses.replace(
        STYLES["color_vae"],
        name="pos",
        encoder_outputs=["out0", "out1"],
        mean="out0",
        variance="out1",
    )
    pair = export_style(style, tmp_path / "pos")
    code, stdout, stderr = run_importer(*pair, tmp_path / "m", capsys=capsys)
    assert code == 0, stderr
    manifest = load_manifest(tmp_path / "m")
    assert (manifest.latent.code_output, manifest.latent.logvar_output) == ("out0", "out1")
    assert manifest.latent.variance == "logvar"
    assert "by position (the first is the mean)" in stdout
    assert "assumed; --variance" in stdout


def test_an_unnamed_variance_never_negative_gets_a_note_suggesting_sigma(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # gray64_vae's softplus sigma, under names that say nothing.
    style = dataclasses.replace(
        STYLES["gray64_vae"],
        name="anon",
        encoder_outputs=["out0", "out1"],
        mean="out0",
        variance="out1",
    )
    pair = export_style(style, tmp_path / "anon")
    code, stdout, stderr = run_importer(*pair, tmp_path / "m", capsys=capsys)
    assert code == 0, stderr
    assert load_manifest(tmp_path / "m").latent.variance == "logvar"
    assert "note: 'out1' was never negative" in stdout and "--variance sigma" in stdout


def test_values_outside_the_declared_range_get_a_note(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--output", "probabilities"]
    code, stdout, stderr = run_importer(
        *exported["logits_ae"], tmp_path / "m", *flags, capsys=capsys
    )
    assert code == 0, stderr
    assert "outside [0, 1]: served as they are" in stdout
    manifest = load_manifest(tmp_path / "m")
    assert (manifest.output.activation, manifest.decoder.output_range) == ("none", None)


def test_channels_first_or_last_undecidable_needs_the_layout_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # [N, 3, 8, 3]: 3 channels first or last? The graph cannot say.
    encoder = tmp_path / "encoder.onnx"
    export(_FlatEncoder(3 * 8 * 3), torch.rand(2, 3, 8, 3), encoder, "x", ["mu", "logvar"])
    decoder = tmp_path / "decoder.onnx"
    export(_Decoder(3 * 8 * 3, (3, 8, 3)), torch.zeros(2, 4), decoder, "z", ["x"])
    err = refused((encoder, decoder), tmp_path / "m", capsys=capsys)
    assert "--input-layout NCHW or --input-layout NHWC" in err
    flags = ["--input-layout", "NCHW"]
    err = refused((encoder, decoder), tmp_path / "m", *flags, capsys=capsys)
    assert "--output-layout NCHW or --output-layout NHWC" in err
    flags += ["--output-layout", "NCHW"]
    code, _, stderr = run_importer(encoder, decoder, tmp_path / "m", *flags, capsys=capsys)
    assert code == 0, stderr
    assert load_manifest(tmp_path / "m").input.shape == (3, 8, 3)


def test_a_layout_flag_that_contradicts_the_rank_is_refused(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(exported["color_vae"], tmp_path / "m", "--input-layout", "flat", capsys=capsys)
    assert "--input-layout flat" in err and "rank 4" in err


# --- pairs that do not fit ---


def test_a_decoder_of_another_latent_size_is_refused(
    exported: dict[str, tuple[Path, Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(foreign_models, "LATENT", 8)
    _, decoder8 = export_style("color_vae", tmp_path / "latent8")
    err = refused((exported["color_vae"][0], decoder8), tmp_path / "m", capsys=capsys)
    assert "no encoder output is [N, 8]" in err and "'mu' [N, 4]" in err


def test_a_decoder_of_another_image_size_is_refused(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    style = dataclasses.replace(STYLES["color_vae"], name="small", chw=(3, 28, 28))
    _, small = export_style(style, tmp_path / "small")
    err = refused((exported["color_vae"][0], small), tmp_path / "m", capsys=capsys)
    assert "'recon'" in err and "[batch, 3, 32, 32]" in err
    assert "the decoder must give back images of the encoder's size and channels" in err


def test_a_decoder_of_other_channels_is_refused(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    style = dataclasses.replace(STYLES["color_vae"], name="gray", chw=(1, 32, 32))
    _, gray = export_style(style, tmp_path / "gray")
    err = refused((exported["color_vae"][0], gray), tmp_path / "m", capsys=capsys)
    assert "'recon'" in err and "[batch, 3, 32, 32]" in err and "channels" in err


def test_a_flat_decoder_of_the_wrong_size_is_refused(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    style = dataclasses.replace(STYLES["keras_flat"], name="flat27", chw=(1, 27, 27))
    _, small = export_style(style, tmp_path / "flat27")
    flags = ["--image-shape", "1,28,28"]
    err = refused((exported["keras_flat"][0], small), tmp_path / "m", *flags, capsys=capsys)
    assert "'dense_3'" in err and "[batch, 784]" in err


def test_a_fixed_batch_axis_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    encoder = tmp_path / "encoder.onnx"
    export(
        _FlatEncoder(784), torch.rand(1, 1, 28, 28), encoder, "x", ["mu", "logvar"], dynamic=False
    )
    _, decoder = export_style("gray64_vae", tmp_path / "d")  # any decoder: the encoder fails first
    err = refused((encoder, decoder), tmp_path / "m", "--image-shape", "1,28,28", capsys=capsys)
    assert "'x' has a fixed batch size of 1" in err and "dynamic batch" in err


def test_an_integer_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    encoder = tmp_path / "encoder.onnx"
    example = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    export(_BytesEncoder(), example, encoder, "pixels", ["mu", "logvar"])
    decoder = tmp_path / "decoder.onnx"
    export(_Decoder(784, (1, 28, 28)), torch.zeros(2, 4), decoder, "z", ["x"])
    err = refused((encoder, decoder), tmp_path / "m", capsys=capsys)
    assert "'pixels' is tensor(uint8)" in err and "float32" in err


def test_a_decoder_giving_nan_is_refused(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    decoder = tmp_path / "decoder.onnx"
    export(_Decoder(3 * 32 * 32, (3, 32, 32), nan=True), torch.zeros(2, 4), decoder, "z", ["x"])
    err = refused((exported["color_vae"][0], decoder), tmp_path / "m", capsys=capsys)
    assert "'x' holds NaN or infinity" in err


def test_a_graph_that_fails_on_some_batch_sizes_is_refused(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Declared [N, 3, 32, 32], but it pairs rows up: batches of odd size fail in onnxruntime.
    decoder = tmp_path / "decoder.onnx"
    export(_Decoder(3 * 32 * 32, (3, 32, 32), pairs=True), torch.zeros(2, 4), decoder, "z", ["x"])
    err = refused((exported["color_vae"][0], decoder), tmp_path / "m", capsys=capsys)
    assert f"--decoder {decoder} fails when run on" in err and "'z' [" in err
    assert "dynamic batch axis" in err


def test_missing_and_unreadable_files_are_refused(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    encoder, decoder = exported["color_vae"]
    err = refused((tmp_path / "nope.onnx", decoder), tmp_path / "m", capsys=capsys)
    assert f"--encoder {tmp_path / 'nope.onnx'}: no such file" in err
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")
    err = refused((encoder, garbage), tmp_path / "m", capsys=capsys)
    assert f"--decoder {garbage} is not an ONNX graph onnxruntime can load" in err


def test_an_existing_out_folder_needs_force_and_force_replaces_only_model_folders(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "models" / "m"
    (out / "keep").mkdir(parents=True)
    err = refused(exported["color_vae"], out, capsys=capsys)
    assert f"--out {out} already exists; pass --force" in err
    err = refused(exported["color_vae"], out, "--force", capsys=capsys)
    assert "not a model folder" in err
    assert (out / "keep").is_dir()
    (out / "keep").rmdir()
    code, _, stderr = run_importer(*exported["color_vae"], out, capsys=capsys)
    assert code == 0, stderr  # an empty folder is fine
    first = load_manifest(out)
    code, _, stderr = run_importer(*exported["gray64_vae"], out, "--force", capsys=capsys)
    assert code == 0, stderr
    assert load_manifest(out).input.shape == (1, 64, 64) != first.input.shape
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]


def test_a_bad_name_is_refused_naming_the_flag(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(exported["color_vae"], tmp_path / "m", "--name", "no spaces", capsys=capsys)
    assert "--name" in err


def test_a_model_the_service_refuses_is_not_written(
    exported: dict[str, tuple[Path, Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import service.importer.cli as cli

    def refuse(folder: Path, *args: object) -> None:
        raise ModelLoadError(f"model 'm': {folder / 'encoder.onnx'}: it is Tuesday")

    monkeypatch.setattr(cli.ModelRuntime, "load", refuse)
    out = tmp_path / "models" / "m"
    err = refused(exported["color_vae"], out, capsys=capsys)
    assert f"the service would refuse this model: model 'm': {out / 'encoder.onnx'}" in err
    assert list(out.parent.iterdir()) == []


def test_bad_flag_values_are_refused_by_the_parser(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for flags, said in (
        (["--image-shape", "4,28,28"], "channels 1 or 3"),
        (["--pixel-range", "1,0"], "LO must be below HI"),
        (["--output-range", "zero,one"], "is not LO,HI"),
        (["--kind", "gan"], "invalid choice"),
    ):
        code, _, stderr = run_importer(
            *exported["color_vae"], tmp_path / "m", *flags, capsys=capsys
        )
        assert code == 2 and said in stderr, stderr


def test_python_m_service_importer(exported: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    encoder, decoder = exported["logits_ae"]
    command = [sys.executable, "-m", "service.importer", "--encoder", str(encoder)]
    command += ["--decoder", str(decoder), "--out", str(tmp_path / "logits")]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--output logits" in done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run([*command, "--output", "logits"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "imported 'logits' into" in done.stdout and "an AE of latent_dim 4" in done.stdout
    assert load_manifest(tmp_path / "logits").output.activation == "sigmoid"


# --- calibration -------------------------------------------------------------------------------


def _normal(chw: tuple[int, int, int], n: int = MIN_IMAGES) -> np.ndarray:
    """uint8 images at a style's size, as a user's .npy holds them: (N, H, W) or (N, H, W, 3)."""
    c, h, w = chw
    images = np.random.default_rng(0).integers(0, 256, (n, h, w, c), dtype=np.uint8)
    return images[..., 0] if c == 1 else images


@pytest.mark.parametrize(
    ("name", "score"),
    [
        ("keras_nhwc", "complexity_residual"),
        ("logits_ae", "reconstruction_error"),
        ("color_vae", "complexity_residual"),
    ],
)
def test_calibration_images_calibrate_the_imported_model(
    name: str,
    score: str,
    exported: dict[str, tuple[Path, Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = _normal(STYLES[name].chw)
    np.save(tmp_path / "normal.npy", images)
    out = tmp_path / "models" / "calibrated"
    flags = [*MINIMAL_FLAGS[name], "--calibration-images", str(tmp_path / "normal.npy")]
    code, stdout, stderr = run_importer(*exported[name], out, *flags, capsys=capsys)
    assert code == 0, stderr
    assert f"  calibrated: {score} on 1,000 images of {tmp_path / 'normal.npy'}" in stdout
    assert "not calibrated" not in stdout
    load_manifest(out)  # the service's schema and checksums
    written = json.loads((out / "manifest.json").read_text())["score_calibration"]
    calibration = ScoreCalibration.model_validate(written)
    assert calibration.score == score
    assert calibration.split == "normal.npy: 1,000 normal images given to the importer"
    assert calibration.images == MIN_IMAGES and len(calibration.quantiles) == 1001
    # The numbers are the service's: recalibrating the written folder gives the same ones.
    assert calibrate_folder(out, images, calibration.split) == calibration


def test_without_calibration_images_the_summary_says_what_is_missing(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "models" / "plain"
    code, stdout, stderr = run_importer(*exported["color_vae"], out, capsys=capsys)
    assert code == 0, stderr
    assert (
        "  not calibrated: /score answers reconstruction_error, without percentiles or a "
        "calibrated threshold\n    to calibrate on 1,000+ normal images: --calibration-images "
        f"NORMAL.npy, or later python -m service.calibrate {out} --images NORMAL.npy\n"
    ) in stdout
    assert json.loads((out / "manifest.json").read_text()).get("score_calibration") is None


def test_calibration_images_that_do_not_fit_are_refused(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair, out = exported["color_vae"], tmp_path / "models" / "refused"
    for images, said in (
        (_normal((1, 32, 32)), "the model takes (N, 32, 32, 3) images"),
        (_normal((3, 28, 28)), "resize them to 32 x 32 first"),
        (_normal((3, 32, 32), MIN_IMAGES - 1), "999 images; calibration needs at least 1,000"),
    ):
        np.save(tmp_path / "normal.npy", images)
        stderr = refused(
            pair, out, "--calibration-images", str(tmp_path / "normal.npy"), capsys=capsys
        )
        assert f"--calibration-images {tmp_path / 'normal.npy'}" in stderr and said in stderr
    stderr = refused(
        pair, out, "--calibration-images", str(tmp_path / "nowhere.npy"), capsys=capsys
    )
    assert "nowhere.npy: not a readable .npy file" in stderr


def _masked(text: str) -> str:
    """Output lines with what an untrained network's values change masked: numbers, and the
    background verdict (a coin toss on mid-grey pictures)."""
    text = re.sub(r"-?\d+\.\d+(e-?\d+)?", "#", text)
    return re.sub(r"background (dark|light)", "background ?", text)


def test_the_pytorch_example_of_the_docs_runs_as_the_page_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/serving-your-model.md: its PyTorch export code, then its importer commands, with the
    output the page shows."""
    page = (ROOT / "docs" / "serving-your-model.md").read_text()
    section = page.split("## A PyTorch example")[1].split("\n## ")[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    [console] = re.findall(r"```console\n(.*?)```", section, re.DOTALL)
    (tmp_path / "export_vae.py").write_text(code)
    done = subprocess.run(
        [sys.executable, "export_vae.py"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    monkeypatch.chdir(tmp_path)
    commands = re.split(r"^\$ ", console, flags=re.MULTILINE)[1:]
    assert len(commands) == 2
    for command in commands:
        line, _, shown = command.partition("\n")
        argv = line.split()
        assert argv[:3] == ["python", "-m", "service.importer"]
        code = main(argv[3:])
        captured = capsys.readouterr()
        assert code == (2 if shown.startswith("error:") else 0)
        assert _masked(captured.out + captured.err) == _masked(shown)


# --- small graphs the styles do not cover ---


def export(
    module: nn.Module,
    example: Tensor,
    path: Path,
    input_name: str,
    output_names: list[str],
    dynamic: bool = True,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes={input_name: {0: "N"}} if dynamic else None,
            dynamo=False,
            opset_version=17,
        )


class _FlatEncoder(nn.Module):
    """Any image tensor, flattened: a mean and a log-variance of 4."""

    def __init__(self, values: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(values, 8)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.net(x.reshape(x.shape[0], -1))
        return h[:, :4], h[:, 4:]


class _BytesEncoder(_FlatEncoder):
    """Takes 8-bit pixels, as some exporters leave a Rescaling layer's input."""

    def __init__(self) -> None:
        super().__init__(784)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return super().forward(x.float() / 255)


class _Decoder(nn.Module):
    """z -> sigmoid images of `shape`; `nan`: every value NaN; `pairs`: rows reshaped in pairs
    on the way (which fails on a batch of odd size)."""

    def __init__(self, values: int, shape: tuple[int, ...], nan: bool = False, pairs: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, values)
        self.shape, self.nan, self.pairs = shape, nan, pairs

    def forward(self, z: Tensor) -> Tensor:
        x = torch.sigmoid(self.net(z))
        if self.nan:
            x = x * torch.tensor(float("nan"))
        if self.pairs:
            x = x.reshape(-1, 2, x.shape[1])
        return x.reshape(-1, *self.shape)


class _LightDecoder(_Decoder):
    def __init__(self) -> None:
        super().__init__(3 * 32 * 32, (3, 32, 32))

    def forward(self, z: Tensor) -> Tensor:
        return 0.8 + 0.2 * super().forward(z)


# --- end to end: imported, served, and answered as the ONNX files answer ---

NPY = "application/x-npy"


@pytest.fixture(scope="module")
def imported_models(
    exported: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Every style imported with its minimal flags into one model folder."""
    models = tmp_path_factory.mktemp("models")
    for name, (encoder, decoder) in exported.items():
        argv = ["--encoder", str(encoder), "--decoder", str(decoder)]
        assert (
            main([*argv, "--out", str(models / name.replace("_", "-")), *MINIMAL_FLAGS[name]]) == 0
        )
    return models


@pytest.fixture(scope="module")
def served(imported_models: Path) -> Iterator[TestClient]:
    settings = Settings(model_dir=imported_models, default_model="color-vae")
    with TestClient(create_app(settings)) as client:
        yield client


def png_tile(content: bytes, h: int, w: int, c: int) -> np.ndarray:
    """The first tile of a PNG grid, (H, W, C) in [0, 1]."""
    with Image.open(io.BytesIO(content)) as grid:
        assert grid.mode == ("L" if c == 1 else "RGB")
        pixels = np.asarray(grid, np.float32) / 255
    return pixels[:h, :w].reshape(h, w, c)


@pytest.mark.parametrize("name", sorted(STYLES))
def test_an_imported_model_answers_as_its_onnx_files_do(
    name: str, served: TestClient, exported: dict[str, tuple[Path, Path]]
) -> None:
    style = STYLES[name]
    reference = Reference(style, *exported[name])
    model = name.replace("_", "-")
    c, h, w = style.chw
    info = served.get(f"/models/{model}").json()
    assert info["image_shape"] == ([h, w] if c == 1 else [h, w, c])
    images = np.random.default_rng(0).random((3, h, w, c), dtype=np.float32)
    mu, logvar = reference.encode(images)
    z = np.random.default_rng(1).standard_normal((2, foreign_models.LATENT)).astype(np.float32)
    as_npy = {"Content-Type": NPY, "Accept": NPY}

    encoded = served.post("/encode", json={"model": model, "images": public(images).tolist()})
    assert encoded.status_code == 200, encoded.text
    close(encoded.json()["mu"], mu)
    assert (encoded.json()["logvar"] is None) == (logvar is None)
    if logvar is not None:
        close(encoded.json()["logvar"], logvar)
    archive = np.load(
        io.BytesIO(
            served.post(
                f"/encode?model={model}", content=npy(public(images)), headers=as_npy
            ).content
        )
    )
    close(archive["mu"], mu)

    body = {"model": model, "images": public(images).tolist()}
    close(served.post("/reconstruct", json=body).json()["images"], public(reference.decode(mu)))
    answer = served.post(f"/reconstruct?model={model}", content=npy(public(images)), headers=as_npy)
    close(np.load(io.BytesIO(answer.content)), public(reference.decode(mu)))
    answer = served.post("/reconstruct", json=body, headers={"Accept": "image/png"})
    close(png_tile(answer.content, h, w, c), reference.decode(mu)[0], atol=0.5 / 255 + 1e-6)

    close(
        served.post("/decode", json={"model": model, "z": z.tolist()}).json()["images"],
        public(reference.decode(z)),
    )
    answer = served.post(f"/decode?model={model}", content=npy(z), headers=as_npy)
    close(np.load(io.BytesIO(answer.content)), public(reference.decode(z)))
    answer = served.post(
        "/decode", json={"model": model, "z": z.tolist()}, headers={"Accept": "image/png"}
    )
    close(png_tile(answer.content, h, w, c), reference.decode(z)[0], atol=0.5 / 255 + 1e-6)

    if style.kind == "vae":
        generated = served.post("/generate", json={"model": model, "n": 2, "seed": 3}).json()
        prior = np.asarray(generated["z"], np.float32)
        close(generated["images"], public(reference.decode(prior)))
        answer = served.post(
            "/generate", json={"model": model, "n": 2, "seed": 3}, headers={"Accept": "image/png"}
        )
        close(png_tile(answer.content, h, w, c), reference.decode(prior)[0], atol=0.5 / 255 + 1e-6)
