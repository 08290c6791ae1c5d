"""The sample classifier: trained on tiny data, saved and loaded without pickle, and the two
shipped ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import synthetic_digits
from training.classifier import (
    FEATURES,
    Classifier,
    ClassifierError,
    SampleClassifier,
    load_classifier,
    save_classifier,
    train_and_save,
    train_classifier,
)
from training.cli import main
from training.data import Split, Splits

SHIPPED_ACCURACY = {"mnist": 0.99, "fashion-mnist": 0.90}  # what the docs promise


def tiny_splits() -> Splits:
    def split(n: int, seed: int) -> Split:
        images, labels = synthetic_digits(n, seed)
        return Split(images[:, None].astype(np.float32) / 255, labels.astype(np.int64))

    return Splits("mnist", split(300, 1), split(60, 2), split(100, 3), tuple("0123456789"))


@pytest.fixture(scope="module")
def trained() -> Classifier:
    return train_classifier("mnist", tiny_splits(), epochs=15, log=False)


def test_training_records_its_accuracy_and_reference_numbers(trained: Classifier) -> None:
    info = trained.info
    # Each class of the synthetic digits is a bar at its own row: easy to tell apart.
    assert info["test_accuracy"] > 0.8 and info["test_images"] == 100
    assert info["training"]["epochs"] == 15 and info["training"]["train_images"] == 300
    reference = info["reference"]
    assert reference["frechet_distance_train_vs_test"] >= 0
    assert sum(reference["test_set"]["class_balance"]) == pytest.approx(1)


def test_the_same_seed_gives_the_same_weights() -> None:
    # (at the same number of threads: the module fixture above may run at another)
    first = train_classifier("mnist", tiny_splits(), epochs=2, log=False)
    again = train_classifier("mnist", tiny_splits(), epochs=2, log=False)
    for (name, a), b in zip(
        first.network.state_dict().items(), again.network.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_saved_and_loaded_it_answers_the_same(trained: Classifier, tmp_path: Path) -> None:
    save_classifier(trained, tmp_path / "mnist.npz")
    loaded = load_classifier("mnist", tmp_path)
    assert loaded.dataset == "mnist" and loaded.info == json.loads(json.dumps(trained.info))
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    feats, probs = loaded.features_and_probabilities(x)
    want_feats, want_probs = trained.features_and_probabilities(x)
    assert feats.shape == (5, FEATURES) and probs.shape == (5, 10)
    assert torch.allclose(feats, want_feats) and torch.allclose(probs, want_probs)
    assert probs.sum(1).tolist() == pytest.approx([1.0] * 5)


def test_a_missing_or_broken_file_is_refused_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(ClassifierError, match=r"no sample classifier for 'cifar'"):
        load_classifier("cifar", tmp_path)
    (tmp_path / "mnist.npz").write_bytes(b"not an archive")
    with pytest.raises(ClassifierError, match=r"mnist\.npz is not a readable sample classifier"):
        load_classifier("mnist", tmp_path)
    arrays = {k: v.numpy() for k, v in SampleClassifier(classes=3).state_dict().items()}
    np.savez(tmp_path / "mnist.npz", __info__=np.array("{}"), **arrays)
    with pytest.raises(ClassifierError, match="not a readable sample classifier"):
        load_classifier("mnist", tmp_path)  # 3 classes where 10 are expected


@pytest.mark.parametrize("dataset", sorted(SHIPPED_ACCURACY))
def test_the_shipped_classifiers_load_and_state_their_accuracy(dataset: str) -> None:
    classifier = load_classifier(dataset)
    assert classifier.dataset == dataset
    assert classifier.info["test_accuracy"] >= SHIPPED_ACCURACY[dataset]
    assert classifier.info["test_images"] == 10_000
    _, probs = classifier.features_and_probabilities(torch.zeros(2, 1, 28, 28))
    assert probs.shape == (2, 10)


def test_only_datasets_with_a_classifier_can_train_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["classifier", "--dataset", "cifar"])
    assert "invalid choice: 'cifar'" in capsys.readouterr().err
    with pytest.raises(ClassifierError, match="sample classifiers exist for mnist, fashion-mnist"):
        train_and_save("cifar", None)
