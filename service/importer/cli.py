"""`python -m service.importer`: an encoder and a decoder ONNX file from any framework -> a model
folder the service serves (the two files and a manifest.json).

It infers what the graphs tell (kind, mean and variance outputs, image layouts and shape, whether
the decoder gives logits, the images' background), asks with a flag named in its message for
what they do not, runs both graphs as the service will, and loads the folder with the service's
own `ModelRuntime.load` before anything is written to --out. Exit code 0 and a summary; 2 and one
message on any problem.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import onnxruntime as ort
from numpy.typing import NDArray
from pydantic import ValidationError

from service import __version__
from service.calibration import (
    MIN_IMAGES,
    CalibrationError,
    calibration_for,
    manifest_text,
    read_npy,
)
from service.importer.graphs import (
    Graph,
    ImportRefused,
    Tensor,
    first_line,
    image_layout,
    image_shape,
    latent_outputs,
    latent_size,
    open_graph,
    variance_from_name,
)
from service.importer.probe import (
    PRIOR_SAMPLES,
    OutputKind,
    check_pair,
    decoder_value_range,
    decoder_values,
    judge_background,
)
from service.manifest import (
    NAME_PATTERN,
    RESAMPLE_METHODS,
    Background,
    FlatOrder,
    Layout,
    Manifest,
    ModelLoadError,
    Variance,
    sha256sum,
)
from service.models.adapter import signature_problems
from service.models.runtime import CPU, ModelRuntime
from service.scoring import UNCALIBRATED_SCORE, ScoreCalibration
from service.settings import Settings

STAGED_MANIFEST = "manifest.json.importing"  # not manifest.json: a rescan must not see it yet


@dataclass
class ImportOptions:
    """What the command line says; None: infer it."""

    encoder: Path
    decoder: Path
    out: Path
    name: str | None = None
    description: str | None = None
    version: str = "1"
    kind: Literal["ae", "vae"] | None = None
    mean: str | None = None
    logvar: str | None = None
    variance: Variance | None = None
    image_shape: tuple[int, int, int] | None = None
    input_layout: Layout | None = None
    output_layout: Layout | None = None
    flat_order: FlatOrder = "HWC"
    image_output: str | None = None
    output: OutputKind | None = None
    output_range: tuple[float, float] | None = None
    pixel_range: tuple[float, float] = (0.0, 1.0)
    invert: bool = False
    background: Background | None = None
    resample: str = "bilinear"
    force: bool = False
    calibration_images: Path | None = None


@dataclass
class Imported:
    manifest: Manifest
    folder: Path
    lines: list[str] = field(default_factory=list)  # the summary

    @property
    def summary(self) -> str:
        return "\n".join(self.lines)


def _pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI (two numbers)") from None
    if not low < high:
        raise argparse.ArgumentTypeError(f"{text!r}: LO must be below HI")
    return low, high


def _chw(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not C,H,W (three whole numbers)") from None
    if c not in (1, 3) or h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: channels 1 or 3, height and width >= 1")
    return c, h, w


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m service.importer",
        description="Write a model folder the service serves from an encoder and a decoder ONNX "
        "file: infers what the graphs tell, asks (a flag) for what they do not, runs both graphs "
        "and loads the folder as the service would before writing it.",
    )
    layouts = ["NCHW", "NHWC", "flat"]
    add = p.add_argument
    add("--encoder", type=Path, required=True, help="the encoder's ONNX file (images -> latent)")
    add("--decoder", type=Path, required=True, help="the decoder's ONNX file (latent -> images)")
    add("--out", type=Path, required=True, help="the model folder to write, e.g. models/NAME")
    add("--name", help="the model's name in the API (default: the --out folder's name)")
    add("--description", help="a line for GET /models")
    add("--version", default="1", help="the model's version (default 1)")
    add("--kind", choices=["ae", "vae"], help="autoencoder or VAE (default: from the outputs)")
    add("--mean", metavar="NAME", help="the encoder output holding the mean (an AE: its code)")
    add("--logvar", metavar="NAME", help="the encoder output holding the variance")
    add("--variance", choices=["logvar", "log_sigma", "sigma"], help="what --logvar holds")
    add("--image-shape", type=_chw, metavar="C,H,W", help="channels (1 or 3), height, width")
    add("--input-layout", choices=layouts, help="how the encoder's input holds the images")
    add("--output-layout", choices=layouts, help="how the decoder's output holds the images")
    add("--flat-order", choices=["HWC", "CHW"], default="HWC", help="a flat row's order")
    add("--image-output", metavar="NAME", help="the decoder output holding the images")
    add("--output", choices=["logits", "probabilities"], help="what the decoder gives")
    add("--output-range", type=_pair, metavar="LO,HI", help="the decoder's pixel range")
    add("--pixel-range", type=_pair, default=(0.0, 1.0), metavar="LO,HI", help="default 0,1")
    add("--invert", action="store_true", help="the training images were inverted")
    add("--background", choices=["dark", "light"], help="the images' background")
    add("--resample", choices=RESAMPLE_METHODS, default="bilinear", help="to resize uploads")
    add("--force", action="store_true", help="replace an existing model folder --out")
    add(
        "--calibration-images",
        type=Path,
        metavar="NORMAL.npy",
        help=f"at least {MIN_IMAGES:,} normal images the model did not train on (N x H x W or "
        "N x H x W x C, uint8 or float 0-1, at the model's size): /score's percentiles and "
        "threshold at 1 %% false positives come from them",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its message
        return exc.code if isinstance(exc.code, int) else 2
    options = ImportOptions(**vars(args))
    try:
        imported = import_model(options)
    except ImportRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(imported.summary)
    return 0


def import_model(options: ImportOptions) -> Imported:
    """Inspect, check and write; the folder is written only when everything fits."""
    out = options.out
    _check_out(out, options.force)
    encoder = open_graph(options.encoder, "--encoder")
    decoder = open_graph(options.decoder, "--decoder")
    normal = _calibration_images(options.calibration_images)
    inferred = infer(options, encoder, decoder)
    imported = Imported(inferred.manifest, out, inferred.summary(options, encoder, decoder))
    calibration = _write(options, imported.manifest, normal)
    imported.lines += _calibration_lines(options, calibration)
    return imported


def _calibration_images(path: Path | None) -> NDArray[Any] | None:
    """The --calibration-images array, read before any other work (its fit to the model is
    checked once the image shape is known)."""
    if path is None:
        return None
    try:
        return read_npy(path, "--calibration-images")
    except CalibrationError as exc:
        raise ImportRefused(str(exc)) from exc


def _calibration_lines(options: ImportOptions, calibration: ScoreCalibration | None) -> list[str]:
    if calibration is None:
        return [
            f"  not calibrated: /score answers {UNCALIBRATED_SCORE}, without percentiles or a "
            "calibrated threshold",
            f"    to calibrate on {MIN_IMAGES:,}+ normal images: --calibration-images NORMAL.npy, "
            f"or later python -m service.calibrate {options.out} --images NORMAL.npy",
        ]
    return [
        f"  calibrated: {calibration.score} on {calibration.images:,} images of "
        f"{options.calibration_images}, threshold {calibration.threshold:.6g} at "
        f"{calibration.target_fpr:.0%} false positives"
    ]


def _check_out(out: Path, force: bool) -> None:
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not force:
        raise ImportRefused(
            f"--out {out} already exists; pass --force to replace it, or another --out"
        )
    if not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file()):
        raise ImportRefused(
            f"--out {out} is not a model folder (no manifest.json in it); --force replaces "
            "model folders only: choose another --out"
        )


@dataclass
class Inferred:
    """The manifest, and how each of its answers was found."""

    manifest: Manifest
    chw_from: str
    latent_how: str
    variance_how: str
    values_how: str
    background_how: str
    ignored: list[str]
    decoder_ignored: list[str]
    notes: list[str]  # what the user may want to act on

    def summary(self, options: ImportOptions, encoder: Graph, decoder: Graph) -> list[str]:
        m = self.manifest
        c, h, w = m.input.shape
        images = f"{c} x {h} x {w} ({'grayscale' if c == 1 else 'RGB'}, from {self.chw_from})"
        enc_in, dec_in = encoder.inputs[0], decoder.inputs[0]
        layout = _layout_text(m.input.layout, m.input.flat_order)
        lo, hi = m.input.pixel_range
        kind = "an AE" if m.kind == "ae" else "a VAE"
        color = "grayscale" if c == 1 else "RGB"
        lines = [
            f"imported {m.name!r} into {options.out}: {kind} of latent_dim {m.latent_dim}, "
            f"images {images}",
            f"  encoder {enc_in.text}: {layout}, pixels in [{lo:g}, {hi:g}]",
        ]
        if m.latent.logvar_output is not None:
            lines.append(
                f"    mean {m.latent.code_output!r}, variance {m.latent.logvar_output!r} "
                f"({self.latent_how}), read as {m.latent.variance} ({self.variance_how})"
            )
        else:
            lines.append(f"    code {m.latent.code_output!r} ({self.latent_how})")
        if self.ignored:
            lines.append(f"    ignored (the service does not read them): {self.ignored}")
        out_layout = _layout_text(m.output.layout, m.output.flat_order)
        lines.append(
            f"  decoder {dec_in.text} -> {m.image_output!r}: {out_layout}, {self.values_how}"
        )
        if self.decoder_ignored:
            lines.append(f"    ignored (the service does not read them): {self.decoder_ignored}")
        lines += [
            f"  uploads: {color}, resized ({m.input.preprocessing['resample']}) to {w} x {h}; "
            f"background {m.input.background} ({self.background_how})",
            "  checked: both graphs on batches of 1 and 3 (black and random images, prior "
            "samples), and the service loads the folder",
        ]
        return lines + [f"  note: {note}" for note in self.notes]


def _layout_text(layout: Layout, order: FlatOrder) -> str:
    return f"flat ({order} order)" if layout == "flat" else layout


def infer(options: ImportOptions, encoder: Graph, decoder: Graph) -> Inferred:
    """Everything the manifest says, from the flags, the graphs' tensors and runs of them."""
    latent = latent_size(encoder, decoder)
    image_tensor, decoder_ignored = _image_output(decoder, options.image_output)
    encoder_images = image_layout(encoder.inputs[0], "encoder", options.input_layout)
    decoder_images = image_layout(image_tensor, "decoder", options.output_layout)
    chw, chw_from = image_shape(encoder_images, decoder_images, options.image_shape)
    outputs = latent_outputs(encoder, latent, options.kind, options.mean, options.logvar)
    variance, variance_how = _variance(options.variance, outputs.variance)
    fields: dict[str, Any] = {
        "kind": outputs.kind,
        "latent_dim": latent,
        "chw": chw,
        "input_layout": encoder_images.layout,
        "output_layout": decoder_images.layout,
        "image_output": image_tensor.name,
        "mean": outputs.mean,
        "variance_output": outputs.variance,
        "variance": variance,
        "activation": "none",
        "output_range": None,
        "background": "dark",
    }
    manifest = _manifest(options, encoder, decoder, fields)
    problems = signature_problems(
        manifest, [*encoder.inputs, *encoder.outputs], [*decoder.inputs, *decoder.outputs]
    )
    if problems:
        graphs = {"encoder": encoder, "decoder": decoder}
        raise ImportRefused(
            "the graphs do not fit together: "
            + "; ".join(f"{graphs[g].flag} {graphs[g].path}: {p}" for g, p in problems)
        )
    seen = decoder_value_range(manifest, decoder)
    values = decoder_values(image_tensor.name, seen, options.output, options.output_range)
    fields |= {"activation": values.activation, "output_range": values.output_range}
    manifest = _manifest(options, encoder, decoder, fields)
    background_how = "--background"
    if options.background is None:
        fields["background"] = judge_background(manifest, decoder)
        background_how = f"judged from the border of {PRIOR_SAMPLES} decoded prior samples"
    else:
        fields["background"] = options.background
    manifest = _manifest(options, encoder, decoder, fields)
    clip_expected = options.output == "probabilities" or options.output_range is not None
    lowest_variance = check_pair(manifest, encoder, decoder, clip_expected)
    _check_variance_values(outputs.variance, variance, variance_how, lowest_variance)
    notes = _notes(options, seen, outputs.variance, variance_how, lowest_variance)
    return Inferred(
        manifest,
        chw_from,
        outputs.how,
        variance_how,
        values.how,
        background_how,
        outputs.ignored,
        decoder_ignored,
        notes,
    )


