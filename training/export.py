"""Export a trained run as two ONNX files and a manifest that describes them (and a latent map).

  encoder.onnx     x (N, C, H, W) float32 in [0, 1] -> mu, logvar (N, latent)   [VAE]
                   x (N, C, H, W) float32 in [0, 1] -> z (N, latent)            [AE]
  decoder.onnx     z (N, latent) float32 -> x_mean (N, C, H, W) float32 in [0, 1]
                   (C, H, W: the run's images, 1 x 28 x 28 for MNIST; NCHW, channels first)
  manifest.json    everything the service needs to load, check and describe them, checked
                   against the service's own schema (service.manifest) before anything is kept
  latent_map.json  latent_dim 2 only: the test split's latent means (AE: codes) and labels, for
                   a scatter of the latent space; left out, with a warning, when the run's
                   dataset cannot be read at export time

The manifest also keeps the score calibration (`score_calibration`): the distribution of the
model's default anomaly score on the run's validation split, scored by the service's own runtime
(service.calibration), so that `/score` answers percentiles and a threshold at 1 % false
positives without ever scoring data at start-up. Left out, with a warning, when the data cannot
be read or the validation split is smaller than service.calibration.MIN_IMAGES.

Neither graph holds a random operator: sampling z = mu + exp(logvar / 2) * eps is the service's
job, so that it can be seeded per request. Each file is self-contained (no external-data side
file) and has a dynamic batch axis; onnxruntime must reproduce torch's outputs at several batch
sizes or the export fails.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
import warnings
from contextlib import redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from service.calibration import MIN_IMAGES, CalibrationError, calibrate_folder
from service.codecs.images import light_background
from service.manifest import Background, ModelLoadError, load_latent_map, load_manifest, sha256sum
from training import __version__
from training.config import TrainConfig
from training.data import IDX_DATASETS, SPLIT_SEED, DatasetError, Splits, preprocessing
from training.evaluate import test_images
from training.model import AutoEncoder
from training.train import LoadedRun, load_run, load_run_splits

logger = logging.getLogger(__name__)

OPSET = 18
PARITY_BATCH_SIZES = (1, 2, 7, 64)
PARITY_ATOL = 1e-4  # well above float32 accumulation differences between the two runtimes
RANDOM_OPS = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}
MANIFEST_VERSION = 1
LATENT_MAP_FILE = "latent_map.json"
LATENT_MAP_DECIMALS = 3  # finer than a scatter plot shows; keeps the file small
BACKGROUND_SAMPLES = 256  # decoded images that judge the background when the data is not at hand
NO_CALIBRATION = (
    "no score calibration written (/score answers without percentiles; calibrate later with "
    "python -m service.calibrate MODEL_FOLDER --images normal.npy)"
)


class ExportError(RuntimeError):
    """The exported graphs are not what the service may trust; the message says why."""


class EncoderGraph(nn.Module):
    def __init__(self, model: AutoEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        mu, logvar = self.model.encode(x)
        return (mu,) if logvar is None else (mu, logvar)


class DecoderGraph(nn.Module):
    def __init__(self, model: AutoEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: Tensor) -> Tensor:
        # The sigmoid turns logits into pixel means in [0, 1], the images the service returns.
        logits = self.model.decode_logits(z)
        return torch.sigmoid(logits).reshape(-1, *self.model.config.image_shape)


def _export_graph(
    module: nn.Module, example: Tensor, input_name: str, output_names: list[str], path: Path
) -> None:
    # Batch 2 in the example: an example of batch 1 lets the exporter specialise the batch axis.
    batch = torch.export.Dim("batch", min=1)
    buffer = io.StringIO()
    with warnings.catch_warnings(), redirect_stdout(buffer):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[input_name],
            output_names=output_names,
            dynamic_shapes={input_name: {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        program.save(str(path), external_data=False)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    found = sorted({n.op_type for n in graph.graph.node} & RANDOM_OPS)
    if found:
        raise ExportError(f"{path.name}: the graph holds random operators {found}")
    leftovers = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "."))
    if leftovers:
        raise ExportError(f"{path.name}: exporter wrote external data files {leftovers}")
    dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim.dim_param:
        raise ExportError(f"{path.name}: batch axis was fixed to {dim.dim_value}, not dynamic")


def check_parity(
    module: nn.Module,
    path: Path,
    make_input: Any,
    input_name: str,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
    atol: float = PARITY_ATOL,
) -> dict[str, float]:
    """Max abs difference between torch and onnxruntime per batch size; raises above `atol`."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs: dict[str, float] = {}
    for n in batch_sizes:
        x = make_input(n)
        with torch.no_grad():
            expected = module(x)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(None, {input_name: x.numpy()})
        if len(got) != len(expected):
            raise ExportError(
                f"{path.name}: {len(got)} outputs from onnxruntime, {len(expected)} from torch"
            )
        diff = max(float(np.max(np.abs(g - e.numpy()))) for g, e in zip(got, expected, strict=True))
        for g, e in zip(got, expected, strict=True):
            if g.shape != tuple(e.shape):
                raise ExportError(
                    f"{path.name}: batch {n}: shape {g.shape} != torch's {tuple(e.shape)}"
                )
        if not diff <= atol:
            raise ExportError(
                f"{path.name}: batch {n}: onnxruntime differs from torch by {diff:.3g} (> {atol})"
            )
        diffs[str(n)] = diff
    return diffs


