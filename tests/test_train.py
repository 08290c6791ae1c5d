from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from training.cli import main
from training.config import ConfigError, TrainConfig
from training.data import IDX_DATASETS, load_splits
from training.model import AutoEncoder
from training.train import RunError, _beta_at, evaluate_loss, load_run, train

from .conftest import tiny_config


def _weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / f"{which}.pt", weights_only=False)["model"]


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
    assert [_beta_at(cfg, e) for e in (0, 1, 2, 4, 9)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert _beta_at(TrainConfig(beta=0.5), 0) == 0.5


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="model='gan'"):
        TrainConfig(model="gan")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="latent_dim must be > 0"):
        TrainConfig(latent_dim=0)
    with pytest.raises(ConfigError, match="unknown setting 'hiden'"):
        TrainConfig.from_dict({"hiden": [3]})
    with pytest.raises(ConfigError, match="binarize needs"):
        TrainConfig(binarize=True, likelihood="gaussian")


def test_cli_config_file_and_flags(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('model = "ae"\nlatent_dim = 3\nhidden = [16]\nepochs = 2\nval_size = 40\n')
    out = tmp_path / "run"
    args = [
        "train",
        "--config",
        str(config),
        "--epochs",
        "1",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--quiet",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["model"], saved["latent_dim"], saved["hidden"], saved["epochs"]) == (
        "ae",
        3,
        [16],
        1,
    )
    # --resume reads the run's own config.json; --epochs extends the run.
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    config.write_text("latnet_dim = 3\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "x")]) == 2
    assert "unknown setting 'latnet_dim'" in capsys.readouterr().err


def test_cli_offline_leaves_no_folders_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mirror that cannot answer, so the test never touches the network.
    offline = dataclasses.replace(
        IDX_DATASETS["mnist"], mirrors=((tmp_path / "offline").as_uri() + "/",)
    )
    monkeypatch.setitem(IDX_DATASETS, "mnist", offline)
    monkeypatch.chdir(tmp_path)
    args = ["train", "--dataset", "mnist", "--data-dir", "data", "--out", "runs/my-vae", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mnist: 4 of 4 file(s) missing from data/mnist")
    assert "Traceback" not in err
    assert "data/mnist/train-images-idx3-ubyte.gz  <- " in err
    # Neither the data folder nor the run folder (nor its checkpoints/) was created.
    assert list(tmp_path.iterdir()) == []
