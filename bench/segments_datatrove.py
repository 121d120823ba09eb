"""Peer in the `segments` regime: datatrove's MinHash dedup pipeline on the same corpus, as a fresh process.

    python -m bench.segments_datatrove --corpus FOLDER --workdir FOLDER [--workers 2]

datatrove's four stages as its `examples/minhash_deduplication.py` runs them, each a
`LocalPipelineExecutor` with `--workers` processes: signatures (JsonlReader -> length filter ->
MinhashDedupSignature), buckets (one task per bucket), clustering (one task), and the filter
(JsonlReader -> length filter -> MinhashDedupFilter -> JsonlWriter). `MinhashConfig`: word 5-gram
shingles, 14 buckets of 8 hashes (datatrove's defaults; 64-bit xxhash). The length filter keeps
600-3,000 characters, as backtrans's `segments:` defaults do, and runs in both reading stages, so
that the filter stage counts documents as the signature stage did. One task per corpus file in
the reading stages. The kept documents are written uncompressed (backtrans writes Parquet with
Ray's default codec), so that neither system is timed compressing.

Prints one JSON line: each reading stage's counters per step, and each stage's seconds. The bench reads the kept ids
from `WORKDIR/output` after this process has exited.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

MIN_CHARS, MAX_CHARS = 600, 3000


def in_bounds(document) -> bool:
    """datatrove's LambdaFilter keeps a document when this is true (a module function: it is pickled
    to the worker processes)."""
    return MIN_CHARS <= len(document.text) <= MAX_CHARS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.segments_datatrove")
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.typeshelper import Languages

    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, hash_config=HashConfig(precision=64))
    work = args.workdir
    tasks = len(list(args.corpus.glob("*.jsonl")))

    def documents() -> list:
        return [JsonlReader(str(args.corpus), text_key="text", id_key="id"), LambdaFilter(in_bounds)]

    def stage(name: str, pipeline: list, tasks: int) -> LocalPipelineExecutor:
        return LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=args.workers, logging_dir=str(work / "logs" / name)
        )

    sigs, buckets, remove_ids = (str(work / name) for name in ("signatures", "buckets", "remove_ids"))
    # English: datatrove 0.10 tokenizes it with spaCy (a blank `en` pipeline with a sentencizer).
    signatures = MinhashDedupSignature(sigs, config=config, language=Languages.english)
    stages = {
        "signatures": stage("signatures", [*documents(), signatures], tasks),
        "buckets": stage("buckets", [MinhashDedupBuckets(sigs, buckets, config=config)], config.num_buckets),
        "clusters": stage("clusters", [MinhashDedupCluster(buckets, remove_ids, config=config)], 1),
        "filter": stage(
            "filter",
            [*documents(), MinhashDedupFilter(remove_ids), JsonlWriter(str(work / "output"), compression=None)],
            tasks,
        ),
    }
    seconds, stats = {}, {}
    for name, executor in stages.items():  # in order, as `depends=` would run them
        started = time.monotonic()
        stats[name] = executor.run()
        seconds[name] = round(time.monotonic() - started, 2)
    counts = {name: _counts(stats[name]) for name in ("signatures", "filter")}
    print(json.dumps({"counts": counts, "stage_s": seconds}))
    return 0


def _counts(stats) -> dict:
    """A stage's PipelineStats as {step: {counter: total}} (documents read, filtered, dropped, written)."""
    return {step.name: {key: int(value.total) for key, value in step.stats.items()} for step in stats.stats}


if __name__ == "__main__":
    sys.exit(main())
