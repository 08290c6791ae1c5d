"""A training checkpoint: the one place that knows what a `.pt` file of a run holds.

`best.pt` holds the model and what describes it; `last.pt` adds the `ResumeState` that lets
`train --resume` continue the run exactly where it stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training import __version__
from training.config import TrainConfig
from training.model import AutoEncoder, ModelConfig

# Keys of the dict on disk: every checkpoint has MODEL_KEYS, last.pt RESUME_KEYS as well.
MODEL_KEYS = ("model", "model_config", "train_config", "epoch")
RESUME_KEYS = ("optimizer", "scheduler", "rng", "history", "best_val_loss", "best_epoch")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read or is not a checkpoint of this project."""


@dataclass
class RngStates:
    """The random generators a resumed run must continue from."""

    shuffle: torch.Tensor  # the generator that shuffles each epoch
    cpu: torch.Tensor  # torch's global CPU generator
    cuda: list[torch.Tensor] | None = None  # the same on each CUDA device, when training there


@dataclass
class ResumeState:
    """What `last.pt` holds beyond the model: optimiser, schedule, RNGs and the run's history."""

    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    rng: RngStates
    history: list[dict[str, float]]
    best_val_loss: float
    best_epoch: int


@dataclass
class Checkpoint:
    """One checkpoint file of a run; only `to_dict` and `from_dict` know its keys."""

    model_state: dict[str, torch.Tensor]
    model_config: ModelConfig
    train_config: TrainConfig
    epoch: int
    dataset: dict[str, Any] | None = None  # name, label names and split sizes, for the manifest
    package_version: str = __version__
    resume: ResumeState | None = None

    def build_model(self, device: torch.device | str = "cpu") -> AutoEncoder:
        """The checkpoint's model on `device`, in eval mode."""
        model = AutoEncoder(self.model_config)
        model.load_state_dict(self.model_state)
        return model.to(device).eval()

    def to_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.model_state,
            "model_config": self.model_config.to_dict(),
            "train_config": self.train_config.to_dict(),
            "dataset": self.dataset,
            "epoch": self.epoch,
            "package_version": self.package_version,
        }
        if self.resume is not None:
            rng = self.resume.rng
            state |= {
                "optimizer": self.resume.optimizer,
                "scheduler": self.resume.scheduler,
                "rng": {"shuffle": rng.shuffle, "torch": rng.cpu, "cuda": rng.cuda},
                "history": self.resume.history,
                "best_val_loss": self.resume.best_val_loss,
                "best_epoch": self.resume.best_epoch,
            }
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Checkpoint:
        resume = None
        if all(key in state for key in RESUME_KEYS):
            rng = state["rng"]
            resume = ResumeState(
                optimizer=state["optimizer"],
                scheduler=state["scheduler"],
                rng=RngStates(rng["shuffle"], rng["torch"], rng.get("cuda")),
                history=state["history"],
                best_val_loss=state["best_val_loss"],
                best_epoch=state["best_epoch"],
            )
        return cls(
            model_state=state["model"],
            model_config=ModelConfig.from_dict(state["model_config"]),
            train_config=TrainConfig.from_dict(state["train_config"]),
            epoch=state["epoch"],
            dataset=state.get("dataset"),  # optional: export then derives it from the config
            package_version=state.get("package_version", "unknown"),
            resume=resume,
        )

    def save(self, path: Path) -> None:
        """Write to `path` through a temporary file, so that a crash mid-write never leaves a
        half checkpoint behind."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.to_dict(), tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> Checkpoint:
        """Read `path`, its tensors mapped onto `device`; only tensors and plain data are
        unpickled, so a checkpoint from elsewhere cannot run code."""
        path = Path(path)
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except FileNotFoundError as exc:
            raise CheckpointError(f"no checkpoint at {path}") from exc
        except Exception as exc:  # a damaged file fails anywhere in torch's unpickler
            raise CheckpointError(f"{path} is not a readable checkpoint ({exc})") from exc
        missing = [key for key in MODEL_KEYS if not isinstance(state, dict) or key not in state]
        if missing:
            raise CheckpointError(f"{path} is not a checkpoint of a run: no {', '.join(missing)}")
        return cls.from_dict(state)
