"""The web job's first pass: filter the corpus into segments once, into `OutputFolder.segment_rows`.

Dedup compares rows with each other, so it cannot run again on only the rows a resumed run still
has to do: a duplicate of a finished row would look unique there and be paid for. So the filter runs
as its own Ray Data plan that sends no request: it writes the kept segments as Parquet, then their
filter counts (`OutputFolder.segment_counts`, which marks the pass as done). The LLM stages read those
segments like any source, checkpointed and resumable; a re-run that finds the counts skips the pass.

Every row is labelled with the first rule that removes it, in the column `filter_reason` (null:
kept), and counted from that label in one place, as the removed rows are dropped: the run's metrics
actor gets one {reason: rows} dict per block, so the counts add up: rows in = kept + sum of removals.
"""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import ray

from backtrans.config import JobConfig, SegmentsConfig
from backtrans.output import OutputFolder, write_parquet
from backtrans.resources import IO_CPUS, map_blocks
from backtrans.schema import GENERATION, ROW_HASH
from backtrans.segments.dedup import REASONS, reasons_of, removed_rows
from backtrans.segments.rules import RowRules, texts_of
from backtrans.sources import ResolvedFiles, in_small_blocks, read_source

REASON_COLUMN = "filter_reason"  # the pass's own label, never written
KEPT = "kept"


def _label(batch: pa.Table, rules: RowRules, text_column: str, lookup: tuple | None) -> pa.Table:
    if lookup is None:
        reasons = pa.array(rules.reasons(texts_of(batch, text_column).to_pylist()), pa.string())
    else:
        reasons = reasons_of(batch, lookup)  # the key pass ran the rules on this row already
    if REASON_COLUMN in batch.column_names:
        batch = batch.drop_columns([REASON_COLUMN])
    return batch.append_column(REASON_COLUMN, reasons)


def annotate_segments(dataset: ray.data.Dataset, rules: RowRules, config: SegmentsConfig) -> ray.data.Dataset:
    """Every input row, in input order, plus `filter_reason`: the first rule that removes it, or null.

    With dedup on, this first runs the key pass (`dedup.removed_rows`, which runs the rules) and
    returns once the removed rows are known; the returned dataset is lazy and reads the input again,
    labelling each row from that lookup. So the input is read twice, and both reads must give the
    same rows: `.materialize()` it first when reading is the expensive part, or when two reads may
    differ (a `limit` without `preserve_order`), since a row the key pass did not see is kept.
    """
    lookup = removed_rows(dataset, rules, config) if config.exact_dedup or config.near_dedup else None
    return dataset.map_batches(
        _label,
        fn_kwargs={"rules": rules, "text_column": config.text_column, "lookup": lookup},
        batch_format="pyarrow",
    )


def _reason_counts(batch: pa.Table) -> dict[str, int]:
    counts = pc.value_counts(batch[REASON_COLUMN])
    return {
        (KEPT if reason is None else reason): count
        for reason, count in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    }


def _drop_and_count(batch: pa.Table, metrics) -> pa.Table:
    if batch.num_rows:
        ray.get(metrics.filtered.remote(_reason_counts(batch)))  # waited for: the block is done only once counted
    kept = batch.filter(pc.is_null(batch[REASON_COLUMN]))
    return kept.drop_columns([REASON_COLUMN])


def drop_removed(annotated: ray.data.Dataset, metrics) -> ray.data.Dataset:
    """The rows of an `annotate_segments` dataset that no rule removed (without `filter_reason`);
    each block reports its reasons to `metrics` (the run's RunMetrics actor) on the way. The counts
    are complete once the result has been consumed once; consuming it again (or a retried task)
    adds again."""
    return annotated.map_batches(_drop_and_count, fn_kwargs={"metrics": metrics}, batch_format="pyarrow")


