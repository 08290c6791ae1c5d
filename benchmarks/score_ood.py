"""How well each anomaly score of service/scoring.py tells a bundled model's own data from others.

For each bundled model, runs its ONNX files with onnxruntime (CPU, 2 intra-op threads) and scores:
its own test set, split at random into a calibration half (sets the threshold at 1 % false
positives and the held-out statistics the two-sided scores need) and an evaluation half (the
honest false-positive rate); the other dataset's test set (MNIST <-> Fashion-MNIST); uniform
noise; its own evaluation images inverted (1 - x) and rotated by 90 degrees. Prints, per model and
score, the AUROC against each out-of-distribution set, the false-positive rate on the evaluation
half and the true-positive rate on each set at the calibrated threshold; then the AUROC of the
NLL-based scores for each k (every k from the first k of the same 128 samples per image); then
the images/s of `score_parts` for each k on 256 images, next to the encoder's alone.
Needs the dataset files; a table, not a test.

    PYTHONPATH=. python benchmarks/score_ood.py --data-dir ../shared/data
    PYTHONPATH=. python benchmarks/score_ood.py --models mnist-vae --images 500
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.scoring import (
    DEFAULT_K,
    DEFAULT_SCORE,
    SCORES,
    DecoderLikelihood,
    ScoreParts,
    complexity_nats,
    default_score_name,
    iwae_nll,
    likelihood_term,
    reference_statistics,
    robust_scale,
    score_parts,
)
from training.data import IDX_DATASETS, read_idx

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mnist-vae", "fashion-vae", "mnist-ae", "mnist-ae-2d", "mnist-vae-2d")
OTHER = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}
TARGET_FPR = 0.01
SEED = 0


def auroc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    """P(outlier score > inlier score) + P(tie) / 2 (Mann-Whitney), from average ranks."""
    values = np.concatenate([inliers, outliers])
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    # Average ranks of ties: each run of equal values gets the mean of its positions.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e - 1) / 2 + 1
    n_in, n_out = len(inliers), len(outliers)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def test_images(data_dir: Path, dataset: str) -> np.ndarray:
    """The test images (N, 28, 28, 1) float32 in [0, 1]."""
    name = IDX_DATASETS[dataset].files["test_images"].name
    return read_idx(data_dir / dataset / name).astype(np.float32)[..., None] / 255.0


class Model:
    def __init__(self, folder: Path) -> None:
        self.manifest = json.loads((folder / "manifest.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(
            str(folder / "encoder.onnx"), options, providers=providers
        )
        self.decoder = ort.InferenceSession(
            str(folder / "decoder.onnx"), options, providers=providers
        )
        self.likelihood = DecoderLikelihood.from_training(self.manifest.get("training"))

    @property
    def is_vae(self) -> bool:
        return self.manifest["kind"] == "vae"

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self.encoder.run(None, {"x": images.transpose(0, 3, 1, 2).copy()})
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.decoder.run(None, {"z": z})[0].transpose(0, 2, 3, 1)

    def parts(self, images: np.ndarray, k: int) -> ScoreParts:
        mu, logvar = self.encode(images)
        return score_parts(
            images,
            mu,
            logvar,
            self.decode,
            k=k,
            seed=SEED,
            likelihood=self.likelihood,
            keep_log_weights=True,
        )


def default_name(model: Model) -> str:
    return DEFAULT_SCORE if model.is_vae else default_score_name(False)


def at_k(parts: ScoreParts, k: int) -> ScoreParts:
    """The parts with the IWAE estimate from the first k of the kept samples."""
    if parts.log_weights is None:
        return parts
    return dataclasses.replace(parts, nll=iwae_nll(parts.log_weights[:, :k]), k=k)


def candidates(model: Model) -> dict[str, Callable[[ScoreParts, dict[str, float]], np.ndarray]]:
    """Every score and part worth ranking by, for this kind of model."""
    table = {name: SCORES[name].function for name in SCORES}
    table["reconstruction_nll_at_mu"] = lambda p, r: p.reconstruction_nll_at_mu
    table["complexity_L"] = lambda p, r: -p.complexity

    def z(values: np.ndarray, r: dict[str, float], key: str) -> np.ndarray:
        return (values - r[f"{key}_median"]) / r[f"{key}_scale"]

    def corrected(p: ScoreParts, r: dict[str, float]) -> np.ndarray:
        return z(likelihood_term(p) - p.complexity, r, "corrected")

    def nll(p: ScoreParts, r: dict[str, float]) -> np.ndarray:
        return z(likelihood_term(p), r, "nll")

    def error(p: ScoreParts, r: dict[str, float]) -> np.ndarray:
        return z(p.reconstruction_error, r, "error")

    table["max(corrected_z, error_z)"] = lambda p, r: np.maximum(corrected(p, r), error(p, r))
    table["|corrected_z|"] = lambda p, r: np.abs(corrected(p, r))
    table["max(corrected_z, |nll_z|)"] = lambda p, r: np.maximum(corrected(p, r), np.abs(nll(p, r)))
    if model.is_vae:
        table["negative_elbo"] = lambda p, r: -p.elbo
        table["reconstruction (E_q)"] = lambda p, r: p.reconstruction
        table["kl"] = lambda p, r: p.kl
        table["complexity_corrected_zlib"] = lambda p, r: p.nll - r["zlib"]  # type: ignore[operator]
    return table


def extra_reference(parts: ScoreParts) -> dict[str, float]:
    """reference_statistics, and what the benchmark's extra combinations need."""
    corrected = likelihood_term(parts) - parts.complexity
    error = parts.reconstruction_error
    return {
        **reference_statistics(parts),
        "corrected_median": float(np.median(corrected)),
        "corrected_scale": robust_scale(corrected),
        "error_median": float(np.median(error)),
        "error_scale": robust_scale(error),
    }


