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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from training.checkpoint import Checkpoint, ResumeState, RngStates
from training.config import TrainConfig
from training.data import Splits, load_splits
from training.model import AutoEncoder, loss_terms

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


def beta_at(cfg: TrainConfig, epoch_progress: float) -> float:
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
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (channels, height, width) trained on


@dataclass
class RunFiles:
    """Where a run directory keeps its files."""

    run_dir: Path

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / CHECKPOINTS

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def config(self) -> Path:
        return self.run_dir / "config.json"

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.jsonl"


@dataclass
class TrainingData:
    """The images on the device, and what the checkpoints record about their dataset."""

    train: torch.Tensor
    val: torch.Tensor
    dataset: dict[str, Any]


@dataclass
class TrainingState:
    """Everything the epoch loop changes; `last.pt` holds all of it."""

    cfg: TrainConfig
    device: torch.device
    model: AutoEncoder
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    shuffle: torch.Generator
    steps_per_epoch: int
    epochs_done: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = 0


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
    files = check_run_directory(Path(run_dir), resume)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # before the model is built: it seeds the initial weights
    # Data first: when it cannot be read or downloaded, no run directory is left behind.
    data = load_training_data(cfg, splits, device)
    files.checkpoints.mkdir(parents=True, exist_ok=True)
    image_shape = tuple(data.train.shape[1:])
    state = start_training(cfg, len(data.train), device, image_shape)
    if resume:
        restore_training(state, Checkpoint.load(files.last, device), files.run_dir)
    write_run_start(files, cfg, state.history)
    for epoch in range(state.epochs_done + 1, cfg.epochs + 1):
        record = train_one_epoch(state, data, epoch, progress)
        save_checkpoints(state, record, data.dataset, files)
        append_metrics(files, record)
    return TrainResult(
        files.run_dir,
        state.history,
        state.best_epoch,
        state.best_val_loss,
        state.model.config.image_shape,
    )


def check_run_directory(run_dir: Path, resume: bool) -> RunFiles:
    """Check that `run_dir` holds a run to resume, or none to overwrite; creates nothing."""
    files = RunFiles(run_dir)
    if resume and not files.last.exists():
        raise RunError(f"--resume: no checkpoint at {files.last}")
    if not resume and files.last.exists():
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it or pick --out")
    return files


def load_training_data(
    cfg: TrainConfig, splits: Splits | None, device: torch.device
) -> TrainingData:
    """The train and validation images as tensors on `device`: indexing one tensor with a shuffled
    permutation costs far less per batch than a DataLoader's Python collation."""
    splits = splits or load_splits(
        cfg.dataset,
        cfg.data_dir,
        cfg.val_size,
        invert=cfg.invert,
        image_size=cfg.image_size,
        channels=cfg.channels,
    )
    x_train = torch.from_numpy(splits.train.images).to(device)
    x_val = torch.from_numpy(splits.val.images).to(device)
    if cfg.binarize:
        # Validate on one fixed binarisation so epochs compare like with like.
        val_gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
        x_val = torch.bernoulli(x_val.cpu(), generator=val_gen).to(device)
    dataset = {
        "name": splits.name,
        "label_names": list(splits.label_names),
        "sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "image_shape": list(splits.image_shape),
    }
    return TrainingData(x_train, x_val, dataset)


def start_training(
    cfg: TrainConfig,
    n_train: int,
    device: torch.device,
    image_shape: tuple[int, ...] = (1, 28, 28),
) -> TrainingState:
    """A fresh model for images of `image_shape` (channels, height, width), optimiser,
    learning-rate schedule and shuffling generator."""
    channels, height, width = image_shape
    model = AutoEncoder(cfg.model_config((channels, height, width))).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    if cfg.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.epochs * steps_per_epoch
        )
    shuffle = torch.Generator(device="cpu").manual_seed(cfg.seed)
    return TrainingState(cfg, device, model, optimizer, scheduler, shuffle, steps_per_epoch)


def restore_training(state: TrainingState, checkpoint: Checkpoint, run_dir: Path) -> None:
    """Continue from `checkpoint`: weights, optimiser, schedule, RNGs, history and best epoch."""
    cfg, saved, resumed = state.cfg, checkpoint.train_config, checkpoint.resume
    if resumed is None:
        raise RunError(f"{run_dir}: the last checkpoint holds no optimiser state to resume from")
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
    if checkpoint.epoch >= cfg.epochs:
        raise RunError(f"{run_dir}: already trained {checkpoint.epoch} epochs; raise --epochs")
    state.model.load_state_dict(checkpoint.model_state)
    state.optimizer.load_state_dict(resumed.optimizer)
    if state.scheduler is not None and resumed.scheduler is not None:
        state.scheduler.load_state_dict(resumed.scheduler)
    state.shuffle.set_state(resumed.rng.shuffle)
    torch.set_rng_state(resumed.rng.cpu)
    if state.device.type == "cuda" and resumed.rng.cuda is not None:
        torch.cuda.set_rng_state_all(resumed.rng.cuda)
    state.epochs_done, state.history = checkpoint.epoch, resumed.history
    state.best_val_loss, state.best_epoch = resumed.best_val_loss, resumed.best_epoch


def write_run_start(files: RunFiles, cfg: TrainConfig, history: list[dict[str, float]]) -> None:
    """config.json, and metrics.jsonl as the checkpoint knows it: on resume, an epoch that crashed
    half-way must not leave a line behind."""
    files.config.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    files.metrics.write_text("".join(json.dumps(r) + "\n" for r in history))


