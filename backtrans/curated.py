"""The curated training sets (the paper's A4 and A5), each row's origin, and the chat-format `messages` export.

Each subset of `curation.subsets` is the rows of `data/` scored at least its threshold (`score`, and
or `score_expected` for a `{min_score, min_expected}` rule), written by
Ray Data to `curated/NAME/`, so the Hub shows it as a dataset config beside `all`. Seed pairs from
`curation.seed` are added to every subset with the paper's seed tag (its section 3: the model is
fine-tuned on curated augmented data and seed data, each marked by a system prompt).

The tag follows the row's `origin` column, set when the pair is made, so an output read again (a
re-score) keeps the tag its pairs were made with.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import ray

from backtrans.config import CurationConfig, SubsetRule, subset_rule
from backtrans.output import OutputFolder, write_parquet
from backtrans.resources import AFTER_STAGES_CPUS, map_blocks
from backtrans.schema import (
    GENERATION,
    INSTRUCTION,
    MESSAGES,
    MESSAGES_TYPE,
    ORIGIN,
    ORIGIN_SEED,
    ORIGIN_WEB,
    OUTPUT_TYPES,
    SCORE,
    SCORE_EXPECTED,
    SCORE_PREV,
)
from backtrans.sources import read_source

# The paper's tags (section 2.3): augmented pairs and seed pairs are told apart by the system prompt.
WEB_TAG = "Answer with knowledge from web search."
SEED_TAG = "Answer in the style of an AI Assistant."
TAGS = {ORIGIN_WEB: WEB_TAG, ORIGIN_SEED: SEED_TAG}


def with_origin(batch: pa.Table, origin: str, replace: bool) -> pa.Table:
    """The `origin` column: `origin` for every row when `replace` (the job made these pairs), else the
    batch's own origin where it has one (an output read again) and `origin` where it has none."""
    made = pa.array([origin] * len(batch), OUTPUT_TYPES[ORIGIN])
    if ORIGIN not in batch.column_names:
        return batch.append_column(ORIGIN, made)
    kept = made if replace else pc.fill_null(batch[ORIGIN].cast(OUTPUT_TYPES[ORIGIN]), origin)
    return batch.set_column(batch.column_names.index(ORIGIN), ORIGIN, kept)


def _tag(origin: str) -> str:
    try:
        return TAGS[origin]
    except KeyError:
        raise ValueError(f"column {ORIGIN!r}: unknown value {origin!r} (expected one of {', '.join(TAGS)})") from None


def add_messages(batch: pa.Table) -> pa.Table:
    """A `messages` column in the chat format TRL's SFTTrainer reads: the tag of the row's origin,
    user, assistant. Null for a row without both an instruction and a generation (a failed row)."""
    conversations = [
        None
        if instruction is None or generation is None
        else [
            {"role": "system", "content": _tag(origin)},
            {"role": "user", "content": instruction},
            {"role": "assistant", "content": generation},
        ]
        for instruction, generation, origin in zip(
            batch[INSTRUCTION].to_pylist(), batch[GENERATION].to_pylist(), batch[ORIGIN].to_pylist(), strict=True
        )
    ]
    messages = pa.array(conversations, MESSAGES_TYPE)
    if MESSAGES in batch.column_names:
        return batch.set_column(batch.column_names.index(MESSAGES), MESSAGES, messages)
    return batch.append_column(MESSAGES, messages)


def _kept(batch: pa.Table | pa.RecordBatch, rule: SubsetRule, score: str = SCORE) -> pa.Array:
    """Which rows `rule` keeps (a null score keeps none); `score`: the column its min_score reads."""
    kept = pa.array([True] * len(batch))
    if rule.min_score is not None:
        kept = pc.and_(kept, pc.greater_equal(batch.column(score), rule.min_score))
    if rule.min_expected is not None:
        kept = pc.and_(kept, pc.greater_equal(batch.column(SCORE_EXPECTED), rule.min_expected))
    return pc.fill_null(kept, False)


def _scored_at_least(batch: pa.Table, rule: SubsetRule) -> pa.Table:
    return batch.filter(_kept(batch, rule))


def _as_subset_rows(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """Seed pairs in the output's columns: what they have, cast; null for what they lack (scores)."""
    batch = add_messages(with_origin(batch, ORIGIN_SEED, replace=False))
    columns = [
        batch[field.name].cast(field.type) if field.name in batch.column_names else pa.nulls(len(batch), field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _write_subset(
    folder: OutputFolder, name: str, rule: SubsetRule, seed: ray.data.Dataset | None, schema: pa.Schema, min_rows: int
) -> int:
    target = folder.curated(name)
    rows = map_blocks(folder.read_written(folder.data), _scored_at_least, rule, num_cpus=AFTER_STAGES_CPUS)
    if seed is not None:
        rows = rows.union(seed)
    write_parquet(rows, folder, target, min_rows, schema_if_empty=schema)
    return folder.count_rows(target)


def write_subsets(folder: OutputFolder, curation: CurationConfig, min_rows_per_file: int) -> dict[str, int]:
    """Write every curated subset from `data/`; return the rows in each.

    The subsets are independent Ray Data plans, run side by side: each is seconds of scheduling for
    little work, so one after the other they would add up at the end of every run.
    """
    schema = folder.schema(folder.data)
    seed = None
    if curation.seed is not None:
        seed = map_blocks(read_source(curation.seed), _as_subset_rows, schema)
    folder.delete_dir(folder.curated_root)
    with ThreadPoolExecutor(max_workers=len(curation.subsets)) as pool:
        sizes = {
            name: pool.submit(_write_subset, folder, name, subset_rule(rule), seed, schema, min_rows_per_file)
            for name, rule in curation.subsets.items()
        }
        return {name: size.result() for name, size in sizes.items()}


def _by_score(subsets: dict[str, int | SubsetRule]) -> dict[str, SubsetRule]:
    """The subsets whose rule reads `score` alone: the earlier output kept no `score_expected` to compare."""
    rules = {name: subset_rule(rule) for name, rule in subsets.items()}
    return {name: rule for name, rule in rules.items() if rule.min_expected is None}


def _moves(batch: pa.RecordBatch, subsets: dict[str, SubsetRule]) -> dict[str, tuple[int, int]]:
    """Per subset: (rows that entered it, rows that left it) in this batch."""
    moves = {}
    for name, rule in subsets.items():
        now, before = _kept(batch, rule), _kept(batch, rule, SCORE_PREV)
        entered = pc.sum(pc.and_(now, pc.invert(before))).as_py() or 0
        left = pc.sum(pc.and_(before, pc.invert(now))).as_py() or 0
        moves[name] = (entered, left)
    return moves


def subset_moves(folder: OutputFolder, subsets: dict[str, int | SubsetRule]) -> dict[str, dict[str, int]]:
    """For a re-scored output (`score_prev` kept): how many pairs entered and left each subset that
    selects on `score` alone."""
    subsets = _by_score(subsets)
    moves = {name: {"entered": 0, "left": 0} for name in subsets}
    for batch in folder.scan_columns(folder.data, [SCORE, SCORE_PREV]):
        for name, (entered, left) in _moves(batch, subsets).items():
            moves[name]["entered"] += entered
            moves[name]["left"] += left
    return moves
