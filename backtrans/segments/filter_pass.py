"""The web job's first pass: the corpus filtered into segments once, before any request is spent, in
two phases that each leave their result in the output folder (a local folder or an object store).

1. **Rules** (the expensive part: the per-row rules and the MinHash signatures). Every source row is
   written to `OutputFolder.segment_rows` with `filter_code` (0: it passed every rule, else the code
   of the rule that removed it, `dedup.CODES`) and `dedup_keys` (its content hash and LSH band keys).
   A removed row keeps its id and code but not its text. The write is checkpointed by Ray Data
   (a folder per attempt in `segment_checkpoint`) in commits of `output.commit_rows` rows, so a killed
   phase runs the rules again only on the rows it had not committed: the blocks in flight.
   `segment_rules_done` marks it done.
2. **Dedup** (`dedup.write_duplicates`): a shuffle of the written rows' keys, with no rule run again;
   the rows that lose to a duplicate go to `segment_duplicates`. Dedup compares rows with each other, so
   it runs over the whole corpus: a duplicate of a row that a resumed run already paid for is still
   found. A killed dedup runs again from the written keys. Then the filter counts are written
   (`segment_counts`), which marks the pass as done; a re-run that finds them skips the pass.

The LLM stages read the written rows that passed every rule and lost no bucket (`read_segments`),
checkpointed and resumable like any source, by the id the source's read gave each row.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from backtrans.config import JobConfig, SegmentsConfig
from backtrans.output import OutputFolder, checkpoint_config, write_parquet
from backtrans.progress import say, show_segment_progress
from backtrans.resources import IO_CPUS, RULES_BLOCK_ROWS, RULES_CPUS, map_blocks, repartition
from backtrans.schema import GENERATION, ROW_HASH
from backtrans.segments.dedup import (
    CODE_COLUMN,
    CODES,
    KEYS_COLUMN,
    count_reasons,
    dedup_keys,
    duplicate_lookup,
    in_sorted,
    is_duplicate,
    write_duplicates,
)
from backtrans.segments.rules import RowRules, texts_of
from backtrans.sources import ResolvedFiles, in_small_blocks, read_source

FILTER_COLUMNS = (CODE_COLUMN, KEYS_COLUMN)  # the pass's own, never read by the stages


def _dedup(config: SegmentsConfig) -> bool:
    return config.exact_dedup or config.near_dedup


def rule_rows(batch: pa.Table, rules: RowRules, config: SegmentsConfig, committed: tuple | None = None) -> pa.Table:
    """The rules phase on one batch: every row, with its `filter_code` and `dedup_keys` (none for a
    row a rule removed, whose text becomes null: it is never read again). `committed`: the ids an
    earlier attempt committed (`_committed_ids`), whose rows are dropped first."""
    if committed is not None:
        batch = batch.filter(pa.array(~in_sorted(batch[ROW_HASH], ray.get(committed[0]))))
    texts = texts_of(batch, config.text_column).to_pylist()
    codes = np.array([CODES[reason] if reason else 0 for reason in rules.reasons(texts)], np.uint8)
    removed = codes != 0
    passing_keys = dedup_keys([text for text, out in zip(texts, removed, strict=True) if not out], config)
    per_row = np.where(removed, 0, len(passing_keys[0]) if len(passing_keys) else 0)
    offsets = pa.array(np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32))
    keys = pa.ListArray.from_arrays(offsets, passing_keys.flatten(), mask=pa.array(removed))
    text_at = batch.column_names.index(config.text_column)
    batch = batch.set_column(
        text_at, config.text_column, pc.if_else(pa.array(removed), pa.scalar(None, batch[text_at].type), batch[text_at])
    )
    batch = batch.drop_columns([name for name in FILTER_COLUMNS if name in batch.column_names])
    return batch.append_column(CODE_COLUMN, pa.array(codes, pa.uint8())).append_column(KEYS_COLUMN, keys)


@ray.remote(num_cpus=IO_CPUS)
def _union(*sorted_ids: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate(sorted_ids))


def _committed_ids(folder: OutputFolder) -> tuple[ray.ObjectRef] | None:
    """The row ids that earlier attempts of the rules phase committed, as one sorted array in the
    object store (in a tuple: passed on unresolved), or None for a first attempt.

    Each attempt checkpoints to a folder of its own (`_attempt`) because Ray Data, given a checkpoint
    that holds ids, puts a filter actor after the read that takes a whole CPU: beside the read and the
    rules (0.9 CPU each) a 2-core machine then has no CPU left for the rules, and a resumed 2,000,000
    document pass made no progress for minutes. Ray's checkpoint manager (a DeveloperAPI) still
    loads each earlier attempt's ids, and first removes the rows of its writes that were cut short.
    """
    from ray.data.checkpoint.checkpoint_filter import IdColumnCheckpointManager

    context = ray.data.DataContext.get_current()
    loaded = []
    for attempt in folder.folders(folder.segment_checkpoint):
        manager = IdColumnCheckpointManager(checkpoint_config=checkpoint_config(folder, attempt), data_context=context)
        ids, _ = manager.load_checkpoint(folder.segment_rows, folder.filesystem)
        if ids is not None:
            loaded.append(ids)
    return (_union.remote(*loaded),) if loaded else None


def _attempt(folder: OutputFolder) -> str:
    """This attempt's checkpoint folder: a new one after those of earlier attempts."""
    return f"{folder.segment_checkpoint}/attempt-{len(folder.folders(folder.segment_checkpoint)):04d}"