def _notes(
    options: ImportOptions,
    seen: tuple[float, float],
    variance_output: str | None,
    variance_how: str,
    lowest_variance: float,
) -> list[str]:
    """What the flags or the assumptions may have got wrong, judging by the values seen."""
    notes = []
    if variance_output is not None and variance_how.startswith("assumed") and lowest_variance >= 0:
        notes.append(
            f"{variance_output!r} was never negative on the test images, as a standard "
            "deviation would be; if it is one, import again with --variance sigma"
        )
    low, high = seen
    wanted = options.output_range or (0.0, 1.0)
    if options.output != "logits" and (low < wanted[0] or high > wanted[1]):
        notes.append(
            f"the decoder gave values {low:.3g} .. {high:.3g} on prior samples, outside "
            f"[{wanted[0]:g}, {wanted[1]:g}]"
            + (": they are clipped" if options.output_range else ": served as they are")
        )
    return notes


def _image_output(decoder: Graph, name: str | None) -> tuple[Tensor, list[str]]:
    """The decoder output holding the images: --image-output, else the first of rank 2 or 4."""
    if name is not None:
        if name not in decoder.output_names:
            raise ImportRefused(
                f"--image-output {name!r}: the decoder has no such output; its outputs are "
                f"{decoder.output_names}"
            )
        chosen = decoder.output(name)
    else:
        chosen = next((t for t in decoder.outputs if len(t.shape) in (2, 4)), decoder.outputs[0])
    return chosen, [t.name for t in decoder.outputs if t.name != chosen.name]


