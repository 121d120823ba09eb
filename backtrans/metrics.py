"""Per-run counters the stage actors report to: requests, tokens and failures by stage and type.

A named Ray actor, because counts from many actors on many nodes must meet in one place; the run
summary reads it once at the end. Rows and scores in the summary come from the written data instead.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import ray


@ray.remote(num_cpus=0)
class RunMetrics:
    def __init__(self):
        self._by_stage: dict[str, Counter] = defaultdict(Counter)

    def add(self, stage: str, counts: dict) -> None:
        self._by_stage[stage].update(counts)

    def snapshot(self) -> dict[str, dict]:
        return {stage: dict(counts) for stage, counts in self._by_stage.items()}


def start_metrics(name: str):
    return RunMetrics.options(name=name).remote()
