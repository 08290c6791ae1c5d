from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from training.checkpoint import Checkpoint, CheckpointError
from training.train import RunError, load_run, train

from .conftest import tiny_config


def test_last_checkpoint_round_trip(vae_run: Path, data_dir: Path, tmp_path: Path) -> None:
    last = Checkpoint.load(vae_run / "checkpoints" / "last.pt")
    assert last.epoch == 3 and last.train_config == tiny_config(data_dir, epochs=3)
    assert last.dataset is not None and last.dataset["name"] == "mnist"
    assert last.resume is not None
    history = [json.loads(line) for line in (vae_run / "metrics.jsonl").read_text().splitlines()]
    assert last.resume.history == history
    assert last.resume.best_epoch == min(history, key=lambda r: r["val_loss"])["epoch"]
    assert last.resume.best_val_loss == min(r["val_loss"] for r in history)
    assert last.resume.rng.cuda is None  # trained on the CPU

    copy = tmp_path / "copy.pt"
    last.save(copy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.pt"]  # no temporary file left
    again = Checkpoint.load(copy)
    assert again.to_dict().keys() == last.to_dict().keys()
    assert all(torch.equal(again.model_state[k], v) for k, v in last.model_state.items())
    assert (again.model_config, again.train_config, again.epoch, again.dataset) == (
        last.model_config,
        last.train_config,
        last.epoch,
        last.dataset,
    )
    assert again.resume is not None
    assert torch.equal(again.resume.rng.shuffle, last.resume.rng.shuffle)
    assert torch.equal(again.resume.rng.cpu, last.resume.rng.cpu)
    assert again.resume.optimizer["param_groups"] == last.resume.optimizer["param_groups"]


def test_best_checkpoint_holds_the_model_only(vae_run: Path) -> None:
    best = Checkpoint.load(vae_run / "checkpoints" / "best.pt")
    assert best.resume is None
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mu, _ = best.build_model().encode(x)
        expected, _ = load_run(vae_run, "best").model.encode(x)
    assert torch.equal(mu, expected)


def test_unreadable_checkpoints_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*missing\.pt"):
        Checkpoint.load(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.pt is not a readable checkpoint"):
        Checkpoint.load(garbage)
    other = tmp_path / "other.pt"
    torch.save({"model": {}, "epoch": 1}, other)
    with pytest.raises(CheckpointError, match=r"not a checkpoint of a run: no model_config"):
        Checkpoint.load(other)


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("code ran while loading",))


def test_loading_never_runs_code_from_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hostile.pt"
    torch.save({"model": _Payload()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        Checkpoint.load(path)
    assert "code ran" not in capsys.readouterr().out


def test_resume_needs_the_optimiser_state(tmp_path: Path, data_dir: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(data_dir, epochs=1), run, progress=False)
    shutil.copy(run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt")
    with pytest.raises(RunError, match="holds no optimiser state to resume from"):
        train(tiny_config(data_dir, epochs=2), run, resume=True, progress=False)


def test_cli_reports_an_unreadable_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import main

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "best.pt").write_bytes(b"truncated")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model")]) == 2
    assert "best.pt is not a readable checkpoint" in capsys.readouterr().err