def _variance(given: Variance | None, output: str | None) -> tuple[Variance, str]:
    if output is None:
        return "logvar", ""
    if given is not None:
        return given, "--variance"
    named = variance_from_name(output)
    if named is not None:
        return named, "from its name; --variance to change"
    return "logvar", "assumed; --variance log_sigma or sigma if it is not"


def _check_variance_values(output: str | None, variance: Variance, how: str, low: float) -> None:
    """A standard deviation is not negative: an output read as sigma that is must be another."""
    if output is None or variance != "sigma" or low >= 0:
        return
    said = "--variance sigma" if how == "--variance" else f"its name {output!r}"
    raise ImportRefused(
        f"{said} says {output!r} is a standard deviation, but it gives negative values "
        f"(down to {low:.3g}) on the test images: pass --variance logvar or --variance log_sigma "
        "for what it holds"
    )


def _tensor_spec(tensor: Tensor) -> dict[str, Any]:
    dims = [d if isinstance(d, int) else (d or "?") for d in tensor.shape]
    if dims and not isinstance(dims[0], int):
        dims[0] = "batch"
    return {"name": tensor.name, "dtype": "float32", "shape": dims}


def _manifest(
    options: ImportOptions, encoder: Graph, decoder: Graph, f: dict[str, Any]
) -> Manifest:
    """The manifest of `f`'s answers, validated by the service's own schema."""
    name = options.name or options.out.name
    c, h, w = f["chw"]
    lo, hi = options.pixel_range
    scale = "pixel / 255" + ("" if (lo, hi) == (0.0, 1.0) else f", mapped to [{lo:g}, {hi:g}]")
    vae = f["kind"] == "vae"
    producers = {"encoder": encoder.producer, "decoder": decoder.producer}
    document: dict[str, Any] = {
        "name": name,
        "version": options.version,
        "description": options.description
        if options.description is not None
        else f"{f['kind'].upper()} imported from {encoder.path.name} and {decoder.path.name}",
        "kind": f["kind"],
        "latent_dim": f["latent_dim"],
        "input": {
            "shape": [c, h, w],
            "dtype": "float32",
            "pixel_range": [lo, hi],
            "preprocessing": {
                "color": "grayscale (PIL mode 'L')" if c == 1 else "RGB (PIL mode 'RGB')",
                "resize": [h, w],
                "resample": options.resample,
                "scale": scale,
                "invert": options.invert,
            },
            "layout": f["input_layout"],
            "flat_order": options.flat_order,
            "background": f["background"],
        },
        "encoder": _graph_entry(encoder, "encoder.onnx"),
        "decoder": {**_graph_entry(decoder, "decoder.onnx"), "output_range": f["output_range"]},
        "output": {
            "tensor": f["image_output"],
            "layout": f["output_layout"],
            "flat_order": options.flat_order,
            "activation": f["activation"],
        },
        "latent": {
            "code_output": f["mean"],
            "logvar_output": f["variance_output"],
            "variance": f["variance"],
            "sigma": "exp(logvar / 2)" if vae else None,
            "prior": "standard normal N(0, I)" if vae else None,
        },
        "opset": max(encoder.opset, decoder.opset),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "package_version": __version__,
        "producer": {
            "importer": "python -m service.importer",
            "onnxruntime": ort.__version__,
            **{graph: text for graph, text in producers.items() if text},
        },
    }
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        hint = f" (--name must match {NAME_PATTERN})" if "name" in problems else ""
        raise ImportRefused(f"the manifest would be invalid: {problems}{hint}") from exc


