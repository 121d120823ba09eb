"""Per-run counters: what each stage spent and failed, lines the source skipped, and why a run stopped.

A named Ray actor, because counts from many actors on many nodes must meet in one place. Stage
actors send a `StageCounts` per batch; the driver reads a `RunSnapshot` for progress and for the
run summary. Rows and scores in the summary come from the written data instead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import ray

from backtrans.config import JobConfig, PriceConfig


@dataclass
class StageCounts:
    """What one stage did: rows it handled, requests sent (every attempt), retries among them,
    tokens the server reported, failed rows by failure type, replies taken from the reply cache (no
    request sent, no token counted), and the CPU-seconds the stage's actor processes spent."""

    rows: int = 0
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: Counter = field(default_factory=Counter)
    cache_hits: int = 0
    cpu_s: float = field(default=0.0, compare=False)  # a measurement, not a count: equal counts may differ in it

    def add(self, other: StageCounts) -> None:
        self.rows += other.rows
        self.requests += other.requests
        self.retries += other.retries
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.failures.update(other.failures)
        self.cache_hits += other.cache_hits
        self.cpu_s += other.cpu_s


@dataclass(frozen=True)
class StopReason:
    """Why a stage actor stopped the run: the exception's class name, its one-line message, and
    whether running the same command again continues the run (`BacktransError.resumable`)."""

    stage: str
    kind: str
    message: str
    resumable: bool
    budget: str | None = None  # a budget stop: "max_requests" or "max_tokens"


@dataclass
class RunSnapshot:
    stages: dict[str, StageCounts] = field(default_factory=dict)
    skipped_lines: int = 0  # JSONL lines skipped under `source.bad_lines: skip`
    stop: StopReason | None = None  # the first stop a stage recorded; None while the run goes on
    in_flight: dict[str, int] = field(default_factory=dict)  # requests in flight per stage, last reports
    actors: dict[str, int] = field(default_factory=dict)  # actors per stage that reported


def stage_prices(config: JobConfig) -> dict[str, PriceConfig]:
    """The `price` of each stage that has one."""
    return {name: stage.price for name, stage in config.llm_stages().items() if stage.price is not None}


def spend(snapshot: RunSnapshot, prices: dict[str, PriceConfig]) -> float | None:
    """What the run's requests cost at the stages' `prices` (per million prompt and completion tokens the
    servers reported), in the prices' currency; None when no stage has a price. The one place the cost
    is computed: the progress line, the summary and the card show it."""
    if not prices:
        return None
    return sum(
        price.cost(counts.prompt_tokens, counts.completion_tokens)
        for name, price in prices.items()
        if (counts := snapshot.stages.get(name)) is not None
    )


@ray.remote(num_cpus=0)
class RunMetrics:
    def __init__(self):
        self._stages: dict[str, StageCounts] = {}
        self._skipped_lines: set[str] = set()
        self._stop: StopReason | None = None
        self._in_flight: dict[str, dict[str, int]] = {}  # stage -> actor id -> its last report

    def add(self, stage: str, counts: StageCounts) -> None:
        self._stages.setdefault(stage, StageCounts()).add(counts)

    def skipped(self, lines: list[str]) -> None:
        # A set of "file:line": a file read more than once (schema probes, task retries) counts once.
        self._skipped_lines.update(lines)

    def stop(self, reason: StopReason) -> None:
        # The first stop is the cause; actors stopping after it only repeat it.
        self._stop = self._stop or reason

    def gauge(self, stage: str, actor_id: str, in_flight: int) -> None:
        self._in_flight.setdefault(stage, {})[actor_id] = in_flight

    def snapshot(self) -> RunSnapshot:
        return RunSnapshot(
            stages=dict(self._stages),
            skipped_lines=len(self._skipped_lines),
            stop=self._stop,
            in_flight={stage: sum(actors.values()) for stage, actors in self._in_flight.items()},
            actors={stage: len(actors) for stage, actors in self._in_flight.items()},
        )


def start_metrics(name: str):
    """On the driver's node (the head under `ray job submit`), which lives as long as the job: a
    worker node lost half way must not take the run's counts with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return RunMetrics.options(name=name, scheduling_strategy=here).remote()
