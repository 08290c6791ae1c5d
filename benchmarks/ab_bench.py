"""Two builds of the service side by side: the same loads as serve_bench.py, alternating builds.

For a change that must not make anything slower (a refactor, say): check the old commit out
beside this one and compare. Both run from their own folder (their own `service` package and
`models/`), one at a time on the same port range, with the same wrk loads, alternating load by
load and round by round so that a drift of the machine hits both; medians are printed.

    git worktree add /tmp/before <commit>
    python benchmarks/ab_bench.py /tmp/before --rounds 5 --seconds 5
    python benchmarks/ab_bench.py /tmp/before --only "/encode, JSON"

Needs `wrk` (apt-get install wrk). Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from serve_bench import (
    ROOT,
    WRK_SCRIPT,
    Load,
    Result,
    loads_for,
    median_result,
    rss_mib,
    run_wrk,
    start,
    test_images,
)

# The loads the issue that introduced this script named (one image at 64 connections, 256 images
# at 4, JSON and binary); --only widens or narrows the set.
DEFAULT_LOADS = ("/encode, JSON", "/encode, binary", "/reconstruct det, JSON", "/generate, JSON")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", type=Path, help="checkout of the build to compare against")
    parser.add_argument("--seconds", type=float, default=5.0, help="per load and build")
    parser.add_argument("--rounds", type=int, default=5, help="alternations; medians shown")
    parser.add_argument("--only", help="only loads whose label contains this text")
    args = parser.parse_args()
    builds = {"before": args.before.resolve(), "after": ROOT}
    for name, folder in builds.items():
        if not (folder / "service" / "__main__.py").exists():
            sys.exit(f"{name}: {folder} holds no service/ package")

    images = test_images(256)
    loads = [
        load
        for load in loads_for(images, binary=True)
        if (args.only in load.label if args.only else load.label in DEFAULT_LOADS)
    ]
    ports = {"before": 8110, "after": 8111}
    servers = {
        name: start(
            [sys.executable, "-m", "service", "--port", str(ports[name])],
            ports[name],
            {"VAE_ACCESS_LOG": "false"},
            cwd=folder,
        )[0]
        for name, folder in builds.items()
    }
    samples: dict[tuple[str, str, int], list[Result]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            (workdir / "post.lua").write_text(WRK_SCRIPT)
            for round_ in range(args.rounds):
                for load in loads:
                    order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
                    for name in order:
                        result = run_wrk(ports[name], load, args.seconds, workdir)
                        samples.setdefault((name, load.label, load.images), []).append(result)
        rss = {name: rss_mib(proc.pid) for name, proc in servers.items()}
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(10)
    print_table(loads, samples, args.rounds)
    print(f"RSS after load: before {rss['before']:.0f} MiB, after {rss['after']:.0f} MiB")


def print_table(
    loads: list[Load], samples: dict[tuple[str, str, int], list[Result]], rounds: int
) -> None:
    header = (
        "load",
        "images x conns",
        "before img/s",
        "after img/s",
        "after/before",
        "before p99 ms",
        "after p99 ms",
        "spread after (min-max img/s)",
        "errors",
    )
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for load in loads:
        runs = {n: samples[(n, load.label, load.images)] for n in ("before", "after")}
        med = {n: median_result(r) for n, r in runs.items()}
        img = {n: med[n].requests_s * load.images for n in med}
        after_runs = [r.requests_s * load.images for r in runs["after"]]
        cells = [
            load.label,
            f"{load.images} x {load.connections}",
            f"{img['before']:,.0f}",
            f"{img['after']:,.0f}",
            f"{img['after'] / img['before']:.2f}",
            f"{med['before'].p99_ms:.1f}",
            f"{med['after'].p99_ms:.1f}",
            f"{min(after_runs):,.0f}-{max(after_runs):,.0f}",
            str(med["before"].errors + med["after"].errors),
        ]
        print("| " + " | ".join(cells) + " |")
    spread = statistics.median(
        max(r.requests_s for r in rs) / min(r.requests_s for r in rs) for rs in samples.values()
    )
    print(
        f"\n{rounds} rounds per load, builds alternating; medians shown. Median max/min ratio of "
        f"one build's runs of one load: {spread:.2f} (the noise to read the ratios against)"
    )


if __name__ == "__main__":
    main()
