from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from training.cli import main
from training.data import IDX_DATASETS


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
