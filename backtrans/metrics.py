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
        self._skipped_lines: set[str] = set()

    def add(self, stage: str, counts: dict) -> None:
        self._by_stage[stage].update(counts)

    def skipped(self, lines: list[str]) -> None:
        # A set of "file:line": a file read more than once (schema probes, task retries) counts once.
        self._skipped_lines.update(lines)

    def snapshot(self) -> dict[str, dict]:
        counts = {stage: dict(counts) for stage, counts in self._by_stage.items()}
        if self._skipped_lines:
            counts["source"] = {"skipped_lines": len(self._skipped_lines)}
        return counts


def start_metrics(name: str):
    return RunMetrics.options(name=name).remote()
