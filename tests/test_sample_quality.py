"""Judging a VAE's prior samples with the sample classifier, and where `evaluate` reports it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config
from training.classifier import load_classifier
from training.cli import main
from training.evaluate import evaluate_run
from training.sample_quality import judge_samples, sample_quality_problem
from training.train import train


def test_samples_that_are_the_test_images_are_at_distance_zero() -> None:
    classifier = load_classifier("mnist")
    test_images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def decode(z: torch.Tensor) -> torch.Tensor:
        # Each prior draw picks a test image: the samples are the test set, reordered.
        return test_images[(z[:, 0].abs() * 1e6).long() % len(test_images)]

    perfect = judge_samples(decode, 4, classifier, test_images, samples=64, seed=0)
    # Not exactly 0: the draws pick some images twice and some not at all.
    assert 0 <= perfect["frechet_distance"] < 5
    same = judge_samples(lambda z: test_images[: len(z)], 4, classifier, test_images, samples=64)
    assert same["frechet_distance"] == pytest.approx(0, abs=1e-6)
    assert same["class_balance"] == same["test_set"]["class_balance"]
    assert same["confidence"] == pytest.approx(same["test_set"]["confidence"])
    blank = judge_samples(
        lambda z: torch.zeros(len(z), 784), 4, classifier, test_images, samples=64
    )
    assert blank["frechet_distance"] > same["frechet_distance"] + 1
    assert max(blank["class_balance"]) == 1.0  # one image, one class
    assert blank["classifier"]["dataset"] == "mnist"
    assert blank["classifier"]["test_accuracy"] >= 0.99
    assert (blank["samples"], blank["seed"], blank["temperature"]) == (64, 0, 1.0)


def test_the_seed_fixes_the_samples() -> None:
    classifier = load_classifier("mnist")
    test_images = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    decoder = torch.nn.Sequential(torch.nn.Linear(3, 784), torch.nn.Sigmoid())
    a, b, c = (
        judge_samples(decoder, 3, classifier, test_images, samples=50, seed=s) for s in (7, 7, 8)
    )
    assert a["frechet_distance"] == b["frechet_distance"] != c["frechet_distance"]
    with pytest.raises(ValueError, match="at least 2 samples"):
        judge_samples(decoder, 3, classifier, test_images, samples=1)


def test_what_cannot_be_judged_says_why() -> None:
    assert sample_quality_problem("mnist", (1, 28, 28)) is None
    assert sample_quality_problem("fashion-mnist", (1, 28, 28)) is None
    assert "no sample classifier for dataset 'faces'" in str(
        sample_quality_problem("faces", (1, 28, 28))
    )
    assert "takes 1 x 28 x 28 images; this model makes 1 x 32 x 32" in str(
        sample_quality_problem("mnist", (1, 32, 32))
    )


def test_evaluate_judges_a_vaes_samples(vae_run: Path) -> None:
    result = evaluate_run(vae_run, iwae_k=0, progress=False, samples=300)
    quality = result["sample_quality"]
    assert quality["samples"] == 300 and quality["frechet_distance"] >= 0
    assert 0.1 <= quality["confidence"] <= 1
    assert len(quality["class_balance"]) == 10
    assert sum(quality["class_balance"]) == pytest.approx(1, abs=1e-3)
    assert quality["min_class_share"] <= 0.1 <= quality["max_class_share"]
    assert json.loads((vae_run / "evaluation.json").read_text())["sample_quality"] == quality
    assert "sample_quality" not in evaluate_run(vae_run, iwae_k=0, progress=False, samples=0)


def test_evaluate_skips_an_ae_and_data_without_a_classifier(
    ae_run: Path, data_dir: Path, tmp_path: Path
) -> None:
    assert "sample_quality" not in evaluate_run(ae_run, iwae_k=0, progress=False)
    resized = tmp_path / "resized"
    train(tiny_config(data_dir, image_size=(20, 20), epochs=1), resized, progress=False)
    result = evaluate_run(resized, iwae_k=0, progress=False, samples=100)
    assert "takes 1 x 28 x 28 images" in result["sample_quality"]["skipped"]


def test_the_cli_takes_samples(vae_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(vae_run), "--iwae-k", "0", "--samples", "200", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["sample_quality"]["samples"] == 200
    with pytest.raises(SystemExit):
        main(["evaluate", str(vae_run), "--samples", "-1"])
    assert "expected a whole number >= 0, got '-1'" in capsys.readouterr().err
