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


def test_cli_image_size_and_channels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(20):
        Image.new("L", (30, 20), color=i * 10).save(folder / f"{i}.png")
    out = tmp_path / "run"
    common = ["train", "--dataset", str(folder), "--epochs", "1", "--quiet", "--device", "cpu"]
    args = [*common, "--image-size", "12,16", "--channels", "3", "--out", str(out)]
    assert main([*args, "--val-size", "2", "--hidden", "8", "--latent-dim", "2"]) == 0
    assert "on 12x16 RGB images" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    assert saved["image_size"] == [12, 16] and saved["channels"] == 3
    assert main([*common, "--out", str(tmp_path / "own"), "--hidden", "8"]) == 0
    assert "on 20x30 grayscale images" in capsys.readouterr().out  # the folder's own
    with pytest.raises(SystemExit):
        main([*common, "--channels", "32,64"])
    assert "--conv-channels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*common, "--image-size", "0"])
    assert "--image-size" in capsys.readouterr().err
    too_small = [*common, "--architecture", "conv", "--image-size", "6", "--out", str(tmp_path)]
    assert main(too_small) == 2
    assert "at least 8x8 pixels" in capsys.readouterr().err
    assert main(["train", "--channels", "3", "--out", str(tmp_path / "m")]) == 2
    assert "mnist is grayscale" in capsys.readouterr().err
