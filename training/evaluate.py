"""Evaluation on the test set, in nats per image.

VAE: the negative ELBO split into reconstruction and KL; an importance-sampled estimate of
-log p(x) (the IWAE bound of Burda et al. 2015 with k samples, which tightens towards -log p(x) as
k grows); the number of active latent units (Burda et al. 2015, section 5.2: Cov_x(E_q[u]) > 0.01);
and the error of the deterministic reconstruction decode(mu).
AE: reconstruction error per image and per pixel (BCE and MSE).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from training.config import TrainConfig
from training.data import Splits, load_splits
from training.model import (
    LOG_2PI,
    AutoEncoder,
    kl_to_standard_normal,
    reconstruction_nll,
    reparameterize,
)
from training.train import load_run

ACTIVE_UNIT_THRESHOLD = 0.01
EVAL_SEED = 1234


def test_images(cfg: TrainConfig, splits: Splits, device: torch.device) -> torch.Tensor:
    """The test images as the model was trained to see them: binarised once, with a fixed seed,
    for models trained with dynamic binarisation (the literature's convention), else as they are."""
    x = torch.from_numpy(splits.test.images)
    if cfg.binarize:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(EVAL_SEED))
    return x.to(device)


@torch.no_grad()
def iwae_nll(
    model: AutoEncoder,
    x: torch.Tensor,
    cfg: TrainConfig,
    k: int,
    generator: torch.Generator,
    chunk_elements: int = 1 << 22,
) -> torch.Tensor:
    """-log p(x) estimated as -log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x); per image.

    Decoding runs in chunks of about `chunk_elements` pixels so memory stays bounded for any k.
    """
    mu, logvar = model.encode(x)
    assert logvar is not None
    n, d = mu.shape
    pixels = x[0].numel()
    per_chunk = max(1, chunk_elements // (n * pixels))
    # All noise drawn up front (k * n * d floats is small) so chunking cannot change the result.
    all_eps = torch.randn(k, n, d, generator=generator).to(x.device)
    log_weights = []
    for eps in all_eps.split(per_chunk):
        s = len(eps)
        z = reparameterize(mu, logvar, eps)  # (s, n, d)
        logits = model.decode_logits(z.reshape(s * n, d))
        log_px_z = -reconstruction_nll(
            logits, x.repeat(s, 1, 1, 1), cfg.likelihood, cfg.gaussian_sigma
        ).reshape(s, n)
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        log_qz_x = -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(-1)
        log_weights.append(log_px_z + log_pz - log_qz_x)
    log_w = torch.cat(log_weights).double()
    return -(torch.logsumexp(log_w, dim=0) - math.log(k))


@torch.no_grad()
def evaluate_model(
    model: AutoEncoder,
    cfg: TrainConfig,
    x: torch.Tensor,
    iwae_k: int = 1000,
    batch_size: int = 100,
    progress: bool = True,
) -> dict[str, Any]:
    """All test metrics for `model` on images `x` (N, 1, 28, 28); see the module docstring."""
    model.eval()
    gen = torch.Generator().manual_seed(EVAL_SEED)
    started = time.perf_counter()
    totals: dict[str, float] = {}
    mus = []

    def add(name: str, values: torch.Tensor) -> None:
        totals[name] = totals.get(name, 0.0) + float(values.double().sum())

    for xb in tqdm(
        x.split(batch_size), desc="evaluate", unit="batch", disable=None if progress else True
    ):
        mu, logvar = model.encode(xb)
        mus.append(mu)
        flat = xb.flatten(1)
        # Deterministic reconstruction decode(mu): what /reconstruct returns by default.
        logits = model.decode_logits(mu)
        add("det_nll", reconstruction_nll(logits, xb, cfg.likelihood, cfg.gaussian_sigma))
        add("det_bce", reconstruction_nll(logits, xb, "bernoulli"))
        add("det_sq_err", (torch.sigmoid(logits) - flat).pow(2).sum(1))
        if logvar is None:
            continue
        eps = torch.randn(mu.shape, generator=gen).to(mu.device)
        z = reparameterize(mu, logvar, eps)
        add(
            "recon",
            reconstruction_nll(model.decode_logits(z), xb, cfg.likelihood, cfg.gaussian_sigma),
        )
        add("kl", kl_to_standard_normal(mu, logvar))
        if iwae_k > 0:
            add("iwae", iwae_nll(model, xb, cfg, iwae_k, gen))

    n = len(x)
    pixels = x[0].numel()
    m = {name: total / n for name, total in totals.items()}
    result: dict[str, Any] = {
        "split": "test",
        "images": n,
        "binarized_test_set": cfg.binarize,
        "likelihood": cfg.likelihood,
        "units": "nats per image unless the name says per_pixel",
        "deterministic_reconstruction": {
            "bce": m["det_bce"],
            "bce_per_pixel": m["det_bce"] / pixels,
            "mse_per_pixel": m["det_sq_err"] / pixels,
        },
    }
    if model.is_vae:
        variance = torch.cat(mus).var(dim=0)
        result.update(
            {
                "negative_elbo": m["recon"] + m["kl"],
                "reconstruction": m["recon"],
                "kl": m["kl"],
                "active_units": int((variance > ACTIVE_UNIT_THRESHOLD).sum()),
                "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
                "latent_dim": model.config.latent_dim,
            }
        )
        if iwae_k > 0:
            result["iwae"] = {"k": iwae_k, "nll": m["iwae"]}
    else:
        result["reconstruction"] = m["det_nll"]
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def evaluate_run(
    run_dir: Path,
    iwae_k: int = 1000,
    data_dir: str | None = None,
    device: str = "cpu",
    checkpoint: str = "best",
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a run's model on its test set and write evaluation.json into the run."""
    run = load_run(run_dir, checkpoint, device)
    cfg = run.config
    splits = load_splits(cfg.dataset, data_dir or cfg.data_dir, cfg.val_size, invert=cfg.invert)
    x = test_images(cfg, splits, next(run.model.parameters()).device)
    if limit is not None:
        x = x[:limit]
    result = {
        "dataset": splits.name,
        "checkpoint": checkpoint,
        "epoch": run.epoch,
        **evaluate_model(run.model, cfg, x, iwae_k=iwae_k, progress=progress),
    }
    (Path(run_dir) / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