def _tensor_spec(name: str, shape: list[int | str]) -> dict[str, Any]:
    return {"name": name, "dtype": "float32", "shape": shape}


def load_training_splits(
    run: LoadedRun, data_dir: str | None, consequences: list[str]
) -> Splits | None:
    """The run's splits as training preprocessed them; None, with one warning that says why and
    what follows from it (`consequences`), when they cannot be read (nothing is downloaded)."""
    try:
        return load_run_splits(run, data_dir, download=False)
    except DatasetError as exc:
        logger.warning(
            "the dataset %r cannot be loaded at export time (%s): %s",
            run.config.dataset,
            exc,
            "; ".join(consequences),
        )
        return None


def input_background(model: AutoEncoder, splits: Splits | None) -> Background:
    """The background of the model's input: that of most training images, as the encoder saw
    them (the border rule the service's `invert=auto` applies); without the data, that of the
    images the decoder draws from N(0, I), which resemble them."""
    if splits is not None:
        images = splits.train.images
    else:
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(BACKGROUND_SAMPLES, model.config.latent_dim, generator=gen)
        with torch.no_grad():
            images = DecoderGraph(model).eval()(z).numpy()
    # The mean over the channels: the border's mean brightness is the same, and (N, H, W) reads
    # alike whether the rule takes channels first or last.
    light = light_background(images.mean(axis=1))
    return "light" if 2 * int(light.sum()) > len(light) else "dark"


def write_latent_map(
    model: AutoEncoder, cfg: TrainConfig, splits: Splits, path: Path
) -> dict[str, Any]:
    """Write the test split's latent means (an AE: its codes) and labels to `path`, for a model
    with a 2-D latent space; returns the manifest's `latent_map` entry."""
    # The images as report.py's latent scatter sees them (binarised once for binarised runs).
    x = test_images(cfg, splits, torch.device("cpu"))
    with torch.no_grad():
        mu = torch.cat([model.encode(xb)[0] for xb in x.split(1000)]).numpy()
    if mu.shape != (len(splits.test), 2) or not np.isfinite(mu).all():
        raise ExportError(f"{path.name}: test-set latents of shape {mu.shape} are not finite N x 2")
    points = [[round(float(a), LATENT_MAP_DECIMALS) + 0.0 for a in row] for row in mu]  # no -0.0
    content = {
        "split": "test",
        "dataset": splits.name,
        "points": len(points),
        "label_names": list(splits.label_names),
        "mu": points,
        "labels": [int(label) for label in splits.test.labels],
    }
    path.write_text(json.dumps(content, separators=(",", ":")) + "\n")
    return {"file": path.name, "sha256": sha256sum(path), "split": "test", "points": len(points)}


