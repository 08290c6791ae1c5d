"""The service as a real process (`python -m service` on a free port of 127.0.0.1, the bundled
models/): load below and above capacity, memory over every batch size, SIGTERM during load,
corrupted models at start-up and on reload. The scenarios live in benchmarks/reliability.py,
which runs them longer and prints the figures docs/reliability.md quotes; here they run short,
with assertions on behaviour (statuses, exit codes, log lines), never on speed."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import reliability  # noqa: E402
from reliability import (  # noqa: E402
    CUT_OFF,
    HUP_BAD,
    NEVER_ACCEPTED,
    NO_RESPONSE,
    RELOAD_BAD,
    RELOAD_GOOD,
    Req,
)

CONNECTIONS = 64


def send_failing_with(exc: Exception) -> reliability.Outcome:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    async def main() -> reliability.Outcome:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await reliability.send(client, Req("models", "GET", "http://test/v1/models"))

    return reliability.run_async(main())


def test_a_connection_closed_while_connecting_counts_as_never_answered() -> None:
    # What anyio raises when the server drops a just-accepted connection under uvloop (seen
    # once in CI during the SIGTERM scenario): the request never went out.
    outcome = send_failing_with(AttributeError("'NoneType' object has no attribute 'getpeername'"))
    assert outcome.status is None and outcome.error == NO_RESPONSE
    assert NO_RESPONSE in NEVER_ACCEPTED


def test_any_other_attribute_error_in_the_load_generator_is_a_bug_and_raised() -> None:
    with pytest.raises(AttributeError, match="spelling"):
        send_failing_with(AttributeError("spelling"))


def test_below_capacity_every_request_succeeds() -> None:
    result = reliability.scenario_below_capacity(seconds=3, connections=CONNECTIONS)
    load = result.load
    # Really 64 connections at once, each with a request in flight.
    assert load.max_established >= CONNECTIONS
    assert load.max_in_flight == CONNECTIONS
    assert set(load.labels()) == {
        "encode",
        "reconstruct det",
        "reconstruct sampled",
        "generate",
        "decode",
        "models",
    }
    assert load.outcomes
    failed = [o for o in load.outcomes if o.status != 200]
    assert not failed, failed[:5]
    assert result.recovery_status == 200


def test_above_capacity_sheds_with_503_and_probes_stay_up() -> None:
    result = reliability.scenario_above_capacity(
        seconds=3, connections=CONNECTIONS, max_concurrent=8
    )
    load = result.load
    assert load.max_established >= CONNECTIONS
    assert not load.errors(), [o.detail for o in load.outcomes if o.error][:5]
    statuses = load.statuses()
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] > 0 and statuses[503] > 0, statuses
    assert result.bad_503 == 0  # every 503 says when to retry
    # Probes pass the guard even when it sheds load.
    probes = result.probes
    assert probes is not None and probes.count > 0
    assert set(probes.statuses) == {"200"}, probes.statuses
    # Once the load is gone, a normal request is served again.
    assert result.recovery_status == 200


def test_memory_does_not_grow_over_every_batch_shape() -> None:
    # Every size up to VAE_MAX_BATCH_SIZE (64), then larger ones whose remainders vary; the
    # script runs every size from 1 to 1024.
    sizes = [*range(1, 65), *range(65, 1025, 17), 1024]
    result = reliability.scenario_memory(sizes, passes=4)
    assert result.statuses == {200: 2 * 4 * len(sizes)}
    # Once the first pass has filled the pools, later passes over the same sizes reuse them:
    # RSS wanders by a few MiB and may step up once by one 6 MiB chunk (seen here, at any pass),
    # where a leak would add the same again each pass.
    assert result.last_pass_growth_mib < 10, result.lines()


def test_sigterm_finishes_in_flight_requests_and_exits_zero() -> None:
    grace_s = 10
    result = reliability.scenario_sigterm(connections=CONNECTIONS, before_s=1.0, grace_s=grace_s)
    assert result.exit_code == 0, result.stderr
    assert result.exit_s is not None and result.exit_s < grace_s + 5
    statuses = result.load.statuses()
    assert set(statuses) <= {200, 503}, statuses
    # Nothing accepted was lost: no truncated answer, no timeout, no other error; transport
    # errors are only refused connections and connections closed before any response.
    assert not result.losses, [(o.status, o.error, o.detail) for o in result.losses][:5]
    assert set(result.load.errors()) <= NEVER_ACCEPTED
    assert CUT_OFF not in result.stderr
    # Requests in flight at SIGTERM were answered after it.
    assert result.finished_in_flight > 0, result.lines()
    # The clients went on until the server stopped listening.
    assert result.load.errors()["refused"] > 0


def test_a_corrupted_model_stops_the_start_with_a_message() -> None:
    result = reliability.scenario_bad_start(timeout_s=30)
    assert result.exit_code not in (None, 0), result.stderr
    assert result.exit_s < 30
    assert "mnist-vae-2d" in result.stderr
    assert "encoder.onnx" in result.stderr
    assert "cannot start" in result.stderr


def test_a_corrupted_reload_is_refused_and_the_old_version_keeps_serving() -> None:
    result = reliability.scenario_bad_reload()
    assert result.encode_status == 200
    bad, hup, good = result.steps[RELOAD_BAD], result.steps[HUP_BAD], result.steps[RELOAD_GOOD]

    assert bad.status == 409
    assert "reload refused" in bad.detail and "encoder.onnx" in bad.detail
    assert bad.encode_status == 200 and bad.same_mu

    assert hup.status == "alive"
    assert hup.logged
    assert hup.encode_status == 200 and hup.same_mu

    assert good.status == 200
    assert good.encode_status == 200 and good.same_mu