def _write_rule_rows(config: JobConfig, folder: OutputFolder, metrics_actor: str, files: ResolvedFiles) -> None:
    rules = RowRules.from_config(config.segments)
    committed = _committed_ids(folder)
    documents = read_source(config.source, metrics_actor, files, num_cpus=RULES_CPUS)
    rows = documents.map_batches(  # in the read's tasks: the same CPUs
        rule_rows,
        fn_kwargs={"rules": rules, "config": config.segments, "committed": committed},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=RULES_CPUS,
    )
    rows = repartition(rows, RULES_BLOCK_ROWS, RULES_CPUS)  # in the same tasks too
    # Only this plan is checkpointed: it starts with the Read and ends with the Write, as Ray requires.
    rows.context.checkpoint_config = checkpoint_config(folder, _attempt(folder))
    # Ray Data's per-operator reservation keeps a share of the CPUs for the write, which uses a tenth
    # of one: on 2 cores only one rules task ran at a time. The write keeps up without it, and
    # what it has not written yet waits in the object store, which spills to disk when full.
    rows.context.op_resource_reservation_enabled = False
    write_parquet(rows, folder, folder.segment_rows, config.output.commit_rows, IO_CPUS)


def filter_counts(folder: OutputFolder) -> dict | None:
    """The counts of a finished pass, or None when the pass has not finished."""
    try:
        return json.loads(folder.read_text(folder.segment_counts))
    except FileNotFoundError:
        return None


def write_segments(config: JobConfig, folder: OutputFolder, metrics_actor: str, files: ResolvedFiles) -> dict:
    """Run the segment pass over the source, or what an earlier run left of it; return its counts."""
    done = filter_counts(folder)
    if done is not None:
        return done
    try:
        rules_done = json.loads(folder.read_text(folder.segment_rules_done))
    except FileNotFoundError:
        with show_segment_progress(config.source, folder, files, folder.segment_checkpoint):
            _write_rule_rows(config, folder, metrics_actor, files)
        # Malformed JSONL lines skipped by the read (bad_lines: skip) never reached the rules.
        rules_done = {"skipped_lines": ray.get(ray.get_actor(metrics_actor).snapshot.remote()).skipped_lines}
        folder.write_text(folder.segment_rules_done, json.dumps(rules_done))
    folder.delete_dir(folder.segment_duplicates)  # a dedup that was cut short runs again
    if _dedup(config.segments):
        say("backtrans: segments: dedup (a shuffle of the rules' keys)")
        write_duplicates(folder, config.segments)
    counts = count_reasons(folder, _dedup(config.segments)) | rules_done
    folder.write_text(folder.segment_counts, json.dumps(counts, indent=2))  # last: it marks the pass as done
    return counts


def _as_generation(names: list[str], text_column: str) -> dict[str, str]:
    """{written column: its name for the stages}: the segment becomes the pair's `generation` (in
    place of a `generation` column the source had)."""
    if text_column == GENERATION:
        return {name: name for name in names}
    return {name: GENERATION if name == text_column else name for name in names if name != GENERATION}


def _kept_segments(batch: pa.Table, lookup: tuple | None, text_column: str) -> pa.Table:
    """The rows of a batch that passed every rule and lost no bucket, without the pass's columns."""
    kept = pc.equal(batch[CODE_COLUMN], 0)
    if lookup is not None:
        kept = pc.and_(kept, pa.array(~is_duplicate(batch[ROW_HASH], lookup)))
    batch = batch.filter(kept).drop_columns(list(FILTER_COLUMNS))
    columns = _as_generation(batch.column_names, text_column)
    return batch.select(list(columns)).rename_columns(list(columns.values()))


def read_segments(config: JobConfig, folder: OutputFolder) -> tuple[ray.data.Dataset, list[str]]:
    """The kept segments of a finished pass, and their columns. Their `row_hash`, the resume id, is the
    one the source's read gave each row: the files never change once the pass is done."""
    rows = folder.segment_rows
    read = ray.data.read_parquet(rows, filesystem=folder.filesystem, num_cpus=IO_CPUS)
    lookup = duplicate_lookup(folder) if _dedup(config.segments) else None
    text_column = config.segments.text_column
    segments = map_blocks(in_small_blocks(read), _kept_segments, lookup, text_column)
    written = [name for name in folder.schema(rows).names if name not in FILTER_COLUMNS]
    return segments, list(_as_generation(written, text_column).values())
