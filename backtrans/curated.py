"""The curated training sets (the paper's A4 and A5) and the chat-format `messages` export.

Each subset of `curation.subsets` is the rows of `data/` scored at least its threshold, written by
Ray Data to `curated/NAME/`, so the Hub shows it as a dataset config beside `all`. Seed pairs from
`curation.seed` are added to every subset with the paper's seed tag (its section 3: the model is
fine-tuned on curated augmented data and seed data, each marked by a system prompt).
"""

from __future__ import annotations

import glob
import os
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from backtrans.config import CurationConfig
from backtrans.output import OutputFolder
from backtrans.resources import IO_CPUS, map_blocks
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


def _data_files(directory: str) -> list[str]:
    return sorted(glob.glob(os.path.join(directory, "*.parquet")))


def write_subsets(folder: OutputFolder, curation: CurationConfig, min_rows_per_file: int) -> dict[str, int]:
    """Write every curated subset from `data/`; return the rows in each."""
    schema = pq.read_schema(_data_files(folder.data)[0])
    seed = None
    if curation.seed is not None:
        seed = map_blocks(read_source(curation.seed), _as_subset_rows, schema)
    sizes = {}
    shutil.rmtree(os.path.join(folder.root, "curated"), ignore_errors=True)
    for name, min_score in curation.subsets.items():
        target = folder.curated(name)
        rows = ray.data.read_parquet(folder.data, num_cpus=IO_CPUS)
        rows = map_blocks(rows, _scored_at_least, min_score)
        if seed is not None:
            rows = rows.union(seed)
        rows.write_parquet(target, min_rows_per_file=min_rows_per_file, ray_remote_args={"num_cpus": IO_CPUS})
        if not _data_files(target):  # Ray writes no file for no rows; the Hub config needs one
            os.makedirs(target, exist_ok=True)
            pq.write_table(schema.empty_table(), os.path.join(target, "empty.parquet"))
        sizes[name] = sum(pq.read_metadata(path).num_rows for path in _data_files(target))
    return sizes


def _moves(batch: pa.Table, subsets: dict[str, int]) -> pa.Table:
    names, entered, left = [], [], []
    for name, min_score in subsets.items():
        now = pc.fill_null(pc.greater_equal(batch["score"], min_score), False)
        before = pc.fill_null(pc.greater_equal(batch["score_prev"], min_score), False)
        names.append(name)
        entered.append(pc.sum(pc.and_(now, pc.invert(before))).as_py() or 0)
        left.append(pc.sum(pc.and_(before, pc.invert(now))).as_py() or 0)
    return pa.table({"subset": names, "entered": entered, "left": left})


def subset_moves(folder: OutputFolder, subsets: dict[str, int]) -> dict[str, dict[str, int]]:
    """For a re-scored output (`score_prev` kept): how many pairs entered and left each subset.
    Counted per block on the workers; a few numbers per block reach the driver."""
    scores = ray.data.read_parquet(folder.data, num_cpus=IO_CPUS).select_columns(["score", "score_prev"])
    moves = {name: {"entered": 0, "left": 0} for name in subsets}
    per_block = map_blocks(scores, _moves, subsets)
    for part in per_block.iter_rows():
        moves[part["subset"]]["entered"] += part["entered"]
        moves[part["subset"]]["left"] += part["left"]
    return moves
