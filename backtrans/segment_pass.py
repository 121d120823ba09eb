"""The web job's first pass: filter the corpus into segments once, into `output.path/.segments/`.

Dedup compares rows with each other, so it cannot run again on only the rows a resumed run still
has to do: a duplicate of a finished row would look unique there and be paid for. So the filter runs
as its own Ray Data plan that sends no request: it writes the kept segments as Parquet, then their
filter counts (`filter_counts.json`, which marks the pass as done). The LLM stages read those
segments like any source, checkpointed and resumable; a re-run that finds the counts skips the pass.
"""

from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import ray

from backtrans.config import JobConfig, SourceConfig
from backtrans.jsonl_datasource import ROW_ID_COLUMN
from backtrans.output import OutputFolder
from backtrans.resources import IO_CPUS, map_blocks
from backtrans.segments import filter_segments
from backtrans.sources import ResolvedFiles, in_small_blocks, read_source, source_columns

COUNTS_FILE = "filter_counts.json"
ROWS_DIR = "rows"


def _as_candidate(batch: pa.Table, text_column: str) -> pa.Table:
    """The segment becomes the pair's `generation`; the read's own id is made anew by the next read."""
    batch = batch.drop_columns([ROW_ID_COLUMN])
    if text_column == "generation":
        return batch
    if "generation" in batch.column_names:
        batch = batch.drop_columns(["generation"])
    return batch.rename_columns(["generation" if name == text_column else name for name in batch.column_names])


def filter_counts(folder: OutputFolder) -> dict | None:
    """The counts of a finished pass, or None when the pass has not finished."""
    try:
        with open(os.path.join(folder.segments, COUNTS_FILE), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def write_segments(config: JobConfig, folder: OutputFolder, metrics_actor: str, files: ResolvedFiles) -> dict:
    """Run the segment filter over the source (unless an earlier run did); return its counts."""
    done = filter_counts(folder)
    if done is not None:
        return done
    shutil.rmtree(folder.segments, ignore_errors=True)  # a pass that was cut short starts again
    documents = read_source(config.source, metrics_actor, files)
    kept, counter = filter_segments(documents, config.segments)
    candidates = map_blocks(kept, _as_candidate, config.segments.text_column)
    candidates.write_parquet(
        os.path.join(folder.segments, ROWS_DIR),
        min_rows_per_file=config.output.min_rows_per_file,
        ray_remote_args={"num_cpus": IO_CPUS},
    )
    counts = counter.counts()
    # Malformed JSONL lines skipped by the read (bad_lines: skip) never reached the filter.
    counts["skipped_lines"] = ray.get(ray.get_actor(metrics_actor).snapshot.remote()).skipped_lines
    with open(os.path.join(folder.segments, COUNTS_FILE), "w", encoding="utf-8") as f:
        json.dump(counts, f, indent=2)
    ray.kill(counter.actor)
    return counts


def read_segments(folder: OutputFolder) -> tuple[ray.data.Dataset, list[str]]:
    """The kept segments, with a fresh `row_hash` for the checkpoint (the files never change),
    and their columns."""
    rows = os.path.join(folder.segments, ROWS_DIR)
    dataset = in_small_blocks(ray.data.read_parquet(rows, include_row_hash=True, num_cpus=IO_CPUS))
    return dataset, source_columns(SourceConfig(uri=rows))
