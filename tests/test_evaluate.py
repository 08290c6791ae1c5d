from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.evaluate import evaluate_run, iwae_nll
from training.model import kl_to_standard_normal, reconstruction_nll, reparameterize
from training.train import load_run


def test_vae_evaluation(vae_run: Path) -> None:
    result = evaluate_run(vae_run, iwae_k=64, progress=False)
    assert json.loads((vae_run / "evaluation.json").read_text()) == result
    assert result["split"] == "test" and result["images"] == 120
    assert result["negative_elbo"] == pytest.approx(result["reconstruction"] + result["kl"])
    assert result["kl"] > 0
    # The importance-weighted bound is tighter than the ELBO (Burda et al. 2015, theorem 1).
    assert result["iwae"]["k"] == 64
    assert result["iwae"]["nll"] < result["negative_elbo"]
    assert 0 <= result["active_units"] <= result["latent_dim"] == 2
    det = result["deterministic_reconstruction"]
    assert det["bce_per_pixel"] == pytest.approx(det["bce"] / 784)


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
