"""The sample classifier: a small CNN per dataset whose features and predictions judge a VAE's
prior samples (training/sample_quality.py).

Its weights ship with the package (training/classifiers/<dataset>.npz: a plain array archive,
read without pickle) together with how it was trained and its own test accuracy, and
`python -m training classifier --dataset mnist` retrains it bit for bit on the CPU.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.data import Splits, load_splits
from training.sample_metrics import frechet_distance, prediction_summary

CLASSIFIER_DIR = Path(__file__).parent / "classifiers"
FEATURES = 128  # width of the penultimate layer, the space the Frechet distance is measured in
# Epochs per dataset: MNIST passes 99 % test accuracy after a few, Fashion-MNIST needs more to
# pass 90 %. Anything not listed has no classifier.
EPOCHS = {"mnist": 12, "fashion-mnist": 12}
BATCH_SIZE = 128
LR = 1e-3
SEED = 0
REFERENCE_IMAGES = 10_000  # training images compared with the test set for the reference distance


class ClassifierError(RuntimeError):
    """No classifier for a dataset, or its file is unreadable; the message says which."""


class SampleClassifier(nn.Module):
    """Three 3x3 convolutions (16, 32, 64 channels), each followed by 2x2 max pooling
    (28 -> 14 -> 7 -> 3), a dense layer of FEATURES and the 10 class logits. Small on purpose:
    it must run over 20,000 images in seconds on a CPU, and MNIST-like images need little more."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 3 * 3, FEATURES),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)  # regularises the head only; off in eval mode
        self.head = nn.Linear(FEATURES, classes)

    def features(self, x: Tensor) -> Tensor:
        """x (N, 1, 28, 28) in [0, 1] -> the penultimate activations (N, FEATURES)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


@dataclass
class Classifier:
    """A trained classifier and what its file records about it."""

    network: SampleClassifier
    dataset: str
    info: dict[str, Any]  # test accuracy, reference numbers, how it was trained

    @torch.no_grad()
    def features_and_probabilities(
        self, images: Tensor, batch_size: int = 1000
    ) -> tuple[Tensor, Tensor]:
        """Penultimate features (N, FEATURES) and class probabilities (N, classes), float64."""
        self.network.eval()
        feats, probs = [], []
        for xb in images.split(batch_size):
            f = self.network.features(xb.float())
            feats.append(f.double())
            probs.append(F.softmax(self.network.head(f), dim=1).double())
        return torch.cat(feats), torch.cat(probs)


def classifier_path(dataset: str, folder: Path = CLASSIFIER_DIR) -> Path:
    return folder / f"{dataset}.npz"


def save_classifier(classifier: Classifier, path: Path) -> None:
    arrays = {k: v.detach().cpu().numpy() for k, v in classifier.network.state_dict().items()}
    meta = json.dumps({"dataset": classifier.dataset, **classifier.info})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, __info__=np.array(meta), **arrays)


def load_classifier(dataset: str, folder: Path = CLASSIFIER_DIR) -> Classifier:
    """The shipped classifier for `dataset` (mnist, fashion-mnist)."""
    path = classifier_path(dataset, folder)
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.npz"))) or "none"
        raise ClassifierError(f"no sample classifier for {dataset!r} (there are: {known})")
    try:
        with np.load(path, allow_pickle=False) as archive:
            info = json.loads(str(archive["__info__"]))
            state = {k: torch.from_numpy(archive[k]) for k in archive.files if k != "__info__"}
        network = SampleClassifier()
        network.load_state_dict(state)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ClassifierError(f"{path} is not a readable sample classifier: {exc}") from exc
    network.eval()
    return Classifier(network, info.pop("dataset", dataset), info)


@torch.no_grad()
def accuracy(network: SampleClassifier, images: Tensor, labels: Tensor) -> float:
    network.eval()
    correct = sum(
        int((network(xb).argmax(1) == yb).sum())
        for xb, yb in zip(images.split(1000), labels.split(1000), strict=True)
    )
    return correct / len(images)


def train_classifier(
    dataset: str,
    splits: Splits,
    epochs: int | None = None,
    seed: int = SEED,
    log: bool = True,
) -> Classifier:
    """Train the classifier on the training split (Adam, cosine schedule, fixed seed) and record
    its test accuracy and the reference numbers that evaluation prints beside a model's."""
    epochs = epochs or EPOCHS.get(dataset, max(EPOCHS.values()))
    torch.manual_seed(seed)
    network = SampleClassifier(classes=max(10, len(splits.label_names)))
    x, y = torch.from_numpy(splits.train.images), torch.from_numpy(splits.train.labels)
    optimizer = torch.optim.Adam(network.parameters(), lr=LR)
    steps = epochs * math.ceil(len(x) / BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    shuffle = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        network.train()
        for idx in torch.randperm(len(x), generator=shuffle).split(BATCH_SIZE):
            loss = F.cross_entropy(network(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if log:
            val = accuracy(
                network, torch.from_numpy(splits.val.images), torch.from_numpy(splits.val.labels)
            )
            print(f"epoch {epoch}/{epochs}: validation accuracy {val:.4f}", flush=True)
    seconds = time.perf_counter() - started
    classifier = Classifier(network, dataset, {})
    test_x, test_y = torch.from_numpy(splits.test.images), torch.from_numpy(splits.test.labels)
    # The distance between real images and real images: what a perfect model would score, give
    # or take the sampling noise of 10,000 images.
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:REFERENCE_IMAGES]
    train_feats, _ = classifier.features_and_probabilities(x[pick])
    test_feats, test_probs = classifier.features_and_probabilities(test_x)
    classifier.info = {
        "test_accuracy": accuracy(network, test_x, test_y),
        "test_images": len(test_x),
        "reference": {
            "frechet_distance_train_vs_test": frechet_distance(train_feats, test_feats),
            "test_set": prediction_summary(test_probs),
            "train_images": len(pick),
        },
        "training": {
            "epochs": epochs,
            "batch_size": BATCH_SIZE,
            "lr": LR,
            "lr_schedule": "cosine",
            "seed": seed,
            "train_images": len(x),
            "seconds": round(seconds, 1),
            "torch": torch.__version__,
        },
    }
    return classifier


def train_and_save(dataset: str, data_dir: str | None, out: Path | None = None) -> Classifier:
    """`python -m training classifier`: train on the dataset and write the shipped file."""
    if dataset not in EPOCHS:
        raise ClassifierError(f"sample classifiers exist for {', '.join(EPOCHS)}; got {dataset!r}")
    splits = load_splits(dataset, data_dir)
    classifier = train_classifier(dataset, splits)
    save_classifier(classifier, out or classifier_path(dataset))
    return classifier