def export_run(
    run_dir: Path,
    out_dir: Path,
    name: str | None = None,
    version: str = "1",
    checkpoint: str = "best",
    description: str = "",
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Write encoder.onnx, decoder.onnx and manifest.json for a run into `out_dir`, and for a
    2-D latent space latent_map.json from the run's test split (`data_dir` overrides the data
    folder recorded in the run).

    Files are built in a temporary folder and moved into place only once every check passed, the
    service's own loading of the folder included, so a failed export never leaves a half model,
    or one the service would refuse, where the service would load it.
    """
    run = load_run(run_dir, checkpoint, device="cpu")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        dir=out_dir.parent, prefix=f".{out_dir.name}.", ignore_cleanup_errors=True
    ) as tmp_name:
        tmp = Path(tmp_name)
        parity = export_graphs(run.model, tmp)
        wants_map = run.model.config.latent_dim == 2
        splits = load_training_splits(
            run,
            data_dir,
            [f"no {LATENT_MAP_FILE} written"] * wants_map
            + ["input.background judged from the decoder's images", NO_CALIBRATION],
        )
        latent_map = (
            write_latent_map(run.model, run.config, splits, tmp / LATENT_MAP_FILE)
            if wants_map and splits is not None
            else None
        )
        manifest = build_manifest(
            run,
            tmp,
            name=name or out_dir.name,
            version=version,
            description=description,
            checkpoint=checkpoint,
            parity=parity,
            latent_map=latent_map,
            background=input_background(run.model, splits),
        )
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if splits is not None:
            manifest = calibrate_export(tmp, splits, manifest)
        check_the_service_loads(tmp, out_dir)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)  # the emptied temporary name is then ignored by the cleanup
        out_dir.chmod(0o755)  # mkdtemp made it owner-only; a non-root service user must read it
    return manifest


def calibration_split(splits: Splits) -> str:
    """The calibration's `split`: which held-out images were scored, in words."""
    return (
        f"{splits.name} validation split: {len(splits.val):,} images carved at random "
        f"(seed {SPLIT_SEED}) from the training set, never trained on"
    )


def calibrate_export(folder: Path, splits: Splits, manifest: dict[str, Any]) -> dict[str, Any]:
    """Calibrate the exported model in `folder` on the run's validation split (what the scoring
    research calibrated on: held-out, and not the test set evaluation reports on); returns the
    manifest with the calibration, or as it was, with a warning, when it cannot be done."""
    if len(splits.val) < MIN_IMAGES:
        logger.warning(
            "the validation split holds %d images, fewer than the %d a score calibration needs: %s",
            len(splits.val),
            MIN_IMAGES,
            NO_CALIBRATION,
        )
        return manifest
    images = splits.val.images.transpose(0, 2, 3, 1)  # (N, C, H, W) -> the service's (N, H, W, C)
    try:
        calibration = calibrate_folder(folder, images, calibration_split(splits))
    except CalibrationError as exc:
        logger.warning("the score calibration failed (%s): %s", exc, NO_CALIBRATION)
        return manifest
    return {**manifest, "score_calibration": calibration.model_dump(mode="json")}


def export_graphs(model: AutoEncoder, folder: Path) -> dict[str, Any]:
    """encoder.onnx and decoder.onnx in `folder`, each checked against torch at several batch
    sizes; returns the manifest's `parity` entry."""
    mcfg = model.config
    enc_outputs = ["mu", "logvar"] if model.is_vae else ["z"]
    gen = torch.Generator().manual_seed(0)

    def images(n: int) -> Tensor:
        return torch.rand(n, *mcfg.image_shape, generator=gen)

    def latents(n: int) -> Tensor:
        return torch.randn(n, mcfg.latent_dim, generator=gen)

    encoder, decoder = EncoderGraph(model).eval(), DecoderGraph(model).eval()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    _export_graph(encoder, images(2), "x", enc_outputs, folder / "encoder.onnx")
    _export_graph(decoder, latents(2), "z", ["x_mean"], folder / "decoder.onnx")
    return {
        "atol": PARITY_ATOL,
        "encoder_max_abs_diff": check_parity(
            encoder, folder / "encoder.onnx", images, "x", atol=PARITY_ATOL
        ),
        "decoder_max_abs_diff": check_parity(
            decoder, folder / "decoder.onnx", latents, "z", atol=PARITY_ATOL
        ),
    }


