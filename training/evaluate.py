"""Evaluation on the test set, in nats per image.

VAE: the negative ELBO split into reconstruction and KL; an importance-sampled estimate of
-log p(x) (the IWAE bound of Burda et al. 2015 with k samples, which tightens towards -log p(x) as
k grows) for the whole test set from a fixed random subset of it, with its standard error and how
much it still moved from k/2 to k samples; the number of active latent units (Burda et al. 2015,
section 5.2: Cov_x(E_q[u]) > 0.01); and the error of the deterministic reconstruction decode(mu).
AE: reconstruction error per image and per pixel (BCE and MSE).
VAE samples: the Frechet distance, confidence and class balance of prior samples in the eyes of
the dataset's sample classifier (training/sample_quality.py).
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
from training.data import Splits
from training.model import (
    LOG_2PI,
    AutoEncoder,
    kl_to_standard_normal,
    reconstruction_nll,
    reparameterize,
)
from training.sample_quality import DEFAULT_SAMPLES, model_sample_quality
from training.train import load_run, load_run_splits

ACTIVE_UNIT_THRESHOLD = 0.01
EVAL_SEED = 1234
# Importance sampling every test image with a large k takes minutes on a CPU. k stays large (the
# bound's bias shrinks slowly with k) and a subset of images, through the difference estimator in
# `summarise_iwae`, lands within the test set's own standard error of the whole set's value
# (measured in docs/training.md, "Evaluation").
DEFAULT_IWAE_K = 1000
DEFAULT_IWAE_IMAGES: int | None = 500


def test_images(cfg: TrainConfig, splits: Splits, device: torch.device) -> torch.Tensor:
    """The test images as the model was trained to see them: binarised once, with a fixed seed,
    for models trained with dynamic binarisation (the literature's convention), else as they are."""
    x = torch.from_numpy(splits.test.images)
    if cfg.binarize:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(EVAL_SEED))
    return x.to(device)


