"""The sample-quality numbers of `training evaluate` (training/sample_quality.py) for exported
model folders, bundled or not: 10,000 prior samples decoded by the folder's own decoder.onnx
through onnxruntime, judged by the shipped sample classifier of the manifest's dataset, against
that dataset's test set. Needs the dataset files; a table, not a test.

    PYTHONPATH=. python benchmarks/sample_quality.py --data-dir ../shared/data
    PYTHONPATH=. python benchmarks/sample_quality.py --data-dir ../shared/data --models models/x
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from training.classifier import load_classifier
from training.data import load_splits
from training.evaluate import EVAL_SEED
from training.sample_quality import DEFAULT_SAMPLES, judge_samples, sample_quality_problem

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mnist-vae", "mnist-vae-2d", "fashion-vae")


def judge_folder(folder: Path, data_dir: Path, samples: int, seed: int) -> dict[str, object]:
    manifest = json.loads((folder / "manifest.json").read_text())
    dataset = manifest["dataset"]["name"]
    problem = sample_quality_problem(dataset, tuple(manifest["input"]["shape"]))
    if manifest["kind"] != "vae" or problem:
        return {"skipped": problem or "not a VAE"}
    session = ort.InferenceSession(folder / "decoder.onnx", providers=["CPUExecutionProvider"])
    z_name = manifest["decoder"]["inputs"][0]["name"]

    def decode(z: torch.Tensor) -> torch.Tensor:
        (images,) = session.run(None, {z_name: z.numpy().astype(np.float32)})
        return torch.from_numpy(images)

    test = torch.from_numpy(load_splits(dataset, data_dir, download=False).test.images)
    classifier = load_classifier(dataset)
    return judge_samples(decode, manifest["latent_dim"], classifier, test, samples, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument(
        "--models", nargs="+", type=Path, default=[ROOT / "models" / m for m in MODELS]
    )
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    args = parser.parse_args()
    print(f"{'model':16} {'Frechet':>8} {'reference':>9} {'confidence':>10} {'class shares':>14}")
    for folder in args.models:
        q = judge_folder(folder, args.data_dir, args.samples, args.seed)
        if "skipped" in q:
            print(f"{folder.name:16} skipped: {q['skipped']}")
            continue
        ref = q["classifier"]["reference"]["frechet_distance_train_vs_test"]  # type: ignore[index]
        shares = f"{q['min_class_share']:.1%}-{q['max_class_share']:.1%}"
        distance, confidence = q["frechet_distance"], q["confidence"]
        print(f"{folder.name:16} {distance:8.2f} {ref:9.2f} {confidence:10.3f} {shares:>14}")
        print("  class balance:", q["class_balance"])


if __name__ == "__main__":
    main()
