"""The training loop.

A run directory holds everything about one training:
  config.json        the TrainConfig
  metrics.jsonl      one JSON line per epoch (train and validation loss, recon, KL, beta, lr, time)
  checkpoints/last.pt  written after every epoch (model, optimiser, scheduler, RNG states)
  checkpoints/best.pt  the model with the lowest validation loss so far
evaluation.json, the figures and the export are added by the other commands.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from training import __version__
from training.config import TrainConfig
from training.data import Splits, load_splits
from training.model import AutoEncoder, ModelConfig, loss_terms

CHECKPOINTS = "checkpoints"


class RunError(RuntimeError):
    """A run directory is missing, incomplete or in the way; the message says what to do."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device {name!r} asked for, but torch sees no CUDA device; use cpu or auto")
    return device


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a half checkpoint behind


def _beta_at(cfg: TrainConfig, epoch_progress: float) -> float:
    """Linear KL warm-up (Bowman et al. 2016; Sønderby et al. 2016): 0 to beta over warm-up."""
    if cfg.warmup_epochs <= 0:
        return cfg.beta
    return cfg.beta * min(1.0, epoch_progress / cfg.warmup_epochs)


@torch.no_grad()
def evaluate_loss(
    model: AutoEncoder, images: torch.Tensor, cfg: TrainConfig, batch_size: int = 1000
) -> dict[str, float]:
    """Mean loss, reconstruction and KL per image over `images` at the full beta."""
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=images.device)
    for x in images.split(batch_size):
        terms = loss_terms(model, x, cfg.likelihood, cfg.beta, cfg.gaussian_sigma)
        sums += torch.stack([terms.recon.sum(), terms.kl.sum()]).double()
    recon, kl = (sums / len(images)).tolist()
    return {"loss": recon + cfg.beta * kl, "recon": recon, "kl": kl}


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float


