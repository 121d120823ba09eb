"""The `segments` regime: backtrans's web segment pass beside datatrove's MinHash pipeline.

For each N: a labelled corpus (`bench/corpus.py`; made once per N and seed, never timed), then each
system on it as a fresh process under the process-tree monitor (`runs.measured_process`):
`bench/segments_backtrans.py` (the web job's `write_segments` alone, on a local Ray) and
`bench/segments_datatrove.py` (datatrove's four MinHash stages, 2 workers). Then the ids each kept
are read back, after its process has exited, and scored by the same `corpus.quality`.

Throughput is N over the whole process (start-up and shutdown included, as in the other regimes),
per core: the Ray CPUs backtrans ran on, datatrove's worker processes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from functools import partial
from pathlib import Path

from bench.corpus import Corpus, files_for, generate, quality
from bench.runs import measured_process
from bench.workload import write_job_config

SEED = 0
SYSTEMS = ("backtrans", "datatrove")
DATATROVE_WORKERS = 2
DEFAULT_N = (20_000, 200_000, 2_000_000)
QUICK_N = (2_000,)


def corpus_for(workdir: Path, n: int) -> Corpus:
    """The corpus of N documents in `workdir` (reused by every system and run of this N)."""
    started = time.monotonic()
    corpus = generate(workdir / f"segments-corpus-{n}", n, SEED, files_for(n, DATATROVE_WORKERS))
    print(f"     corpus of {n:,} documents in {corpus.files} files ready after {time.monotonic() - started:.0f} s")
    return corpus


def job_config(corpus: Path, output: Path) -> dict:
    """A web job on the corpus with the default `segments:`. Its LLM stages are never started: the
    runner calls only the segment pass. (`simulated`: a config that needs no key or server.)"""
    return {
        "source": {"uri": str(corpus)},
        "segments": {},
        "augment": {"backend": "simulated", "model": "unused"},
        "score": {"backend": "simulated", "model": "unused"},
        "output": {"path": str(output), "mode": "overwrite"},
    }


def _backtrans_kept(output: Path) -> list[str]:
    """The ids of the rows the LLM stages would read: passed every rule and lost no bucket."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from backtrans.output import OutputFolder
    from backtrans.segments.dedup import CODE_COLUMN

    folder = OutputFolder.at(str(output))
    rows = pq.read_table(folder.segment_rows, columns=["id", "row_hash", CODE_COLUMN], filesystem=folder.filesystem)
    duplicates = pq.read_table(folder.segment_duplicates, columns=["row_hash"], filesystem=folder.filesystem)
    lost = pc.is_in(rows["row_hash"], value_set=duplicates["row_hash"].combine_chunks())
    kept = pc.and_(pc.equal(rows[CODE_COLUMN], 0), pc.invert(lost))
    return rows.filter(kept)["id"].to_pylist()


def _datatrove_kept(output: Path) -> list[str]:
    kept = []
    for path in sorted(output.glob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            kept += [json.loads(line)["id"] for line in lines]
    return kept


def _bytes_under(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def run(system: str, corpus: Corpus, workdir: Path, *, timeout_s: float, object_store_mb: int | None = None) -> dict:
    """One measured run of `system` on `corpus`: the monitor's figures, throughput, quality.
    `object_store_mb`: backtrans on an object store of that size instead of Ray's default."""
    if workdir.exists():
        shutil.rmtree(workdir)  # a fresh output: the pass skips itself when it finds its own counts
    workdir.mkdir(parents=True)
    if system == "backtrans":
        config = write_job_config(workdir / "job.yaml", job_config(corpus.folder, workdir / "out"))
        argv = [sys.executable, "-m", "bench.segments_backtrans", str(config)]
        argv += [] if object_store_mb is None else ["--object-store-mb", str(object_store_mb)]
        read_kept = partial(_backtrans_kept, workdir / "out")
    else:
        argv = [sys.executable, "-m", "bench.segments_datatrove", "--corpus", str(corpus.folder)]
        argv += ["--workdir", str(workdir / "datatrove"), "--workers", str(DATATROVE_WORKERS)]
        read_kept = partial(_datatrove_kept, workdir / "datatrove" / "output")
    figures = measured_process(argv, workdir, timeout_s=timeout_s)
    figures.update(regime="segments", system=system, n=corpus.n, files=corpus.files, seed=corpus.seed)
    figures["object_store_mb"] = object_store_mb
    output = figures.get("output") or {}
    if system == "backtrans":
        cores = output.get("ray_cpus") or os.cpu_count()
        store = output.get("object_store") or {}
        figures["spilled_bytes"] = store.get("spilled_bytes")
    else:
        cores = min(DATATROVE_WORKERS, os.cpu_count() or DATATROVE_WORKERS)
        # datatrove keeps no object store: its signatures, buckets and removal lists go to disk by design
        figures["spilled_bytes"] = None
        if (workdir / "datatrove").exists():
            figures["intermediate_bytes"] = sum(
                _bytes_under(workdir / "datatrove" / name) for name in ("signatures", "buckets", "remove_ids")
            )
    figures["cores"] = cores
    figures["docs_per_s"] = round(corpus.n / figures["wall_s"], 1)
    figures["docs_per_s_per_core"] = round(corpus.n / figures["wall_s"] / cores, 1)
    if "ended" in figures:
        return figures
    kept = read_kept()
    figures["quality"] = quality(corpus.labels(), kept)
    figures["documents_read"] = _documents_read(system, output)
    # every document read once, each kept one once, and nothing else
    figures["complete"] = (
        figures["documents_read"] == corpus.n
        and figures["quality"]["kept"] == len(kept)
        and not figures["quality"]["kept_ids_not_in_corpus"]
    )
    return figures


def _documents_read(system: str, output: dict) -> int | None:
    counts = output.get("counts") or {}
    if system == "backtrans":
        return counts.get("rows_in")
    reader = [step for name, step in (counts.get("signatures") or {}).items() if "READER" in name]
    return reader[0].get("documents") if reader else None