@torch.no_grad()
def iwae_log_weights(
    model: AutoEncoder,
    x: torch.Tensor,
    cfg: TrainConfig,
    k: int,
    generator: torch.Generator,
    chunk_elements: int = 1 << 22,
) -> torch.Tensor:
    """log p(x, z_i) - log q(z_i | x) for z_i ~ q(z | x), i = 1..k: a (k, N) float64 tensor.

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
    return torch.cat(log_weights).double()


def nll_from_log_weights(log_w: torch.Tensor) -> torch.Tensor:
    """The k-sample IWAE estimate of -log p(x) per image from (k, N) log weights."""
    return -(torch.logsumexp(log_w, dim=0) - math.log(len(log_w)))


@torch.no_grad()
def iwae_nll(
    model: AutoEncoder,
    x: torch.Tensor,
    cfg: TrainConfig,
    k: int,
    generator: torch.Generator,
    chunk_elements: int = 1 << 22,
) -> torch.Tensor:
    """-log p(x) estimated as -log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x); per image."""
    log_w = iwae_log_weights(model, x, cfg, k, generator, chunk_elements)
    return nll_from_log_weights(log_w)


def iwae_subset(total: int, images: int | None, seed: int = EVAL_SEED) -> torch.Tensor:
    """Indices of the test images the IWAE estimate uses: all of them, or a fixed random subset
    (a random one, not the first N: test sets are often ordered, e.g. by writer)."""
    if images is None or images >= total:
        return torch.arange(total)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[:images].sort().values


def summarise_iwae(
    nll: torch.Tensor,
    nll_half_k: torch.Tensor | None,
    control: torch.Tensor,
    subset: torch.Tensor,
    k: int,
) -> dict[str, Any]:
    """The IWAE estimate for the whole test set from per-image estimates on `subset` of it.

    `nll` and `nll_half_k` hold the per-image estimates with k and k/2 samples for the images
    `subset`; `control` holds, for every test image, a cheap quantity that tracks -log p(x)
    closely (the negative ELBO with the reconstruction taken at z = mu). The estimate is
    mean(control over all images) + mean(nll - control over the subset): unbiased for the mean of
    the k-sample bound over the whole test set (a difference estimator), and, because nll - control
    varies far less from image to image than nll itself, a few hundred images give
    nearly the precision of all of them.

    nll_stderr is the standard error of the estimate, from the spread of -log p(x) across images
    (sd / sqrt(test images), as for a mean over the whole test set) and from using only a subset
    (`subset_stderr`, 0 when every image is used). `drop_from_half_k` is how much the estimate
    fell from k/2 samples to k (each image's samples split in halves): the bound's bias, which
    shrinks with k, is about that large or larger (equal where the bias falls as 1/k).
    """
    total, n = len(control), len(nll)
    gap = nll - control[subset]
    estimate = float(control.mean() + gap.mean())
    summary: dict[str, Any] = {
        "k": k,
        "images": n,
        "nll": estimate,
        "nll_stderr": None,
        "subset_stderr": None,
    }
    if n > 1:
        subset_var = (1 - n / total) * float(gap.var()) / n
        summary["nll_stderr"] = math.sqrt(float(nll.var()) / total + subset_var)
        summary["subset_stderr"] = math.sqrt(subset_var)
    if nll_half_k is not None:
        summary["drop_from_half_k"] = float((nll_half_k - nll).mean())
    return summary


@torch.no_grad()
def iwae_control(
    model: AutoEncoder, cfg: TrainConfig, x: torch.Tensor, batch_size: int = 1000
) -> torch.Tensor:
    """Per image, -log p(x | z = mu) + KL(q(z|x) || p(z)): deterministic, cheap, and within a few
    nats of the IWAE estimate for every image, which makes it a good control variate."""
    values = []
    for xb in x.split(batch_size):
        mu, logvar = model.encode(xb)
        assert logvar is not None
        recon = reconstruction_nll(model.decode_logits(mu), xb, cfg.likelihood, cfg.gaussian_sigma)
        values.append((recon + kl_to_standard_normal(mu, logvar)).double())
    return torch.cat(values)


@torch.no_grad()
def iwae_estimate(
    model: AutoEncoder,
    cfg: TrainConfig,
    x: torch.Tensor,
    k: int,
    images: int | None = None,
    batch_size: int = 100,
    progress: bool = True,
    seed: int = EVAL_SEED,
) -> dict[str, Any]:
    """The IWAE estimate of -log p(x) for the test images `x`, importance-sampling `images` of
    them (None: all) with k samples each; see `summarise_iwae` for what it returns."""
    if k < 1:
        raise ValueError(f"iwae k must be >= 1, got {k}")
    gen = torch.Generator().manual_seed(seed)
    subset = iwae_subset(len(x), images, seed)
    nll, nll_half = [], []
    with tqdm(
        total=len(subset),
        desc=f"IWAE k={k}",
        unit="image",
        disable=None if progress else True,
        dynamic_ncols=True,
    ) as bar:
        for xb in x[subset.to(x.device)].split(batch_size):
            log_w = iwae_log_weights(model, xb, cfg, k, gen)
            nll.append(nll_from_log_weights(log_w))
            if k >= 2:
                half = k // 2
                first, second = log_w[:half], log_w[half : 2 * half]
                nll_half.append((nll_from_log_weights(first) + nll_from_log_weights(second)) / 2)
            bar.update(len(xb))
    return summarise_iwae(
        torch.cat(nll).cpu(),
        torch.cat(nll_half).cpu() if nll_half else None,
        iwae_control(model, cfg, x).cpu(),
        subset,
        k,
    )


@torch.no_grad()
def evaluate_model(
    model: AutoEncoder,
    cfg: TrainConfig,
    x: torch.Tensor,
    iwae_k: int = DEFAULT_IWAE_K,
    iwae_images: int | None = DEFAULT_IWAE_IMAGES,
    batch_size: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """All test metrics for `model` on images `x` (N, C, H, W); see the module docstring.

    Everything but the IWAE estimate uses all of `x`; the IWAE estimate uses `iwae_images` of
    them (None: all) with `iwae_k` samples each (0: skipped).
    """
    model.eval()
    gen = torch.Generator().manual_seed(EVAL_SEED)
    started = time.perf_counter()
    totals: dict[str, float] = {}
    mus = []

    def add(name: str, values: torch.Tensor) -> None:
        totals[name] = totals.get(name, 0.0) + float(values.double().sum())

    for xb in tqdm(
        x.split(batch_size),
        desc="metrics",
        unit="batch",
        disable=None if progress else True,
        dynamic_ncols=True,
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
            iwae_started = time.perf_counter()
            iwae = iwae_estimate(model, cfg, x, iwae_k, iwae_images, progress=progress)
            result["iwae"] = {
                **iwae,
                "seconds": round(time.perf_counter() - iwae_started, 2),
            }
    else:
        result["reconstruction"] = m["det_nll"]
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def evaluate_run(
    run_dir: Path,
    iwae_k: int = DEFAULT_IWAE_K,
    iwae_images: int | None = DEFAULT_IWAE_IMAGES,
    data_dir: str | None = None,
    device: str = "cpu",
    checkpoint: str = "best",
    limit: int | None = None,
    progress: bool = True,
    samples: int = DEFAULT_SAMPLES,
) -> dict[str, Any]:
    """Evaluate a run's model on its test set and write evaluation.json into the run; for a VAE
    with `samples` > 0, judge that many prior samples too (`sample_quality`)."""
    run = load_run(run_dir, checkpoint, device)
    cfg = run.config
    splits = load_run_splits(run, data_dir)
    x = test_images(cfg, splits, next(run.model.parameters()).device)
    if limit is not None:
        x = x[:limit]
    result = {
        "dataset": splits.name,
        "checkpoint": checkpoint,
        "epoch": run.epoch,
        **evaluate_model(
            run.model, cfg, x, iwae_k=iwae_k, iwae_images=iwae_images, progress=progress
        ),
    }
    if run.model.is_vae and samples > 0:
        # Against the test images as they are: a binarised test set is the likelihood's
        # convention, but the samples are pixel means, and the classifier saw grey images.
        grey = torch.from_numpy(splits.test.images[:limit])
        result["sample_quality"] = model_sample_quality(
            run.model, splits.name, grey, samples, seed=EVAL_SEED
        )
    (Path(run_dir) / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
