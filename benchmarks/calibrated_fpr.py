"""The false-positive rate each bundled model's committed calibration really gives on data it has
not seen: its own test set (the calibration used the validation split carved from train), scored
by the service's own runtime and numbers (service.calibration), at the manifest's threshold
(nominal 1 %) and at thresholds the service derives for other rates (`threshold_for`); and the
true-positive rate on the other dataset's test set at the default threshold.
Needs the dataset files; a table, not a test.

    PYTHONPATH=. python benchmarks/calibrated_fpr.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from service.calibration import load_runtime, runtime_parts
from service.scoring import ScoreCalibration, default_score, percentile, threshold_for
from training.data import IDX_DATASETS, read_idx

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mnist-vae", "fashion-vae", "mnist-ae", "mnist-ae-2d", "mnist-vae-2d")
OTHER = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}
RATES = (0.05, 0.01, 0.001)


def test_images(data_dir: Path, dataset: str) -> np.ndarray:
    name = IDX_DATASETS[dataset].files["test_images"].name
    return read_idx(data_dir / dataset / name).astype(np.float32)[..., None] / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    rates = " ".join(f"{f'FPR@{r:g}':>10}" for r in RATES)
    print(f"{'model':14} {'score':22} {'test':>6} {rates} {'TPR other':>10} {'pct median':>10}")
    for name in args.models:
        folder = ROOT / "models" / name
        document = json.loads((folder / "manifest.json").read_text())
        calibration = ScoreCalibration.model_validate(document["score_calibration"])
        dataset = document["dataset"]["name"]
        runtime = load_runtime(folder)
        scores = {}
        for which in (dataset, OTHER[dataset]):
            parts = runtime_parts(runtime, test_images(args.data_dir, which))
            scores[which] = default_score(parts, calibration)[1]
        own = scores[dataset]
        fprs = []
        for rate in RATES:
            threshold = calibration.threshold if rate == calibration.target_fpr else None
            threshold = threshold if threshold is not None else threshold_for(rate, calibration)
            fprs.append(f"{100 * float(np.mean(own > threshold)):>9.2f}%")
        tpr = 100 * float(np.mean(scores[OTHER[dataset]] > calibration.threshold))
        median_pct = float(np.median(percentile(own, calibration)))
        print(
            f"{name:14} {calibration.score:22} {len(own):>6} {' '.join(fprs)} "
            f"{tpr:>9.2f}% {median_pct:>10.1f}"
        )


if __name__ == "__main__":
    main()
