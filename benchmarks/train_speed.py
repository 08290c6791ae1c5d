"""Seconds per epoch: `training.train` against a minimal hand-written PyTorch VAE loop.

Both train the same MLP VAE (784-H-latent, Bernoulli likelihood, Adam 1e-3) on the same MNIST
training images at the same batch size, one after the other on this machine; the table shows the
median epoch time of each and their ratio. Needs the MNIST files (VAE_DATA_DIR or --data-dir).

    python benchmarks/train_speed.py --data-dir DATA_DIR   # the folder holding mnist/
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.config import TrainConfig
from training.data import load_splits
from training.train import train


class MinimalVAE(nn.Module):
    """The loop people write first (pytorch/examples style), kept deliberately plain."""

    def __init__(self, hidden: int, latent: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.fc_mu = nn.Linear(hidden, latent)
        self.fc_logvar = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, 784)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.fc4(F.relu(self.fc3(z))), mu, logvar


def minimal_epochs(
    x: torch.Tensor, hidden: int, latent: int, batch: int, epochs: int
) -> list[float]:
    torch.manual_seed(0)
    model = MinimalVAE(hidden, latent)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for idx in torch.randperm(len(x)).split(batch):
            xb = x[idx]
            logits, mu, logvar = model(xb)
            recon = F.binary_cross_entropy_with_logits(logits, xb, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = (recon + kl) / len(xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    cfg = TrainConfig(
        hidden=(args.hidden,),
        latent_dim=args.latent,
        batch_size=args.batch_size,
        epochs=args.epochs,
        data_dir=args.data_dir,
        device="cpu",
    )
    splits = load_splits(cfg.dataset, cfg.data_dir, cfg.val_size)
    x = torch.from_numpy(splits.train.images).flatten(1)
    print(
        f"{len(x)} training images, 784-{args.hidden}-{args.latent}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} torch threads, {args.epochs} epochs each (median shown)"
    )

    minimal = minimal_epochs(x, args.hidden, args.latent, args.batch_size, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, Path(tmp) / "run", splits=splits, progress=True)
    ours = [h["seconds"] for h in result.history]

    m, o = statistics.median(minimal), statistics.median(ours)
    print("\n| loop | s/epoch (median) | all epochs |\n|---|---|---|")
    print(f"| minimal hand-written | {m:.2f} | {', '.join(f'{t:.2f}' for t in minimal)} |")
    print(
        f"| training.train (with validation pass, checkpoint, progress bar) | {o:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in ours)} |"
    )
    print(f"\nratio training.train / minimal: {o / m:.2f}x")


if __name__ == "__main__":
    main()
