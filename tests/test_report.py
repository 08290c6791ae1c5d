from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from training import report
from training.config import TrainConfig
from training.report import FIGURES, write_report
from training.train import train


@pytest.mark.parametrize("run_fixture", ["vae_run", "ae_run"])
def test_report_writes_every_figure(run_fixture: str, request: pytest.FixtureRequest) -> None:
    run_dir: Path = request.getfixturevalue(run_fixture)
    written = write_report(run_dir)
    assert [p.name for p in written] == [f"{name}.png" for name in FIGURES]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as img:
            assert img.width > 300 and img.height > 200, path
            # Not a blank canvas: the figure holds more than a couple of colours.
            assert len(img.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 8, path


def _visible_ticks(ax: Axes) -> list[float]:
    low, high = ax.get_xlim()
    return [float(t) for t in ax.get_xticks() if low <= t <= high]


def test_loss_curves_have_whole_epoch_ticks(vae_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The figure write_report itself draws, caught on its way to the PNG file.
    drawn: dict[str, Figure] = {}
    save = report._save

    def keep(fig: Figure, path: Path) -> None:
        drawn[path.name] = fig
        save(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    report.write_report(vae_run)  # 3 epochs: matplotlib's default ticks would be 1.0, 1.25, ...
    axes = drawn["loss_curves.png"].axes
    assert len(axes) == 3
    for ax in axes:
        ticks = _visible_ticks(ax)
        assert ticks == [1.0, 2.0, 3.0], ticks
        assert ax.get_xlabel() == "epoch"


@pytest.mark.parametrize("epochs", [1, 2, 7, 100])
def test_loss_curve_ticks_are_whole_numbers_for_any_run_length(epochs: int) -> None:
    history = [
        {
            f"{split}_{key}": 100.0 / e
            for split in ("train", "val")
            for key in ("loss", "recon", "kl")
        }
        | {"epoch": e}
        for e in range(1, epochs + 1)
    ]
    fig = report.loss_curves_figure(history, "test")
    for ax in fig.axes:
        ticks = _visible_ticks(ax)
        assert ticks and all(t == int(t) for t in ticks), ticks
        assert len(ticks) <= 11  # whole numbers, but not one tick per epoch of a long run


def test_colour_runs_are_drawn_in_colour(tmp_path: Path) -> None:
    # Pure red, green and blue squares on black, at an odd size (conv: odd sides exercised too).
    rng = np.random.default_rng(0)
    images = np.zeros((60, 15, 18, 3), np.uint8)
    for i in range(60):
        top, left = rng.integers(0, 8), rng.integers(0, 9)
        images[i, top : top + 7, left : left + 9, i % 3] = 255
    np.savez(tmp_path / "rgb.npz", x=images, y=np.arange(60) % 3)
    cfg = TrainConfig(
        dataset=str(tmp_path / "rgb.npz"),
        architecture="conv",
        conv_channels=(4, 8),
        hidden=(16,),
        latent_dim=2,
        epochs=2,
        batch_size=16,
        val_size=8,
        device="cpu",
    )
    train(cfg, tmp_path / "run", progress=False)
    for path in write_report(tmp_path / "run"):
        if path.name == "loss_curves.png":
            continue
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.int16)
        if path.name == "reconstructions.png":  # the input row holds pure colours
            spread = pixels.max(axis=-1) - pixels.min(axis=-1)
            assert (spread > 200).sum() > 100, path
