"""The per-actor pacing pieces on their own: AIMD limit, rate bucket, budget, health window."""

import asyncio

import pytest

from backtrans.pacing import AdaptiveLimit, Budget, BudgetExhausted, HealthWindow, RateLimit, StageDown


def test_adaptive_limit_halves_on_pushback_and_climbs_back():
    async def scenario():
        limit = AdaptiveLimit(16)
        await limit.acquire()
        await limit.release(pushed_back=True)
        assert int(limit.limit) == 8
        await limit.acquire()
        await limit.release(pushed_back=True)
        assert int(limit.limit) == 4
        for _ in range(200):
            await limit.acquire()
            await limit.release(pushed_back=False)
        assert limit.limit == 16  # never above the ceiling

    asyncio.run(scenario())


def test_adaptive_limit_blocks_at_the_limit():
    async def scenario():
        limit = AdaptiveLimit(2)
        await limit.acquire()
        await limit.acquire()
        third = asyncio.ensure_future(limit.acquire())
        await asyncio.sleep(0.01)
        assert not third.done()
        await limit.release(pushed_back=False)
        await asyncio.wait_for(third, 1)
        assert limit.in_flight == 2

    asyncio.run(scenario())


def test_a_release_wakes_one_waiter_per_free_slot_and_a_cancelled_waiter_loses_no_slot():
    async def scenario():
        limit = AdaptiveLimit(2)
        await limit.acquire()
        await limit.acquire()
        waiters = [asyncio.ensure_future(limit.acquire()) for _ in range(5)]
        await asyncio.sleep(0.01)
        waiters[0].cancel()  # a row whose task Ray Data cancelled while it waited
        await limit.release(pushed_back=False)
        await asyncio.sleep(0.01)
        assert [w.done() and not w.cancelled() for w in waiters] == [False, True, False, False, False]
        for _ in range(2):  # every slot freed is taken, in the order the rows came
            await limit.release(pushed_back=False)
        await asyncio.wait_for(asyncio.gather(*waiters[2:4]), 1)
        assert not waiters[4].done() and limit.in_flight == 2
        await limit.release(pushed_back=False)
        await asyncio.wait_for(waiters[4], 1)

    asyncio.run(scenario())


def test_rate_limit_spends_and_waits_for_credit():
    async def scenario():
        bucket = RateLimit(per_minute=6000)  # 100 per second, burst of 100
        bucket.spend(150)
        assert bucket.tokens < 0
        await bucket.wait_for_credit()
        assert bucket.tokens >= 1

    asyncio.run(scenario())


def test_budget_and_health_window_stop_with_named_reasons():
    budget = Budget(max_requests=2, max_tokens=None, stage="score")
    budget.requests = 2
    with pytest.raises(BudgetExhausted, match="score.max_requests reached"):
        budget.check()
    health = HealthWindow(window=4, threshold=0.75, stage="generate")
    for ok in (True, False, False):
        health.record(ok, "http_503")
    with pytest.raises(StageDown, match="generate: 3 of the last 4 requests failed"):
        health.record(False, "http_503")


def test_gate_feeds_each_outcome_to_the_limit_and_the_health_window():
    from backtrans.config import StageConfig
    from backtrans.pacing import Gate

    async def scenario():
        config = StageConfig(backend="openai", model="m", max_concurrency=8, failure_window=2, failure_threshold=1.0)
        gate = Gate("score", config, share=2)
        assert gate.limit.ceiling == 4  # the actor's share of max_concurrency
        async with gate.attempt() as outcome:
            outcome.failure, outcome.pushed_back = "http_429", True
        assert int(gate.limit.limit) == 2 and list(gate.health.outcomes) == [False]
        async with gate.attempt():
            pass
        async with gate.attempt() as outcome:
            outcome.failure = "timeout"
        assert list(gate.health.outcomes) == [True, False] and gate.budget.requests == 3
        with pytest.raises(StageDown):
            async with gate.attempt() as outcome:
                outcome.failure = "timeout"
        assert gate.limit.in_flight == 0

    asyncio.run(scenario())
