"""How well `invert="auto"` tells dark ink on light paper from bright strokes on a dark background.

On real MNIST-format data (IDX files, bright-on-dark: none should be inverted) and on their
negatives (all should be): the misfire rate (originals inverted) and the catch rate (negatives
inverted) of the service's border rule (`service.codecs.images.light_background`) and, for
comparison, of the whole-picture mean rule it replaced (mean grey above 127/255). Then the rule's
cost per call, for 1 and 256 images of 28 x 28 and for one 4000 x 3000 upload. Prints numbers
only.

    python benchmarks/invert_rule.py ../shared/data/mnist ../shared/data/fashion-mnist
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.codecs.images import invert_where_needed, light_background
from training.data import read_idx

Rule = Callable[[NDArray[Any]], NDArray[np.bool_]]


def mean_rule(images: NDArray[Any]) -> NDArray[np.bool_]:
    """The rule `auto` had before, as it was written: the whole picture's mean above 127/255."""
    rows = images.reshape(len(images), -1)
    light: NDArray[np.bool_] = (
        rows.sum(axis=1, dtype=np.float64) > (127 / 255 + 1e-7) * rows.shape[1]
    )
    return light


RULES: dict[str, Rule] = {"border (now)": light_background, "mean (before)": mean_rule}


def rates(folder: Path) -> None:
    for split in ("t10k", "train"):
        path = folder / f"{split}-images-idx3-ubyte.gz"
        if not path.exists():
            continue
        images = read_idx(path).astype(np.float32) / 255  # (N, 28, 28), bright on dark
        negatives = 1.0 - images
        for name, rule in RULES.items():
            n = len(images)
            misfires = int(rule(images).sum())
            caught = int(rule(negatives).sum())
            print(
                f"{folder.name:>14} {split:5} {name:13}  misfire {100 * misfires / n:6.3f}%"
                f" ({misfires}/{n})  catch {100 * caught / n:7.3f}% ({caught}/{n})"
            )


def cost() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 256):
        batch = rng.random((n, 28, 28), dtype=np.float32)
        for name, rule in RULES.items():
            timer = timeit.Timer(lambda rule=rule, batch=batch: rule(batch))
            loops, _ = timer.autorange()
            best = min(timer.repeat(5, loops)) / loops
            print(f"{name:13} {n:4} images of 28x28: {best * 1e6:8.1f} us per call")
        timer = timeit.Timer(lambda batch=batch: invert_where_needed(batch, "auto"))
        loops, _ = timer.autorange()
        best = min(timer.repeat(5, loops)) / loops
        print(f"invert_where_needed(auto) {n:4} images: {best * 1e6:8.1f} us per call")
    photo = rng.integers(0, 256, (1, 3000, 4000), dtype=np.uint8)
    timer = timeit.Timer(lambda: light_background(photo, white=255))
    loops, _ = timer.autorange()
    best = min(timer.repeat(5, loops)) / loops
    print(f"border (now)  one 4000x3000 8-bit upload: {best * 1e6:8.1f} us per call")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="folders of IDX files")
    args = parser.parse_args()
    for folder in args.folders:
        rates(folder)
    cost()


if __name__ == "__main__":
    main()
