from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from training.report import FIGURES, write_report


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