def _graph_entry(graph: Graph, file: str) -> dict[str, Any]:
    return {
        "file": file,
        "sha256": sha256sum(graph.path),
        "inputs": [_tensor_spec(t) for t in graph.inputs],
        "outputs": [_tensor_spec(t) for t in graph.outputs],
    }


def _write(
    options: ImportOptions, manifest: Manifest, normal: NDArray[Any] | None = None
) -> ScoreCalibration | None:
    """Copy the files and write the manifest into a hidden folder beside --out, load it as the
    service does (and calibrate it on `normal` images, if given), then rename it to --out (and
    its manifest to manifest.json, which a service rescanning the folder sees only then)."""
    out = options.out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", suffix=".importing", dir=out.parent))
    try:
        shutil.copyfile(options.encoder, staging / manifest.encoder.file)
        shutil.copyfile(options.decoder, staging / manifest.decoder.file)
        text = json.dumps(manifest.model_dump(mode="json", exclude_none=False), indent=2) + "\n"
        (staging / STAGED_MANIFEST).write_text(text)
        runtime = _load_as_the_service_does(staging, manifest, text, out)
        calibration = None
        if normal is not None:
            calibration = _calibrate(runtime, normal, options)
            (staging / STAGED_MANIFEST).write_text(manifest_text(text, calibration))
        replaced = None
        if out.exists():
            replaced = staging.with_name(staging.name.replace(".importing", ".replaced"))
            out.rename(replaced)
        staging.rename(out)
        (out / STAGED_MANIFEST).rename(out / "manifest.json")
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return calibration


