from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import training.train
from training.checkpoint import Checkpoint
from training.config import TrainConfig
from training.data import load_splits
from training.model import AutoEncoder
from training.train import (
    RunError,
    TrainingData,
    TrainingState,
    beta_at,
    evaluate_loss,
    load_run,
    train,
)

from .conftest import tiny_config


def _weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return Checkpoint.load(run_dir / "checkpoints" / f"{which}.pt").model_state


def test_one_epoch_lowers_the_validation_loss(tmp_path: Path, data_dir: Path) -> None:
    cfg = tiny_config(data_dir, epochs=1, lr=5e-3, batch_size=16)
    splits = load_splits("mnist", data_dir, cfg.val_size)
    torch.manual_seed(cfg.seed)
    untrained = AutoEncoder(cfg.model_config())
    before = evaluate_loss(untrained, torch.from_numpy(splits.val.images), cfg)["loss"]
    result = train(cfg, tmp_path / "run", progress=False)
    after = result.history[-1]["val_loss"]
    assert after < 0.8 * before, (before, after)


def test_run_directory_contents(vae_run: Path) -> None:
    lines = (vae_run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert {
        "train_loss",
        "train_recon",
        "train_kl",
        "val_loss",
        "val_recon",
        "val_kl",
        "beta",
        "lr",
        "seconds",
    } <= set(records[0])
    for r in records:
        assert r["val_loss"] == pytest.approx(r["val_recon"] + r["val_kl"])
    assert json.loads((vae_run / "config.json").read_text())["epochs"] == 3
    assert (vae_run / "checkpoints" / "last.pt").exists() and (
        vae_run / "checkpoints" / "best.pt"
    ).exists()
    best = min(records, key=lambda r: r["val_loss"])
    assert load_run(vae_run, "best").epoch == best["epoch"]


def test_same_seed_same_weights_and_other_seed_differs(tmp_path: Path, data_dir: Path) -> None:
    cfg = tiny_config(data_dir, epochs=1)
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False)
    train(tiny_config(data_dir, epochs=1, seed=1), tmp_path / "c", progress=False)
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_run_that_crashed_resumes_bit_for_bit(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cosine schedule, so the scheduler's state must come back too, not only the weights."""
    cfg = tiny_config(data_dir, epochs=3, lr_schedule="cosine", binarize=True)
    straight = train(cfg, tmp_path / "straight", progress=False)
    one_epoch = training.train.train_one_epoch

    def crash_in_epoch_3(
        state: TrainingState, data: TrainingData, epoch: int, progress: bool
    ) -> dict[str, float]:
        if epoch == 3:
            raise KeyboardInterrupt
        return one_epoch(state, data, epoch, progress)

    monkeypatch.setattr(training.train, "train_one_epoch", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "crashed", progress=False)
    monkeypatch.undo()
    assert Checkpoint.load(tmp_path / "crashed" / "checkpoints" / "last.pt").epoch == 2
    resumed = train(cfg, tmp_path / "crashed", resume=True, progress=False)

    def without_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]

    assert without_time(resumed.history) == without_time(straight.history)  # lr included
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "crashed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (resumed.best_epoch, resumed.best_val_loss) == (
        straight.best_epoch,
        straight.best_val_loss,
    )


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
    tmp_path: Path, data_dir: Path
) -> None:
    straight = tiny_config(data_dir, epochs=3, binarize=True)
    train(straight, tmp_path / "straight", progress=False)
    train(tiny_config(data_dir, epochs=1, binarize=True), tmp_path / "resumed", progress=False)
    result = train(straight, tmp_path / "resumed", resume=True, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()) == 3


def test_run_directory_guards(tmp_path: Path, data_dir: Path) -> None:
    cfg = tiny_config(data_dir, epochs=1)
    with pytest.raises(RunError, match="no checkpoint"):
        train(cfg, tmp_path / "run", resume=True, progress=False)
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="cannot change latent_dim"):
        train(
            tiny_config(data_dir, epochs=2, latent_dim=3),
            tmp_path / "run",
            resume=True,
            progress=False,
        )
    with pytest.raises(RunError, match="already trained 1 epochs"):
        train(cfg, tmp_path / "run", resume=True, progress=False)


def test_kl_warm_up_is_linear() -> None:
    cfg = TrainConfig(beta=2.0, warmup_epochs=4)
    assert [beta_at(cfg, e) for e in (0, 1, 2, 4, 9)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert beta_at(TrainConfig(beta=0.5), 0) == 0.5
