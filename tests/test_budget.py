"""The answer budget (`service.models.budget`): on its own, on an event loop (order, small answers,
cancellation, an answer larger than the budget), then in the app: a large /generate waits for
room while a small one is served, and a wait ends with the request timeout holding nothing.

The app's answers are held in rendering by a gate the test opens; every wait is on the budget's
own state (bytes held, requests waiting) or on an answer, bounded by a deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.http import endpoints
from service.models.budget import SMALL_ANSWER_BYTES, AnswerBudget, answer_bytes
from service.settings import Settings

MIB = 1024 * 1024
DEADLINE_S = 30.0


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached within the deadline"
        time.sleep(0.01)


async def settle() -> None:
    """Lets every task that can run, run (a few loop steps)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def hold(
    budget: AnswerBudget, size: int, entered: list[str], name: str, until: asyncio.Event
) -> None:
    """An answer of `size` bytes: noted in `entered` once it has room, held until `until`."""
    async with budget.reserve(size):
        entered.append(name)
        await until.wait()


def test_large_answers_wait_in_order_and_small_ones_never_wait() -> None:
    async def main() -> list[str]:
        budget = AnswerBudget(10 * MIB)
        order: list[str] = []
        release = {name: asyncio.Event() for name in "ABCD"}

        def answer(name: str, size: int) -> Coroutine[Any, Any, None]:
            return hold(budget, size, order, name, release[name])

        tasks = [asyncio.create_task(answer("A", 6 * MIB))]
        await settle()
        tasks.append(asyncio.create_task(answer("B", 6 * MIB)))  # does not fit: waits
        tasks.append(asyncio.create_task(answer("C", 3 * MIB)))  # fits, but B came first
        await settle()
        assert (order, budget.held, budget.waiting) == (["A"], 6 * MIB, 2)
        tasks.append(asyncio.create_task(answer("D", SMALL_ANSWER_BYTES)))  # small: at once
        await settle()
        assert (order, budget.held, budget.waiting) == (["A", "D"], 7 * MIB, 2)
        release["A"].set()
        await settle()
        assert (order, budget.held, budget.waiting) == (["A", "D", "B", "C"], 10 * MIB, 0)
        for event in release.values():
            event.set()
        await asyncio.gather(*tasks)
        assert budget.held == 0
        return order

    assert asyncio.run(main()) == ["A", "D", "B", "C"]


def test_a_cancelled_wait_holds_nothing_and_lets_the_next_one_through() -> None:
    async def main() -> None:
        budget = AnswerBudget(10 * MIB)
        release = asyncio.Event()
        entered: list[str] = []

        def answer(name: str, size: int) -> Coroutine[Any, Any, None]:
            return hold(budget, size, entered, name, release)

        first = asyncio.create_task(answer("first", 6 * MIB))
        await settle()
        big = asyncio.create_task(answer("big", 8 * MIB))
        after = asyncio.create_task(answer("after", 4 * MIB))  # fits, queued behind `big`
        await settle()
        assert budget.waiting == 2
        big.cancel()  # its request timed out
        await settle()
        assert (entered, budget.held, budget.waiting) == (["first", "after"], 10 * MIB, 0)
        release.set()
        await asyncio.gather(first, after)
        assert big.cancelled() and budget.held == 0

    asyncio.run(main())


def test_an_answer_larger_than_the_budget_runs_alone() -> None:
    async def main() -> None:
        budget = AnswerBudget(4 * MIB)
        release = asyncio.Event()
        entered: list[str] = []

        def answer(name: str, size: int) -> Coroutine[Any, Any, None]:
            return hold(budget, size, entered, name, release)

        first = asyncio.create_task(answer("first", 2 * MIB))
        await settle()
        huge = asyncio.create_task(answer("huge", 100 * MIB))
        await settle()
        assert (entered, budget.waiting) == (["first"], 1)
        release.set()
        await asyncio.gather(first, huge)
        assert entered == ["first", "huge"] and budget.held == 0

    asyncio.run(main())


def test_answer_bytes_follow_the_format() -> None:
    assert answer_bytes(1000, "json") > answer_bytes(1000, "npy") > answer_bytes(1000, "png")


# --- in the app ---------------------------------------------------------------------------------

BIG_N = 256  # 256 x 786 values: about 3.1 MiB of JSON answer in progress
SMALL_N = 4


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Large answers wait in rendering until the test opens the gate."""
    opened = threading.Event()
    render = endpoints.render_answer

    async def gated(result: Any, fmt: Any) -> Any:
        if len(result.images) >= BIG_N:
            await asyncio.get_running_loop().run_in_executor(None, opened.wait)
        return await render(result, fmt)

    monkeypatch.setattr(endpoints, "render_answer", gated)
    yield opened
    opened.set()


def budget_app(settings: Settings, **changes: Any) -> Any:
    limits = {"max_generate": BIG_N, "max_answer_bytes": 4 * MIB, **changes}
    return create_app(settings.model_copy(update=limits))


def generate(pool: ThreadPoolExecutor, client: TestClient, n: int) -> Future[httpx.Response]:
    return pool.submit(client.post, "/generate", json={"n": n, "seed": 1})


def test_a_large_request_waits_for_room_while_small_ones_are_served(
    settings: Settings, gate: threading.Event
) -> None:
    app = budget_app(settings)
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        budget = app.state.service.registry.answers
        first = generate(pool, client, BIG_N)
        wait_for(lambda: budget.held > SMALL_ANSWER_BYTES)
        second = generate(pool, client, BIG_N)
        wait_for(lambda: budget.waiting == 1)
        small = client.post("/generate", json={"n": SMALL_N})
        assert small.status_code == 200 and len(small.json()["images"]) == SMALL_N
        assert budget.waiting == 1 and not second.done()  # still waiting for room
        gate.set()
        for future in (first, second):
            response = future.result(timeout=DEADLINE_S)
            assert response.status_code == 200 and len(response.json()["images"]) == BIG_N
        wait_for(lambda: budget.held == 0)


def test_a_request_waiting_for_room_times_out_holding_nothing(
    settings: Settings, gate: threading.Event
) -> None:
    app = budget_app(settings, request_timeout_s=1.0)
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        budget = app.state.service.registry.answers
        first = generate(pool, client, BIG_N)
        wait_for(lambda: budget.held > SMALL_ANSWER_BYTES)
        second = generate(pool, client, BIG_N)
        wait_for(lambda: budget.waiting == 1)
        timed_out = second.result(timeout=DEADLINE_S)
        assert timed_out.status_code == 504, timed_out.text
        assert "VAE_REQUEST_TIMEOUT_S" in timed_out.json()["detail"]
        assert budget.waiting == 0
        gate.set()
        first.result(timeout=DEADLINE_S)  # 200 or 504: what matters is what it holds after
        wait_for(lambda: budget.held == 0)
        again = client.post("/generate", json={"n": BIG_N})
        assert again.status_code == 200
