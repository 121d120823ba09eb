"""How fast one stage actor may send: in-flight cap, rate limits, budget and a circuit breaker.

A stage's limits hold for the whole job. Its actor pool has a fixed size, so each actor takes an
equal share of every limit (`share = limit // actors`) and the shares never add up to more than
the limit, with no cross-actor call on the request path.

- `AdaptiveLimit`: at most `ceiling` requests in flight; halves on a 429 and climbs back by one per
  `limit` successes (additive increase, multiplicative decrease), so a server that pushes back gets
  fewer requests until it stops.
- `RateLimit`: a token bucket refilled at `per_minute / 60` per second (requests or tokens).
- `Budget`: stop sending once `max_requests` or `max_tokens` is spent.
- `HealthWindow`: the share of failed attempts among the last `window`; over `threshold` the stage
  is down and the job stops instead of writing a failure record for every remaining row.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

from backtrans.schema import BacktransError


class StageDown(BacktransError):
    """Most recent requests of a stage failed: the endpoint is down or refusing."""

    resumable = True


class BudgetExhausted(BacktransError):
    """A stage spent its `max_requests` or `max_tokens` (`budget` says which)."""

    resumable = True

    def __init__(self, message: str, budget: str):
        super().__init__(message)
        self.budget = budget


class AdaptiveLimit:
    def __init__(self, ceiling: int):
        self.ceiling = ceiling
        self.limit = float(ceiling)
        self.in_flight = 0
        self._changed = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1

    async def release(self, pushed_back: bool) -> None:
        async with self._changed:
            self.in_flight -= 1
            if pushed_back:
                self.limit = max(1.0, self.limit / 2)
            else:
                self.limit = min(float(self.ceiling), self.limit + 1 / self.limit)
            # Wake as many waiters as there are free slots, not all of them: an actor holds several
            # rows per slot (resources.ROWS_PER_SLOT), and waking thousands on every reply cost more
            # CPU than the request (BENCHMARKS.md, api regime).
            self._changed.notify(max(0, int(self.limit) - self.in_flight))


class RateLimit:
    def __init__(self, per_minute: float):
        self.per_second = per_minute / 60
        self.capacity = max(1.0, self.per_second)  # at most one second's worth in a burst
        self.tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self.per_second)
        self._stamp = now

    async def wait_for_credit(self) -> None:
        """Wait until the bucket is not in debt (spending may push it below zero)."""
        async with self._lock:
            self._refill()
            while self.tokens < 1:
                await asyncio.sleep((1 - self.tokens) / self.per_second)
                self._refill()

    def spend(self, amount: float) -> None:
        self._refill()
        self.tokens -= amount


class Budget:
    def __init__(self, max_requests: int | None, max_tokens: int | None, stage: str):
        self.max_requests, self.max_tokens, self.stage = max_requests, max_tokens, stage
        self.requests = 0
        self.tokens = 0

    def check(self) -> None:
        if self.max_requests is not None and self.requests >= self.max_requests:
            raise BudgetExhausted(
                f"{self.stage}.max_requests reached ({self.requests} requests in this actor)", "max_requests"
            )
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            raise BudgetExhausted(f"{self.stage}.max_tokens reached ({self.tokens} tokens in this actor)", "max_tokens")


def budget_left(stage_name: str, stage, requests_spent: int, tokens_spent: int):
    """The stage config with its budgets reduced by what earlier runs of the same output spent, so
    a stopped run and its re-runs together never spend more than `max_requests` / `max_tokens`.
    Raises BudgetExhausted (not resumable) when nothing is left."""
    left = {}
    for key, spent in (("max_requests", requests_spent), ("max_tokens", tokens_spent)):
        budget = getattr(stage, key)
        if budget is None:
            continue
        if spent >= budget:
            error = BudgetExhausted(
                f"{stage_name}.{key}: the budget of {budget} is spent on this output ({spent} by earlier runs); "
                f"raise {stage_name}.{key} to continue",
                key,
            )
            error.resumable = False
            raise error
        left[key] = budget - spent
    return stage.model_copy(update=left)


class HealthWindow:
    def __init__(self, window: int, threshold: float, stage: str):
        self.outcomes: deque[bool] = deque(maxlen=window)
        self.threshold, self.stage = threshold, stage
        self.last_error = ""

    def record(self, ok: bool, error: str = "") -> None:
        self.outcomes.append(ok)
        if not ok:
            self.last_error = error
        full = len(self.outcomes) == self.outcomes.maxlen
        failed = self.outcomes.count(False)
        if full and failed / len(self.outcomes) >= self.threshold:
            raise StageDown(
                f"{self.stage}: {failed} of the last {len(self.outcomes)} requests failed "
                f"(last: {self.last_error}); stopping, finished rows stay checkpointed"
            )


@dataclass
class Outcome:
    """How one attempt went, filled in by the caller inside `Gate.attempt()`: the failure type
    (None: it succeeded) and whether the server pushed back (a 429)."""

    failure: str | None = None
    pushed_back: bool = False


class Gate:
    """Everything one actor checks around each attempt of a request."""

    def __init__(self, stage: str, config, share: int):
        """`config` is the StageConfig; `share` the number of actors the limits are split over."""
        self.limit = AdaptiveLimit(max(1, config.max_concurrency // share))
        self.requests_per_minute = RateLimit(config.requests_per_minute / share) if config.requests_per_minute else None
        self.tokens_per_minute = RateLimit(config.tokens_per_minute / share) if config.tokens_per_minute else None
        self.budget = Budget(
            config.max_requests // share if config.max_requests else None,
            config.max_tokens // share if config.max_tokens else None,
            stage,
        )
        self.health = HealthWindow(config.failure_window, config.failure_threshold, stage)

    @contextlib.asynccontextmanager
    async def attempt(self):
        """Wait for a slot and credit, count the attempt, and yield an `Outcome` to fill in; the
        health window sees the outcome (and may raise StageDown) when the block ends."""
        await self.limit.acquire()
        try:
            for bucket in (self.requests_per_minute, self.tokens_per_minute):
                if bucket is not None:
                    await bucket.wait_for_credit()
            # Checked and counted with no await in between, so rows waiting together cannot all pass.
            self.budget.check()
        except BaseException:
            await self.limit.release(pushed_back=False)
            raise
        self.budget.requests += 1
        if self.requests_per_minute is not None:
            self.requests_per_minute.spend(1)
        outcome = Outcome()
        try:
            yield outcome
        finally:
            await self.limit.release(outcome.pushed_back)
        self.health.record(outcome.failure is None, outcome.failure or "")

    def spend_tokens(self, tokens: int) -> None:
        self.budget.tokens += tokens
        if self.tokens_per_minute is not None:
            self.tokens_per_minute.spend(tokens)
