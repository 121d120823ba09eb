"""The curated training sets (the paper's A4 and A5) and the chat-format `messages` export.

Each subset of `curation.subsets` is the rows of `data/` scored at least its threshold, written by
Ray Data to `curated/NAME/`, so the Hub shows it as a dataset config beside `all`. Seed pairs from
`curation.seed` are added to every subset with the paper's seed tag (its section 3: the model is
fine-tuned on curated augmented data and seed data, each marked by a system prompt).
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from backtrans.config import CurationConfig
from backtrans.output import OutputFolder, count_rows, parquet_files, read_written, scan_columns, write_shards
from backtrans.resources import AFTER_STAGES_CPUS, map_blocks
from backtrans.sources import read_source

# The paper's tags (section 2.3): augmented pairs and seed pairs are told apart by the system prompt.
WEB_TAG = "Answer with knowledge from web search."
SEED_TAG = "Answer in the style of an AI Assistant."
MESSAGES_COLUMN = "messages"
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES_TYPE = pa.list_(MESSAGE)


def add_messages(batch: pa.Table, tag: str) -> pa.Table:
    """A `messages` column in the chat format TRL's SFTTrainer reads: system tag, user, assistant.
    Null for a row without both an instruction and a generation (a failed row)."""
    conversations = [
        None
        if instruction is None or generation is None
        else [
            {"role": "system", "content": tag},
            {"role": "user", "content": instruction},
            {"role": "assistant", "content": generation},
        ]
        for instruction, generation in zip(
            batch["instruction"].to_pylist(), batch["generation"].to_pylist(), strict=True
        )
    ]
    messages = pa.array(conversations, MESSAGES_TYPE)
    if MESSAGES_COLUMN in batch.column_names:
        return batch.set_column(batch.column_names.index(MESSAGES_COLUMN), MESSAGES_COLUMN, messages)
    return batch.append_column(MESSAGES_COLUMN, messages)


def _scored_at_least(batch: pa.Table, min_score: int) -> pa.Table:
    return batch.filter(pc.fill_null(pc.greater_equal(batch["score"], min_score), False))


def _as_subset_rows(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """Seed pairs in the output's columns: what they have, cast; null for what they lack (scores)."""
    batch = add_messages(batch, SEED_TAG)
    columns = [
        batch[field.name].cast(field.type) if field.name in batch.column_names else pa.nulls(len(batch), field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _write_subset(
    folder: OutputFolder, name: str, min_score: int, seed: ray.data.Dataset | None, schema: pa.Schema, min_rows: int
) -> int:
    target = folder.curated(name)
    rows = map_blocks(read_written(folder.data), _scored_at_least, min_score, num_cpus=AFTER_STAGES_CPUS)
    if seed is not None:
        rows = rows.union(seed)
    write_shards(rows, target, min_rows)
    if not parquet_files(target):  # Ray writes no file for no rows; the Hub config needs one
        os.makedirs(target, exist_ok=True)
        pq.write_table(schema.empty_table(), os.path.join(target, "empty.parquet"))
    return count_rows(target)


def write_subsets(folder: OutputFolder, curation: CurationConfig, min_rows_per_file: int) -> dict[str, int]:
    """Write every curated subset from `data/`; return the rows in each.

    The subsets are independent Ray Data plans, run side by side: each is seconds of scheduling for
    little work, so one after the other they would add up at the end of every run.
    """
    schema = pq.read_schema(parquet_files(folder.data)[0])
    seed = None
    if curation.seed is not None:
        seed = map_blocks(read_source(curation.seed), _as_subset_rows, schema)
    shutil.rmtree(os.path.join(folder.root, "curated"), ignore_errors=True)
    with ThreadPoolExecutor(max_workers=len(curation.subsets)) as pool:
        sizes = {
            name: pool.submit(_write_subset, folder, name, min_score, seed, schema, min_rows_per_file)
            for name, min_score in curation.subsets.items()
        }
        return {name: size.result() for name, size in sizes.items()}


def _moves(batch: pa.RecordBatch, subsets: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Per subset: (rows that entered it, rows that left it) in this batch."""
    moves = {}
    for name, min_score in subsets.items():
        now = pc.fill_null(pc.greater_equal(batch.column("score"), min_score), False)
        before = pc.fill_null(pc.greater_equal(batch.column("score_prev"), min_score), False)
        entered = pc.sum(pc.and_(now, pc.invert(before))).as_py() or 0
        left = pc.sum(pc.and_(before, pc.invert(now))).as_py() or 0
        moves[name] = (entered, left)
    return moves


def subset_moves(folder: OutputFolder, subsets: dict[str, int]) -> dict[str, dict[str, int]]:
    """For a re-scored output (`score_prev` kept): how many pairs entered and left each subset."""
    moves = {name: {"entered": 0, "left": 0} for name in subsets}
    for batch in scan_columns(folder.data, ["score", "score_prev"]):
        for name, (entered, left) in _moves(batch, subsets).items():
            moves[name]["entered"] += entered
            moves[name]["left"] += left
    return moves
