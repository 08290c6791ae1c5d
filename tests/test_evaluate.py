from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from training.cli import main
from training.evaluate import (
    EVAL_SEED,
    evaluate_run,
    iwae_estimate,
    iwae_nll,
    iwae_subset,
    summarise_iwae,
)
from training.model import kl_to_standard_normal, reconstruction_nll, reparameterize
from training.train import load_run


def test_vae_evaluation(vae_run: Path) -> None:
    result = evaluate_run(vae_run, iwae_k=64, iwae_images=None, progress=False)
    assert json.loads((vae_run / "evaluation.json").read_text()) == result
    assert result["split"] == "test" and result["images"] == 120
    assert result["negative_elbo"] == pytest.approx(result["reconstruction"] + result["kl"])
    assert result["kl"] > 0
    # The importance-weighted bound is tighter than the ELBO (Burda et al. 2015, theorem 1).
    iwae = result["iwae"]
    assert (iwae["k"], iwae["images"], iwae["subset_stderr"]) == (64, 120, 0.0)
    assert iwae["nll"] < result["negative_elbo"]
    assert 0 < iwae["nll_stderr"] < 5 and iwae["drop_from_half_k"] > 0
    assert 0 <= result["active_units"] <= result["latent_dim"] == 2
    det = result["deterministic_reconstruction"]
    assert det["bce_per_pixel"] == pytest.approx(det["bce"] / 784)
    assert result["sample_quality"]["samples"] == 10_000  # judged by default


def test_ae_evaluation(ae_run: Path) -> None:
    result = evaluate_run(ae_run, iwae_k=64, progress=False)
    assert "iwae" not in result and "negative_elbo" not in result and "kl" not in result
    assert result["reconstruction"] == pytest.approx(result["deterministic_reconstruction"]["bce"])
    assert result["deterministic_reconstruction"]["mse_per_pixel"] > 0


def test_iwae_with_one_sample_is_the_elbo(vae_run: Path) -> None:
    # With k = 1 the bound is log p(x|z) + log p(z) - log q(z|x) for one z: the single-sample
    # ELBO with the KL estimated by Monte Carlo. Its mean matches the analytic ELBO's closely.
    run = load_run(vae_run)
    x = torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        one = torch.stack([iwae_nll(run.model, x, run.config, 1, gen) for _ in range(200)]).mean()
        mu, logvar = run.model.encode(x)
        assert logvar is not None
        recon = torch.stack(
            [
                reconstruction_nll(
                    run.model.decode_logits(reparameterize(mu, logvar, torch.randn_like(mu))),
                    x,
                    "bernoulli",
                )
                for _ in range(200)
            ]
        ).mean(0)
        elbo = (recon + kl_to_standard_normal(mu, logvar)).mean()
    assert one.item() == pytest.approx(elbo.item(), rel=2e-3)


def test_iwae_does_not_depend_on_chunking(vae_run: Path) -> None:
    run = load_run(vae_run)
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    a = iwae_nll(run.model, x, run.config, 40, torch.Generator().manual_seed(5))
    b = iwae_nll(
        run.model, x, run.config, 40, torch.Generator().manual_seed(5), chunk_elements=6 * 784 * 3
    )
    assert torch.allclose(a, b, atol=1e-4)


def test_iwae_over_the_whole_test_set_is_the_mean_of_the_per_image_estimates(
    vae_run: Path,
) -> None:
    run = load_run(vae_run)
    x = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    result = iwae_estimate(run.model, run.config, x, k=16, images=None, batch_size=10)
    gen = torch.Generator().manual_seed(EVAL_SEED)
    per_image = torch.cat([iwae_nll(run.model, xb, run.config, 16, gen) for xb in x.split(10)])
    assert result["nll"] == pytest.approx(float(per_image.mean()), rel=1e-9)
    assert result["nll_stderr"] == pytest.approx(float(per_image.std()) / math.sqrt(30))
    assert result["subset_stderr"] == 0.0


def test_iwae_on_a_subset_estimates_the_whole_test_set(vae_run: Path) -> None:
    run = load_run(vae_run)
    x = torch.rand(120, 1, 28, 28, generator=torch.Generator().manual_seed(4)) * 0.6
    full = iwae_estimate(run.model, run.config, x, k=32, images=None, progress=False)
    part = iwae_estimate(run.model, run.config, x, k=32, images=30, progress=False)
    assert part["images"] == 30 and 0 < part["subset_stderr"] < part["nll_stderr"]
    assert abs(part["nll"] - full["nll"]) < 3 * part["subset_stderr"]
    # More images than the test set holds: all of them.
    assert iwae_estimate(run.model, run.config, x[:20], k=4, images=500)["images"] == 20


def test_subset_summary_is_a_difference_estimator() -> None:
    control = torch.arange(10, dtype=torch.float64) * 3.0
    subset = torch.tensor([1, 4, 7])
    # Where -log p(x) is the control plus a constant, three images pin down the whole mean.
    exact = summarise_iwae(control[subset] + 2.0, None, control, subset, k=8)
    assert exact["nll"] == pytest.approx(float(control.mean()) + 2.0)
    assert exact["subset_stderr"] == 0.0 and "drop_from_half_k" not in exact
    assert exact["nll_stderr"] == pytest.approx(float(control[subset].std()) / math.sqrt(10))
    noisy = control[subset] + torch.tensor([1.0, 2.0, 3.0])
    half = noisy + torch.tensor([0.5, 0.1, 0.3])
    summary = summarise_iwae(noisy, half, control, subset, k=8)
    assert summary["nll"] == pytest.approx(float(control.mean()) + 2.0)
    assert summary["subset_stderr"] == pytest.approx(math.sqrt((1 - 3 / 10) * 1.0 / 3))
    assert summary["drop_from_half_k"] == pytest.approx(0.3)
    one = summarise_iwae(control[:1], None, control, torch.tensor([0]), k=8)
    assert one["nll_stderr"] is None and one["subset_stderr"] is None


def test_subset_is_fixed_random_and_sorted() -> None:
    subset = iwae_subset(1000, 50)
    assert torch.equal(subset, iwae_subset(1000, 50))
    assert len(set(subset.tolist())) == 50 and torch.equal(subset, subset.sort().values)
    assert subset.max() > 500  # not just the first images
    assert torch.equal(iwae_subset(10, None), torch.arange(10))


def test_cli_iwae_options(
    vae_run: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    quick = ["--samples", "0", "--quiet"]  # sample quality: tests/test_sample_quality.py
    assert main(["evaluate", str(vae_run), "--iwae-k", "8", "--iwae-images", "25", *quick]) == 0
    written = json.loads((vae_run / "evaluation.json").read_text())
    assert (written["iwae"]["k"], written["iwae"]["images"]) == (8, 25)
    assert main(["evaluate", str(vae_run), "--iwae-k", "4", "--iwae-images", "all", *quick]) == 0
    assert json.loads((vae_run / "evaluation.json").read_text())["iwae"]["images"] == 120
    capsys.readouterr()
    for flag, value, expected in [
        ("--iwae-images", "0", "expected a number of images >= 1 or 'all', got '0'"),
        ("--iwae-images", "some", "expected a number of images >= 1 or 'all', got 'some'"),
        ("--iwae-k", "-1", "expected a whole number >= 0, got '-1'"),
        ("--limit", "0", "expected a whole number >= 1, got '0'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", str(vae_run), flag, value])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}: {expected}" in err