def train(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    splits: Splits | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `cfg` into `run_dir`; with `resume`, continue from its last checkpoint.

    Same config, same seed and same data give bit-identical weights on the CPU, whether the run
    went straight through or was resumed.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / CHECKPOINTS
    last_path = ckpt_dir / "last.pt"
    if resume and not last_path.exists():
        raise RunError(f"--resume: no checkpoint at {last_path}")
    if not resume and last_path.exists():
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it or pick --out")

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    # Data first: when it cannot be read or downloaded, no run directory is left behind.
    splits = splits or load_splits(cfg.dataset, cfg.data_dir, cfg.val_size, invert=cfg.invert)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # The whole dataset fits on the device (60000 x 784 floats = 188 MB): indexing a tensor with a
    # shuffled permutation is much cheaper per batch than a DataLoader's Python collation.
    x_train = torch.from_numpy(splits.train.images).to(device)
    x_val = torch.from_numpy(splits.val.images).to(device)
    if cfg.binarize:
        # Validate on one fixed binarisation so epochs compare like with like.
        val_gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
        x_val = torch.bernoulli(x_val.cpu(), generator=val_gen).to(device)

    model = AutoEncoder(cfg.model_config()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    if cfg.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.epochs * steps_per_epoch
        )
    shuffle_gen = torch.Generator(device="cpu").manual_seed(cfg.seed)

    start_epoch, history = 1, []
    best_val, best_epoch = math.inf, 0
    if resume:
        state = torch.load(last_path, map_location=device, weights_only=False)
        saved = TrainConfig.from_dict(state["train_config"])
        # Only the length of the run and the device may change on resume (to extend a run or move
        # it); anything else would silently train a different model than config.json says.
        changed = sorted(
            k
            for k, v in saved.to_dict().items()
            if k not in ("epochs", "device") and v != cfg.to_dict()[k]
        )
        if changed:
            raise RunError(f"{run_dir}: --resume cannot change {', '.join(changed)}")
        if cfg.lr_schedule == "cosine" and cfg.epochs != saved.epochs:
            raise RunError(f"{run_dir}: --resume cannot change epochs under a cosine schedule")
        if state["epoch"] >= cfg.epochs:
            raise RunError(f"{run_dir}: already trained {state['epoch']} epochs; raise --epochs")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        shuffle_gen.set_state(state["rng"]["shuffle"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        best_val, best_epoch = state["best_val_loss"], state["best_epoch"]
    dataset = {
        "name": splits.name,
        "label_names": list(splits.label_names),
        "sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
    }
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    _write_history(run_dir, history)

    for epoch in range(start_epoch, cfg.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train), generator=shuffle_gen).to(device)
        # Running sums stay on the device: reading them every batch would sync a GPU each step.
        sums = torch.zeros(3, device=device)
        bar = tqdm(
            order.split(cfg.batch_size),
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="batch",
            disable=None if progress else True,  # None: no bar when output is not a terminal
            leave=True,
            dynamic_ncols=True,
        )
        for step, idx in enumerate(bar):
            x = x_train[idx]
            if cfg.binarize:
                x = torch.bernoulli(x)
            beta = _beta_at(cfg, epoch - 1 + step / steps_per_epoch)
            terms = loss_terms(model, x, cfg.likelihood, beta, cfg.gaussian_sigma)
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            sums += torch.stack([terms.loss, terms.recon.mean(), terms.kl.mean()]).detach() * len(
                idx
            )
            if progress and (step % 50 == 0 or step == steps_per_epoch - 1):
                loss, recon, kl = (sums / ((step * cfg.batch_size) + len(idx))).tolist()
                bar.set_postfix(loss=f"{loss:.2f}", recon=f"{recon:.2f}", kl=f"{kl:.2f}")
        bar.close()
        train_loss, train_recon, train_kl = (sums / len(x_train)).tolist()
        val = evaluate_loss(model, x_val, cfg)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_recon": train_recon,
            "train_kl": train_kl,
            "val_loss": val["loss"],
            "val_recon": val["recon"],
            "val_kl": val["kl"],
            "beta": _beta_at(cfg, epoch),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        # Select on validation only once warm-up is over: earlier epochs optimise another objective.
        if val["loss"] < best_val and epoch >= cfg.warmup_epochs:
            best_val, best_epoch = val["loss"], epoch
            _atomic_save(_model_state(model, cfg, epoch, dataset), ckpt_dir / "best.pt")
        _atomic_save(
            {
                **_model_state(model, cfg, epoch, dataset),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": {
                    "shuffle": shuffle_gen.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                },
                "history": history,
                "best_val_loss": best_val,
                "best_epoch": best_epoch,
            },
            last_path,
        )
        with (run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        if progress:
            tqdm.write(
                f"epoch {epoch}: train {train_loss:.3f} | val {val['loss']:.3f} "
                f"(recon {val['recon']:.3f}, kl {val['kl']:.3f}) | {record['seconds']:.1f} s"
            )
    return TrainResult(run_dir, history, best_epoch, best_val)


def _model_state(
    model: AutoEncoder, cfg: TrainConfig, epoch: int, dataset: dict[str, Any]
) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "model_config": model.config.to_dict(),
        "train_config": cfg.to_dict(),
        "dataset": dataset,  # name, label names and split sizes, for the manifest
        "epoch": epoch,
        "package_version": __version__,
    }


def _write_history(run_dir: Path, history: list[dict[str, float]]) -> None:
    # On resume, metrics.jsonl is rewritten from the checkpoint: an epoch that crashed half-way
    # must not leave a line behind.
    lines = "".join(json.dumps(r) + "\n" for r in history)
    (run_dir / "metrics.jsonl").write_text(lines)


@dataclass
class LoadedRun:
    run_dir: Path
    config: TrainConfig
    model: AutoEncoder
    epoch: int
    dataset: dict[str, Any] | None


def load_run(run_dir: Path, checkpoint: str = "best", device: str = "cpu") -> LoadedRun:
    """The trained model of a run (`best` or `last` checkpoint) in eval mode."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINTS / f"{checkpoint}.pt"
    if not path.exists():
        fallback = run_dir / CHECKPOINTS / "last.pt"
        if checkpoint == "best" and fallback.exists():
            path = fallback  # warm-up longer than the run: no best yet
        else:
            raise RunError(f"no checkpoint at {path}; train first (python -m training train)")
    state = torch.load(path, map_location=resolve_device(device), weights_only=False)
    model = AutoEncoder(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    model.to(resolve_device(device)).eval()
    config = TrainConfig.from_dict(state["train_config"])
    return LoadedRun(run_dir, config, model, state["epoch"], state.get("dataset"))


def read_history(run_dir: Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