def build_manifest(
    run: LoadedRun,
    folder: Path,
    *,
    name: str,
    version: str,
    description: str,
    checkpoint: str,
    parity: dict[str, Any],
    latent_map: dict[str, Any] | None,
    background: Background = "dark",
) -> dict[str, Any]:
    """The manifest of the graphs in `folder`, as `service.manifest.Manifest` describes it."""
    model, cfg = run.model, run.config
    mcfg = model.config
    image_shape = list(mcfg.image_shape)
    enc_outputs = ["mu", "logvar"] if model.is_vae else ["z"]
    evaluation_path = run.run_dir / "evaluation.json"
    metrics = json.loads(evaluation_path.read_text()) if evaluation_path.exists() else None
    return {
        "manifest_version": MANIFEST_VERSION,
        "name": name,
        "version": version,
        "description": description,
        "kind": mcfg.kind,
        "architecture": mcfg.to_dict(),
        "latent_dim": mcfg.latent_dim,
        "input": {
            "shape": image_shape,
            "dtype": "float32",
            "pixel_range": [0.0, 1.0],
            "layout": "NCHW",
            "preprocessing": preprocessing(cfg.dataset, mcfg.image_shape, cfg.invert),
            "background": background,
        },
        "encoder": {
            "file": "encoder.onnx",
            "sha256": sha256sum(folder / "encoder.onnx"),
            "inputs": [_tensor_spec("x", ["batch", *image_shape])],
            "outputs": [_tensor_spec(o, ["batch", mcfg.latent_dim]) for o in enc_outputs],
        },
        "decoder": {
            "file": "decoder.onnx",
            "sha256": sha256sum(folder / "decoder.onnx"),
            "inputs": [_tensor_spec("z", ["batch", mcfg.latent_dim])],
            "outputs": [_tensor_spec("x_mean", ["batch", *image_shape])],
            "output_range": [0.0, 1.0],
        },
        # The decoder applies the sigmoid itself: its output is pixels in [0, 1], channels first.
        "output": {"tensor": "x_mean", "layout": "NCHW", "activation": "none"},
        "latent": {
            "code_output": "mu" if model.is_vae else "z",
            "logvar_output": "logvar" if model.is_vae else None,
            **({"variance": "logvar"} if model.is_vae else {}),
            "sigma": "exp(logvar / 2)" if model.is_vae else None,
            "prior": "standard normal N(0, I)" if model.is_vae else None,
        },
        **({"latent_map": latent_map} if latent_map is not None else {}),
        "opset": OPSET,
        "parity": parity,
        "dataset": {**_dataset_entry(run), "binarized": cfg.binarize},
        "training": {**cfg.to_dict(), "epoch": run.epoch, "checkpoint": checkpoint},
        "metrics": metrics,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "package_version": __version__,
        "producer": {"torch": torch.__version__, "onnx": onnx.__version__},
    }


def _dataset_entry(run: LoadedRun) -> dict[str, Any]:
    if run.dataset is not None:
        return run.dataset
    # A checkpoint that records no dataset: what the config tells, without the split sizes.
    spec = IDX_DATASETS.get(run.config.dataset)
    return {
        "name": run.config.dataset if spec else Path(run.config.dataset).name,
        "label_names": list(spec.label_names) if spec else [],
    }


def check_the_service_loads(folder: Path, out_dir: Path) -> None:
    """Load `folder` with the service's own manifest schema and checks (checksums, the latent
    map's content): an export the service would refuse fails here instead."""
    try:
        load_latent_map(folder, load_manifest(folder))
    except ModelLoadError as exc:
        problem = str(exc).replace(str(folder), str(out_dir))  # not the temporary folder's name
        raise ExportError(f"the service would refuse this model: {problem}") from exc
