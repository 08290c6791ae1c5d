"""The figures people expect from an AE or VAE, written as PNGs into the run directory.

latent_scatter.png   test-set latent means coloured by label (PCA when latent > 2)
manifold.png         decoder outputs on a grid of Gaussian quantiles (latent 2), else a traversal
                     of the two most active latent dimensions
reconstructions.png  test images, their deterministic reconstruction decode(mu) and sampled ones
samples.png          decoded prior samples z ~ N(0, I)
loss_curves.png      train and validation loss, reconstruction and KL per epoch
"""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator
from numpy.typing import NDArray

from training.evaluate import EVAL_SEED, test_images
from training.model import AutoEncoder, reparameterize
from training.train import load_run, load_run_splits, read_history

FIGURES = ("latent_scatter", "manifold", "reconstructions", "samples", "loss_curves")


def _as_pictures(images: torch.Tensor) -> NDArray[np.float32]:
    """(N, C, H, W) images -> (N, H, W) grayscale or (N, H, W, 3) colour, as matplotlib draws."""
    pictures = images.permute(0, 2, 3, 1).cpu().numpy()
    return pictures[..., 0] if pictures.shape[-1] == 1 else pictures


def _decode(model: AutoEncoder, z: torch.Tensor) -> NDArray[np.float32]:
    """Decoded images as pictures: (N, H, W) grayscale or (N, H, W, 3) colour."""
    with torch.no_grad():
        shape = model.config.image_shape
        return _as_pictures(torch.sigmoid(model.decode_logits(z)).reshape(-1, *shape))


def _tile(images: NDArray[np.float32], rows: int, cols: int, pad: int = 1) -> NDArray[np.float32]:
    """(rows*cols, h, w[, 3]) -> one (rows*(h+pad), cols*(w+pad)[, 3]) mosaic on white."""
    h, w = images.shape[1:3]
    canvas = np.ones(
        (rows * (h + pad) - pad, cols * (w + pad) - pad, *images.shape[3:]), dtype=np.float32
    )
    for i, img in enumerate(images[: rows * cols]):
        r, c = divmod(i, cols)
        canvas[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = img
    return canvas


def _show(ax: plt.Axes, mosaic: NDArray[np.float32]) -> None:
    """Draw a mosaic: grayscale through the gray colour map, colour as it is."""
    if mosaic.ndim == 2:
        ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(mosaic, 0, 1))


