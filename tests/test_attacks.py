"""Issue 16's attack table as tests: every row of benchmarks/attack.py at its small scale, against
the real server (`python -m service` on 127.0.0.1, the bundled models) with short timeouts, each
judged by the issue's targets scaled down: RSS under 400 MiB (and, for the clients that never
read, growth bounded by VAE_MAX_UNSENT_TOTAL_BYTES), /healthz p99 under 250 ms, a real client
served throughout (no 503), work and connections let go within the configured timeouts, and the
row's own facts (431, 413, 4xx, no traceback, no forged log line, 499). The script runs the same
attacks at the issue's scale and prints the numbers.

The /healthz bound is 250 ms rather than the issue's 100 ms: the attacker, the watcher and the
server share this 2-core machine (and CI runs other jobs beside them), so a scheduling hiccup alone
can reach 100 ms, while the stalls the issue saw were 0.87 s and more. Every wait is on the
server's state (a closed connection, its fds, /metrics), bounded by a deadline."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import attack  # noqa: E402
from attack import BY_NAME, SMALL, RowResult  # noqa: E402
from reliability import Server  # noqa: E402

# One server for every row that leaves it running; the rows that change the most state on a
# server without the defences (reload, the JPEG's decode left running) come last.
SHARED = ["headers", "silent", "slow-bodies", "never-read", "pipelined", "shapes"]
SHARED += ["pipelined-reset", "forged-log", "hang-ups", "oip-big", "smaller", "jpeg", "reload"]


def failures(result: RowResult) -> list[str]:
    return [f"{c.measure}: {c.value} (target {c.target})" for c in result.checks if c.ok is False]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    env = {**SMALL.env, **{k: v for row in attack.ROWS for k, v in row.env.items()}}
    with attack.serve(ROOT, env) as running:
        yield running


def test_every_row_of_the_table_is_tested() -> None:
    assert {*SHARED, "sigterm"} == set(BY_NAME)


@pytest.mark.parametrize("name", SHARED)
def test_attack(server: Server, name: str) -> None:
    result = attack.attack(server, BY_NAME[name], SMALL)
    assert not failures(result), attack.table([result])


def test_sigterm_under_load_answers_new_connections_with_503() -> None:
    with attack.serve(ROOT, SMALL.env) as server:
        result = attack.attack(server, BY_NAME["sigterm"], SMALL)
    assert not failures(result), attack.table([result])