def filter_segments(dataset: ray.data.Dataset, config: SegmentsConfig, metrics) -> ray.data.Dataset:
    """The rows that pass every rule (input columns only), counted by `metrics` as they stream.

    The dedup key pass runs now (see `annotate_segments`); the rows stream when the returned dataset
    is consumed.
    """
    return drop_removed(annotate_segments(dataset, RowRules.from_config(config), config), metrics)


def summarize(counts: dict[str, int]) -> dict:
    """{"rows_in": n, "kept": k, "removed": {reason: rows, ...}} from rows by label."""
    removed = {reason: int(counts.get(reason, 0)) for reason in REASONS}
    kept = int(counts.get(KEPT, 0))
    return {"rows_in": kept + sum(removed.values()), "kept": kept, "removed": removed}


def _block_counts(batch: pa.Table) -> pa.Table:
    counts = _reason_counts(batch)
    return pa.table(
        {"reason": pa.array(list(counts), pa.string()), "rows": pa.array(list(counts.values()), pa.int64())}
    )


def count_reasons(annotated: ray.data.Dataset) -> dict:
    """Counts from the data of an `annotate_segments` dataset, to audit the streamed counts.

    Exact and retry-proof, but it executes the whole plan again (or needs the corpus held in the
    object store). Counted per block on the workers; only a few (reason, rows) pairs per block reach
    the driver.
    """
    counts: Counter = Counter()
    per_block = annotated.select_columns([REASON_COLUMN]).map_batches(
        _block_counts, batch_format="pyarrow", batch_size=None
    )
    for part in per_block.iter_rows():
        counts[part["reason"]] += part["rows"]
    return summarize(counts)


def _as_candidate(batch: pa.Table, text_column: str) -> pa.Table:
    """The segment becomes the pair's `generation`; the read's own id is made anew by the next read."""
    batch = batch.drop_columns([ROW_HASH])
    if text_column == GENERATION:
        return batch
    if GENERATION in batch.column_names:
        batch = batch.drop_columns([GENERATION])
    return batch.rename_columns([GENERATION if name == text_column else name for name in batch.column_names])


def filter_counts(folder: OutputFolder) -> dict | None:
    """The counts of a finished pass, or None when the pass has not finished."""
    try:
        return json.loads(folder.read_text(folder.segment_counts))
    except FileNotFoundError:
        return None


def write_segments(config: JobConfig, folder: OutputFolder, metrics_actor: str, files: ResolvedFiles) -> dict:
    """Run the segment filter over the source (unless an earlier run did); return its counts."""
    done = filter_counts(folder)
    if done is not None:
        return done
    folder.delete_dir(folder.segments)  # a pass that was cut short starts again
    metrics = ray.get_actor(metrics_actor)
    documents = read_source(config.source, metrics_actor, files)
    kept = filter_segments(documents, config.segments, metrics)
    candidates = map_blocks(kept, _as_candidate, config.segments.text_column)
    write_parquet(candidates, folder, folder.segment_rows, config.output.min_rows_per_file, IO_CPUS)
    snapshot = ray.get(metrics.snapshot.remote())
    counts = summarize(snapshot.filter_counts)
    # Malformed JSONL lines skipped by the read (bad_lines: skip) never reached the filter.
    counts["skipped_lines"] = snapshot.skipped_lines
    folder.write_text(folder.segment_counts, json.dumps(counts, indent=2))  # last: it marks the pass as done
    return counts


def read_segments(folder: OutputFolder) -> tuple[ray.data.Dataset, list[str]]:
    """The kept segments, with a fresh `row_hash` for the checkpoint (the files never change),
    and their columns."""
    rows = folder.segment_rows
    read = ray.data.read_parquet(rows, filesystem=folder.filesystem, include_row_hash=True, num_cpus=IO_CPUS)
    # The written columns (they hold `row_id`), then the id this read adds, as `sources.source_columns` gives.
    return in_small_blocks(read), [*folder.schema(rows).names, ROW_HASH]