def _pca_2d(points: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    centred = points - points.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    explained = singular**2 / np.sum(singular**2)
    return centred @ vt[:2].T, explained[:2]


def _save(fig: plt.Figure, path: Path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def latent_scatter(
    mu: NDArray[np.float32],
    labels: NDArray[np.int64],
    names: tuple[str, ...],
    title: str,
    path: Path,
) -> None:
    if mu.shape[1] == 2:
        points, axes_names = mu, ("z[0]", "z[1]")
    else:
        points, explained = _pca_2d(mu)
        axes_names = (f"PC 1 ({explained[0]:.0%} of variance)", f"PC 2 ({explained[1]:.0%})")
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    cmap = plt.get_cmap("tab10")
    for label in np.unique(labels):
        sel = labels == label
        name = names[label] if 0 <= label < len(names) else "unlabelled"
        colour = cmap(int(label) % 10) if label >= 0 else "grey"
        ax.scatter(points[sel, 0], points[sel, 1], s=2, alpha=0.6, color=colour, label=name)
    ax.set_xlabel(axes_names[0])
    ax.set_ylabel(axes_names[1])
    ax.set_title(title)
    ax.legend(markerscale=5, fontsize=8, loc="best", framealpha=0.8)
    _save(fig, path)


def write_report(
    run_dir: Path, data_dir: str | None = None, checkpoint: str = "best", n_scatter: int = 10000
) -> list[Path]:
    """Draw every figure in FIGURES for a run; returns the files written."""
    run_dir = Path(run_dir)
    run = load_run(run_dir, checkpoint)
    model, cfg = run.model, run.config
    splits = load_run_splits(run, data_dir)
    x = test_images(cfg, splits, torch.device("cpu"))[:n_scatter]
    labels = splits.test.labels[:n_scatter]
    gen = torch.Generator().manual_seed(EVAL_SEED)
    latent = model.config.latent_dim
    kind = "VAE" if model.is_vae else "AE"
    label = f"{kind} {cfg.architecture}, latent {latent}, {splits.name}"
    with torch.no_grad():
        encoded = [model.encode(xb) for xb in x.split(1000)]
    mu = torch.cat([m for m, _ in encoded])
    logvars = [lv for _, lv in encoded if lv is not None]
    logvar = torch.cat(logvars) if logvars else None
    mu_np = mu.numpy()
    written = []

    path = run_dir / "latent_scatter.png"
    what = "latent means mu" if model.is_vae else "codes z"
    latent_scatter(mu_np, labels, splits.label_names, f"Test-set {what}: {label}", path)
    written.append(path)

    # Manifold: the VAE prior's Gaussian quantiles (Kingma & Welling 2013, figure 4). An AE has
    # no prior, so its grid spans the same quantiles of a Gaussian fitted to its test codes.
    grid = 20
    quantiles = np.array([NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, grid)])
    centre = np.zeros(latent) if model.is_vae else mu_np.mean(axis=0)
    scale = np.ones(latent) if model.is_vae else mu_np.std(axis=0)
    if latent == 2:
        dims = (0, 1)
        subtitle = "decoded at Gaussian quantiles 0.05 .. 0.95 of z[0] (across) and z[1] (down)"
    else:
        by_activity = np.argsort(mu_np.var(axis=0))[::-1]
        dims = (int(by_activity[0]), int(by_activity[1]))
        subtitle = (
            f"traversal of the two most active dims z[{dims[0]}] (across) and z[{dims[1]}] "
            "(down) at Gaussian quantiles, others at the centre"
        )
    z = np.tile(centre, (grid * grid, 1)).astype(np.float32)
    rows, cols = np.meshgrid(quantiles[::-1], quantiles, indexing="ij")
    z[:, dims[0]] = centre[dims[0]] + cols.ravel() * scale[dims[0]]
    z[:, dims[1]] = centre[dims[1]] + rows.ravel() * scale[dims[1]]
    fig, ax = plt.subplots(figsize=(8, 8.4))
    _show(ax, _tile(_decode(model, torch.from_numpy(z)), grid, grid))
    ax.set_axis_off()
    ax.set_title(f"Manifold: {label}\n{subtitle}", fontsize=9)
    path = run_dir / "manifold.png"
    _save(fig, path)
    written.append(path)

    # Reconstructions: the first test image of each label (or the first ten images).
    picks = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels) if c >= 0][:10]
    picks = picks if len(picks) >= 2 else list(range(min(10, len(x))))
    originals = _as_pictures(x[picks])
    rows_list = [("input", originals), ("decode(mu)", _decode(model, mu[picks]))]
    if logvar is not None:
        for i in range(3):
            eps = torch.randn(mu[picks].shape, generator=gen)
            sampled = _decode(model, reparameterize(mu[picks], logvar[picks], eps))
            rows_list.append((f"sampled #{i + 1}", sampled))
    fig, axes = plt.subplots(len(rows_list), 1, figsize=(len(picks) * 0.9, len(rows_list) * 1.05))
    for ax, (row_name, imgs) in zip(axes, rows_list, strict=True):
        _show(ax, _tile(imgs, 1, len(picks)))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(row_name, rotation=0, ha="right", va="center", fontsize=8)
    axes[0].set_title(f"Reconstructions: {label}", fontsize=9)
    path = run_dir / "reconstructions.png"
    _save(fig, path)
    written.append(path)

    # Samples: z ~ N(0, I) for a VAE; an AE has no prior to sample, so a fitted Gaussian stands in.
    z_samples = torch.randn(100, latent, generator=gen)
    if not model.is_vae:
        z_samples = z_samples * torch.from_numpy(scale).float() + torch.from_numpy(centre).float()
    fig, ax = plt.subplots(figsize=(7, 7.3))
    _show(ax, _tile(_decode(model, z_samples), 10, 10))
    ax.set_axis_off()
    source = (
        "z ~ N(0, I)" if model.is_vae else "z ~ Gaussian fitted to test codes (an AE has no prior)"
    )
    ax.set_title(f"Samples, {source}: {label}", fontsize=9)
    path = run_dir / "samples.png"
    _save(fig, path)
    written.append(path)

    path = run_dir / "loss_curves.png"
    loss_curves(read_history(run_dir), label, path)
    written.append(path)
    return written


def loss_curves(history: list[dict[str, float]], title: str, path: Path) -> None:
    _save(loss_curves_figure(history, title), path)


def loss_curves_figure(history: list[dict[str, float]], title: str) -> plt.Figure:
    """Train and validation loss, reconstruction and KL against the epoch, one panel each."""
    epochs = [h["epoch"] for h in history]
    panels = [("loss", "loss (recon + beta KL)"), ("recon", "reconstruction"), ("kl", "KL")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, name) in zip(axes, panels, strict=True):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], label="train", marker=".")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], label="validation", marker=".")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Loss curves: {title}", fontsize=10, y=1.03)
    return fig