def train_one_epoch(
    state: TrainingState, data: TrainingData, epoch: int, progress: bool
) -> dict[str, float]:
    """One pass over the shuffled training images, then the validation loss; returns the epoch's
    line of metrics.jsonl and appends it to the history."""
    cfg, model, optimizer = state.cfg, state.model, state.optimizer
    started = time.perf_counter()
    model.train()
    order = torch.randperm(len(data.train), generator=state.shuffle).to(state.device)
    # Running sums stay on the device: reading them every batch would sync a GPU each step.
    sums = torch.zeros(3, device=state.device)
    bar = tqdm(
        order.split(cfg.batch_size),
        desc=f"epoch {epoch}/{cfg.epochs}",
        unit="batch",
        disable=None if progress else True,  # None: no bar when output is not a terminal
        leave=True,
        dynamic_ncols=True,
    )
    for step, idx in enumerate(bar):
        x = data.train[idx]
        if cfg.binarize:
            x = torch.bernoulli(x)
        beta = beta_at(cfg, epoch - 1 + step / state.steps_per_epoch)
        terms = loss_terms(model, x, cfg.likelihood, beta, cfg.gaussian_sigma)
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()
        if state.scheduler is not None:
            state.scheduler.step()
        batch_terms = torch.stack([terms.loss, terms.recon.mean(), terms.kl.mean()]).detach()
        sums += batch_terms * len(idx)
        if progress and (step % 50 == 0 or step == state.steps_per_epoch - 1):
            loss, recon, kl = (sums / ((step * cfg.batch_size) + len(idx))).tolist()
            bar.set_postfix(loss=f"{loss:.2f}", recon=f"{recon:.2f}", kl=f"{kl:.2f}")
    bar.close()
    train_loss, train_recon, train_kl = (sums / len(data.train)).tolist()
    val = evaluate_loss(model, data.val, cfg)
    record = {
        "epoch": epoch,
        "train_loss": train_loss,
        "train_recon": train_recon,
        "train_kl": train_kl,
        "val_loss": val["loss"],
        "val_recon": val["recon"],
        "val_kl": val["kl"],
        "beta": beta_at(cfg, epoch),
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": time.perf_counter() - started,
    }
    state.history.append(record)
    state.epochs_done = epoch
    if progress:
        tqdm.write(
            f"epoch {epoch}: train {train_loss:.3f} | val {val['loss']:.3f} "
            f"(recon {val['recon']:.3f}, kl {val['kl']:.3f}) | {record['seconds']:.1f} s"
        )
    return record


def save_checkpoints(
    state: TrainingState, record: dict[str, float], dataset: dict[str, Any], files: RunFiles
) -> None:
    """best.pt when the validation loss improved (once warm-up is over: earlier epochs optimise
    another objective), and last.pt after every epoch."""
    epoch = state.epochs_done
    checkpoint = Checkpoint(
        model_state=state.model.state_dict(),
        model_config=state.model.config,
        train_config=state.cfg,
        epoch=epoch,
        dataset=dataset,
    )
    if record["val_loss"] < state.best_val_loss and epoch >= state.cfg.warmup_epochs:
        state.best_val_loss, state.best_epoch = record["val_loss"], epoch
        checkpoint.save(files.best)
    on_cuda = state.device.type == "cuda"
    checkpoint.resume = ResumeState(
        optimizer=state.optimizer.state_dict(),
        scheduler=state.scheduler.state_dict() if state.scheduler is not None else None,
        rng=RngStates(
            shuffle=state.shuffle.get_state(),
            cpu=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state_all() if on_cuda else None,
        ),
        history=state.history,
        best_val_loss=state.best_val_loss,
        best_epoch=state.best_epoch,
    )
    checkpoint.save(files.last)


def append_metrics(files: RunFiles, record: dict[str, float]) -> None:
    with files.metrics.open("a") as f:
        f.write(json.dumps(record) + "\n")


@dataclass
class LoadedRun:
    run_dir: Path
    config: TrainConfig
    model: AutoEncoder
    epoch: int
    dataset: dict[str, Any] | None


def load_run(run_dir: Path, checkpoint: str = "best", device: str = "cpu") -> LoadedRun:
    """The trained model of a run (`best` or `last` checkpoint) in eval mode."""
    files = RunFiles(Path(run_dir))
    path = files.checkpoints / f"{checkpoint}.pt"
    if not path.exists():
        if checkpoint == "best" and files.last.exists():
            path = files.last  # warm-up longer than the run: no best yet
        else:
            raise RunError(f"no checkpoint at {path}; train first (python -m training train)")
    torch_device = resolve_device(device)
    saved = Checkpoint.load(path, torch_device)
    model = saved.build_model(torch_device)
    return LoadedRun(files.run_dir, saved.train_config, model, saved.epoch, saved.dataset)


def load_run_splits(
    run: LoadedRun, data_dir: str | Path | None = None, download: bool = True
) -> Splits:
    """The run's dataset as its model saw it in training: the model's image size and channels
    (which the config may have left to the data), `data_dir` overriding the run's data folder."""
    cfg = run.config
    channels, height, width = run.model.config.image_shape
    return load_splits(
        cfg.dataset,
        data_dir or cfg.data_dir,
        cfg.val_size,
        invert=cfg.invert,
        download=download,
        image_size=(height, width),
        channels=channels,
    )


def read_history(run_dir: Path) -> list[dict[str, float]]:
    path = RunFiles(Path(run_dir)).metrics
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