def sets_for(model: Model, data_dir: Path, images: int) -> dict[str, np.ndarray]:
    own_name = model.manifest["dataset"]["name"]
    rng = np.random.default_rng(SEED)
    own = test_images(data_dir, own_name)
    own = own[rng.permutation(len(own))[: 2 * images]]
    other = test_images(data_dir, OTHER[own_name])
    evaluation = own[images:]
    return {
        "calibration": own[:images],
        "own": evaluation,
        OTHER[own_name]: other[rng.permutation(len(other))[:images]],
        "noise": rng.random(evaluation.shape, dtype=np.float32),
        "inverted": 1.0 - evaluation,
        "rotated": np.rot90(evaluation, 1, axes=(1, 2)).copy(),
    }


def report_model(name: str, data_dir: Path, images: int, ks: list[int], main_k: int) -> None:
    model = Model(ROOT / "models" / name)
    sets = sets_for(model, data_dir, images)
    k_max = max(ks) if model.is_vae else 1
    started = time.perf_counter()
    parts = {label: model.parts(x, k_max) for label, x in sets.items()}
    zlib = {label: complexity_nats(x, "zlib") for label, x in sets.items()}
    seconds = time.perf_counter() - started
    ood = [label for label in sets if label not in ("calibration", "own")]
    print(
        f"\n## {name} ({model.manifest['kind']}, trained on {model.manifest['dataset']['name']}, "
        f"likelihood {model.likelihood.kind}; {images} images per set, k = {main_k}; "
        f"scored in {seconds:.0f} s)\n"
    )
    header = "| score | " + " | ".join(f"AUROC {s}" for s in ood) + " | FPR own | "
    header += " | ".join(f"TPR {s}" for s in ood) + " |"
    print(header)
    print("|" + "---|" * (len(ood) * 2 + 2))
    for score, rows in table_rows(model, parts, zlib, [main_k], ood).items():
        label = f"**{score}** (default)" if score == default_name(model) else score
        print(f"| {label} | " + " | ".join(rows[0]) + " |")
    if model.is_vae:
        print(f"\nAUROC by k ({name}):\n")
        print("| score | k | " + " | ".join(ood) + " | FPR own |")
        print("|" + "---|" * (len(ood) + 3))
        rows_by_k = table_rows(model, parts, zlib, ks, ood, nll_based=True)
        for score, rows in rows_by_k.items():
            for k, row in zip(ks, rows, strict=True):
                print(f"| {score} | {k} | " + " | ".join(row[: len(ood)]) + f" | {row[len(ood)]} |")
    throughput(model, sets["own"][:256], ks if model.is_vae else [1])


def table_rows(
    model: Model,
    parts: dict[str, ScoreParts],
    zlib: dict[str, np.ndarray],
    ks: list[int],
    ood: list[str],
    nll_based: bool = False,
) -> dict[str, list[list[str]]]:
    """Per score, per k: the AUROC against each set, the FPR on the evaluation half and the TPR
    on each set at the threshold set on the calibration half."""
    table: dict[str, list[list[str]]] = {}
    for score, fn in candidates(model).items():
        if nll_based and score not in SCORES:
            continue
        if nll_based and score == "reconstruction_error":
            continue
        for k in ks:
            p = {label: at_k(v, k) for label, v in parts.items()}
            ref = extra_reference(p["calibration"])
            values = {label: fn(v, {**ref, "zlib": zlib[label]}) for label, v in p.items()}
            threshold = np.quantile(values["calibration"], 1 - TARGET_FPR)
            aurocs = [f"{auroc(values['own'], values[s]):.3f}" for s in ood]
            fpr = f"{100 * np.mean(values['own'] > threshold):.2f} %"
            tprs = [f"{100 * np.mean(values[s] > threshold):.1f} %" for s in ood]
            table.setdefault(score, []).append([*aurocs, fpr, *tprs])
    return table


def throughput(model: Model, images: np.ndarray, ks: list[int]) -> None:
    """images/s of encode + score_parts on one batch of 256 (best of 2), and of encode alone."""

    def best(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(2):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return len(images) / min(times)

    line = [f"encode alone {best(lambda: model.encode(images)):.0f}"]
    for k in ks:
        line.append(f"score k={k} {best(lambda k=k: model.parts(images, k)):.0f}")
    print("\nimages/s, batch of 256: " + ", ".join(line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--images", type=int, default=2000, help="images per set (own: x2)")
    parser.add_argument("--k", default="1,8,32,128", help="IWAE samples per image to compare")
    parser.add_argument("--main-k", type=int, default=DEFAULT_K, help="k of the main table")
    args = parser.parse_args()
    ks = [int(k) for k in args.k.split(",")]
    for name in args.models.split(","):
        report_model(name, args.data_dir, args.images, ks, args.main_k)


if __name__ == "__main__":
    main()