def _calibrate(
    runtime: ModelRuntime, normal: NDArray[Any], options: ImportOptions
) -> ScoreCalibration:
    path = options.calibration_images
    assert path is not None
    try:
        return calibration_for(
            runtime,
            normal,
            split=f"{path.name}: {len(normal):,} normal images given to the importer",
            what=f"--calibration-images {path}",
        )
    except CalibrationError as exc:
        raise ImportRefused(str(exc)) from exc


def _load_as_the_service_does(
    staging: Path, manifest: Manifest, text: str, out: Path
) -> ModelRuntime:
    """`ModelRuntime.load` (checksums, signatures, warm-up) on a folder of links to the staged
    files, with the default settings (not the environment's VAE_*) on the CPU; the runtime
    stays usable (its sessions hold the graphs) to calibrate."""
    with tempfile.TemporaryDirectory(prefix="vae-import-") as check:
        folder = Path(check)
        for file in (manifest.encoder.file, manifest.decoder.file):
            (folder / file).symlink_to((staging / file).resolve())
        (folder / "manifest.json").write_text(text)
        try:
            with ThreadPoolExecutor(1) as executor:
                return ModelRuntime.load(folder, Settings.model_construct(), [CPU], executor)
        except ModelLoadError as exc:
            problem = str(exc).replace(str(folder), str(out))
            raise ImportRefused(f"the service would refuse this model: {problem}") from exc
        except Exception as exc:  # a load that crashes is the service's bug, but still a refusal
            raise ImportRefused(
                f"the service fails to load this model ({type(exc).__name__}: "
                f"{first_line(exc)}); it cannot be served by this version of the service"
            ) from exc
