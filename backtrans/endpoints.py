"""The retry policy, one for every backend: a `ChatEndpoint` sends one prompt through a backend's
`Client` under the stage's `Gate` and returns a `Reply`, or raises `EndpointFailure` once retries
are spent.

The retry loop is ours, not the SDKs': the openai SDK's own retries hide every 429 and 5xx from the
caller (the failure record needs the attempt count and the last error), they skip malformed bodies,
and AsyncInferenceClient does not retry at all. So every client runs with its retries off under one
policy: retry 408/409/429/5xx, timeouts, dropped connections and malformed bodies, with exponential
backoff and full jitter, honouring `Retry-After`; never retry another 4xx (a 400 such as a
context-length error fails the row at once).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from backtrans.pacing import Gate
from backtrans.schema import BacktransError

if TYPE_CHECKING:
    from backtrans.backends.base import Client, Reply, RequestOptions
    from backtrans.config import StageConfig

RETRYABLE_STATUS = {408, 409, 429}
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 300.0


def retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """The Retry-After header in seconds (either of its forms), capped; None when absent."""
    value = (headers or {}).get("retry-after")
    if value is None:
        return None
    try:
        return min(float(value), RETRY_AFTER_MAX_S)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)  # the HTTP-date form
        return min(max(parsed.timestamp() - time.time(), 0.0), RETRY_AFTER_MAX_S)


class EndpointFailure(BacktransError):
    """A request that will not succeed: its type, a one-line message (never a key), and attempts.
    It fails one row, never the run."""

    def __init__(self, error_type: str, message: str, attempts: int):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.attempts = attempts


class ChatEndpoint:
    """One stage's requests in one actor: `client` sends, the stage's `Gate` paces, this retries."""

    def __init__(self, stage_name: str, stage: StageConfig, client: Client):
        self.stage = stage
        self.client = client
        # The stage's limits are split evenly over its actors (`actors` is set by the job).
        self.gate = Gate(stage_name, stage, stage.actors or 1)
        self.in_flight = 0  # requests sent and not yet answered, for the run's progress gauge

    async def close(self) -> None:
        await self.client.close()

    async def complete(self, prompt: str, options: RequestOptions | None = None) -> tuple[Reply, int]:
        """The reply and the number of attempts it took; EndpointFailure when retries are spent."""
        attempt = 0
        while True:
            attempt += 1
            failed = None
            async with self.gate.attempt() as outcome:
                self.in_flight += 1
                try:
                    reply = await self.client.send(prompt, options)
                except Exception as error:  # every client error is classified, none escapes unrecorded
                    failed = self.client.classify(error)
                    outcome.failure, outcome.pushed_back = failed.error_type, failed.error_type == "http_429"
                finally:
                    self.in_flight -= 1
            if failed is None:
                self.gate.spend_tokens(reply.prompt_tokens + reply.completion_tokens)
                return reply, attempt
            if not failed.retryable or attempt > self.stage.max_retries:
                raise EndpointFailure(failed.error_type, failed.message, attempt)
            backoff = random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
            await asyncio.sleep(max(backoff, failed.retry_after_s or 0.0))
