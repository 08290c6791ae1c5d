from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.models.batching import DynamicBatcher
from service.models.registry import ModelRegistry
from service.settings import Settings

EXECUTOR = ThreadPoolExecutor(max_workers=2)


class Recorder:
    """A graph stand-in: doubles its rows and remembers each call's batch size."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.calls: list[int] = []
        self.fail_on = fail_on

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        self.calls.append(len(rows))
        if self.fail_on is not None and (rows == self.fail_on).any():
            raise RuntimeError("boom")
        return rows * 2, rows.sum(axis=1, keepdims=True)


def rows(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, 3), value, dtype=np.float32)


async def _gather(batcher: DynamicBatcher, inputs: list[np.ndarray]) -> list[object]:
    return await asyncio.gather(*(batcher.run(x) for x in inputs), return_exceptions=True)


def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    fn = Recorder()
    batcher = DynamicBatcher(
        fn, max_batch_size=64, max_delay_s=0.0, inline_max_rows=0, executor=EXECUTOR
    )
    inputs = [rows(i, n=1 + i % 3) for i in range(20)]
    results = asyncio.run(_gather(batcher, inputs))
    for x, result in zip(inputs, results, strict=True):
        assert isinstance(result, tuple)
        np.testing.assert_array_equal(result[0], x * 2)
        np.testing.assert_array_equal(result[1], x.sum(axis=1, keepdims=True))
    assert sum(fn.calls) == sum(len(x) for x in inputs)
    assert len(fn.calls) < len(inputs)  # batched


def test_batches_respect_the_maximum_size() -> None:
    fn = Recorder()
    batcher = DynamicBatcher(
        fn, max_batch_size=4, max_delay_s=0.0, inline_max_rows=16, executor=EXECUTOR
    )
    asyncio.run(_gather(batcher, [rows(i) for i in range(10)]))
    assert max(fn.calls) <= 4 and sum(fn.calls) == 10
    # A request larger than the maximum runs alone, in calls of at most the maximum (so the
    # graph only ever sees a bounded set of batch shapes), and its rows come back in order.
    fn.calls.clear()
    big = np.arange(27, dtype=np.float32).reshape(9, 3)
    (result,) = asyncio.run(_gather(batcher, [big]))
    assert fn.calls == [4, 4, 1]
    assert isinstance(result, tuple)
    np.testing.assert_array_equal(result[0], big * 2)
    np.testing.assert_array_equal(result[1], big.sum(axis=1, keepdims=True))


def test_an_error_reaches_only_the_requests_of_its_batch() -> None:
    fn = Recorder(fail_on=7.0)
    batcher = DynamicBatcher(
        fn, max_batch_size=2, max_delay_s=0.0, inline_max_rows=16, executor=EXECUTOR
    )
    results = asyncio.run(_gather(batcher, [rows(i) for i in range(10)]))
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert 7 in failed and len(failed) <= 2  # request 7 and at most its batch-mate
    assert all(isinstance(results[i], tuple) for i in range(10) if i not in failed)


def test_a_cancelled_request_is_dropped_and_others_finish() -> None:
    fn = Recorder()
    batcher = DynamicBatcher(
        fn, max_batch_size=64, max_delay_s=0.05, inline_max_rows=16, executor=EXECUTOR
    )

    async def scenario() -> list[object]:
        tasks = [asyncio.create_task(batcher.run(rows(i))) for i in range(5)]
        await asyncio.sleep(0)  # all five are queued; the batch waits 50 ms for more
        tasks[2].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(scenario())
    assert isinstance(results[2], asyncio.CancelledError)
    assert fn.calls == [4]  # the cancelled request's rows never ran
    assert all(isinstance(results[i], tuple) for i in (0, 1, 3, 4))


def test_batching_off_calls_once_per_request() -> None:
    fn = Recorder()
    batcher = DynamicBatcher(
        fn, max_batch_size=1, max_delay_s=0.0, inline_max_rows=0, executor=EXECUTOR
    )
    asyncio.run(_gather(batcher, [rows(i) for i in range(6)]))
    assert fn.calls == [1] * 6


@pytest.mark.parametrize("max_batch_size", [1, 64])
def test_batched_model_results_equal_single_calls(model_dir: Path, max_batch_size: int) -> None:
    registry = ModelRegistry.load(Settings(model_dir=model_dir, max_batch_size=max_batch_size))
    model = registry.models["tiny-vae"]
    inputs = [
        np.random.default_rng(i).random((1 + i % 4, 28, 28, 1), dtype=np.float32) for i in range(12)
    ]

    expected = [model.encode(x) for x in inputs]

    async def run_all() -> list[tuple[np.ndarray, np.ndarray | None]]:
        try:
            return await asyncio.gather(*(model.encode_batched(x) for x in inputs))
        finally:
            await registry.close()

    for (expected_mu, expected_logvar), (mu, logvar) in zip(
        expected, asyncio.run(run_all()), strict=True
    ):
        np.testing.assert_allclose(mu, expected_mu, atol=1e-6)
        assert logvar is not None and expected_logvar is not None
        np.testing.assert_allclose(logvar, expected_logvar, atol=1e-6)


def test_memory_trimmer_runs_where_glibc_has_it() -> None:
    from service.models.runtime import memory_trimmer

    trim = memory_trimmer()
    if trim is None:
        pytest.skip("no malloc_trim in this C library")
    assert trim() in (0, 1)  # 1: memory was released, 0: there was none to release
