"""`python -m bench.scoring`: the share of pairs each `score.method` scores, on the same simulated pairs
with a weak judge (a share of its plain replies carry no score line).

    python -m bench.scoring                  # 2,000 pairs, noscore_share 0.3, both backends

No Ray: each method's `ScoreStage` runs in this process on blocks of 64 rows, with the real clients
and `ChatEndpoint`, against one simulator subprocess; what is measured is how verdicts are read, which
the job does the same way in its actors.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

import pyarrow as pa

from backtrans.config import ScoreConfig
from backtrans.prompts import SELF_CURATION, SELF_CURATION_JSON
from backtrans.simulator import SimulatorConfig, start_subprocess
from backtrans.stages import ScoreStage, StageSpec
from bench.workload import instruction

METHODS = ("parse", "logprobs", "json")
BACKENDS = ("openai", "hf-endpoint")
BLOCK_ROWS = 64


class _Counts:
    """A metrics sink that keeps the failures by type (the job's RunMetrics actor, without Ray)."""

    def __init__(self) -> None:
        self.failures: Counter[str] = Counter()

    def add(self, stage, counts) -> None:
        self.failures.update(counts.failures)

    def gauge(self, stage, actor_id, in_flight) -> None:
        pass

    async def stop(self, reason) -> None:
        pass


async def _score(url: str, backend: str, method: str, pairs: pa.Table) -> tuple[int, Counter[str]]:
    """(pairs scored, failures by type) of one method on `pairs`."""
    config = ScoreConfig(backend=backend, base_url=url, model="judge", method=method, max_concurrency=64, actors=1)
    template = SELF_CURATION_JSON if method == "json" else SELF_CURATION
    sink = _Counts()
    stage = ScoreStage(StageSpec("score", config, url, str(template), "unused"), metrics=sink)
    try:
        scored = 0
        for start in range(0, pairs.num_rows, BLOCK_ROWS):
            out = await stage(pairs.slice(start, BLOCK_ROWS))
            scored += out.num_rows - out.column("score").null_count
        return scored, sink.failures
    finally:
        await stage._close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scoring", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2_000, help="pairs (default 2000)")
    parser.add_argument("--noscore-share", type=float, default=0.3, help="the weak judge's share without a score line")
    args = parser.parse_args()
    pairs = pa.table({
        "instruction": [instruction(i) for i in range(args.n)],
        "generation": [f"An answer to request {i}, written for the benchmark." for i in range(args.n)],
    })  # fmt: skip
    print(f"{args.n} pairs, simulated weak judge (noscore_share {args.noscore_share})\n")
    print("| backend | method | pairs scored | share scored | failures |")
    print("|---|---|---|---|---|")
    with start_subprocess(SimulatorConfig(noscore_share=args.noscore_share, keep_log=False)) as simulator:
        for backend in BACKENDS:
            url = simulator.url if backend == "openai" else simulator.url.removesuffix("/v1")
            for method in METHODS:
                scored, failures = asyncio.run(_score(url, backend, method, pairs))
                shown = ", ".join(f"{kind} {rows}" for kind, rows in sorted(failures.items())) or "none"
                print(f"| {backend} | {method} | {scored} | {scored / args.n:.1%} | {shown} |")


if __name__ == "__main__":
    main()
