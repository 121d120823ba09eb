"""Exact and near dedup as Ray Data operators: a hash shuffle of narrow key rows, never a driver-side set.

Of each group of duplicates the first row is kept: the smallest `keep_first_by` value, then `row_hash`.
The rules phase gives each row that passes the rules its dedup keys (`dedup_keys`: its content hash,
then one LSH band key per band). The dedup phase reads only the ids, codes and keys of the written
rows, makes them narrow (shard, key, row_hash, code[, rank]) rows, hash-shuffles them by a 12-bit shard
of the key so that each `map_groups` call sees whole buckets and finds the losers with numpy, and
writes the losers' ids and codes (`OutputFolder.segment_duplicates`). Those become one sorted array in
the object store that every row batch of a later read looks its ids up in (a broadcast join, no
shuffle of the full rows).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from backtrans.config import SegmentsConfig
from backtrans.output import OutputFolder, write_parquet
from backtrans.resources import IO_CPUS, SHUFFLE_BATCH_BYTES
from backtrans.schema import ROW_HASH, ROW_ID_TYPE
from backtrans.segments.minhash import band_keys, content_hash, lsh_params, minhash_signatures
from backtrans.segments.rules import ROW_REASONS

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
REASONS = (*ROW_REASONS, EXACT_DUPLICATE, NEAR_DUPLICATE)
# A verdict travels as a uint8 code: 0 keeps the row, else 1 + its reason's place in REASONS, so the
# smallest code a row gets is the first rule that removes it (exact before near).
CODES = {reason: code for code, reason in enumerate(REASONS, start=1)}
_EXACT, _NEAR = CODES[EXACT_DUPLICATE], CODES[NEAR_DUPLICATE]
_SHARD_SHIFT = np.uint64(64 - 12)  # keys are shuffled by a 12-bit shard: many buckets per group
KEYS_COLUMN = "dedup_keys"
CODE_COLUMN = "filter_code"
KEYS_TYPE = pa.list_(pa.uint64())


def dedup_keys(texts: list[str], config: SegmentsConfig) -> pa.ListArray:
    """Each text's dedup keys: its content hash (with exact dedup on), then its LSH band keys (with
    near dedup on). Every text gets the same number of keys."""
    keys = []
    if config.exact_dedup:
        keys.append(np.fromiter((content_hash(text) for text in texts), np.uint64, len(texts))[:, None])
    if config.near_dedup and texts:
        bands, rows = lsh_params(config.near_dup_threshold)
        keys.append(band_keys(minhash_signatures(texts), bands, rows))
    if not keys or not texts:
        return pa.array([[]] * len(texts), KEYS_TYPE)
    grid = np.hstack(keys)
    offsets = np.arange(0, grid.size + 1, grid.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(grid.ravel(), pa.uint64()))


def _key_rows(batch: pa.Table, config: SegmentsConfig) -> pa.Table:
    """The (shard, key, row_hash, code[, rank]) rows of the written rows that passed every rule;
    `rank` is the `keep_first_by` column when that is not the row id itself."""
    passing = batch.filter(pc.equal(batch[CODE_COLUMN], 0))
    keys = passing[KEYS_COLUMN].combine_chunks()
    per_row = int(keys.value_lengths()[0].as_py()) if len(keys) else 0
    key = keys.flatten().to_numpy().astype(np.uint64)
    owner = np.repeat(np.arange(len(keys)), per_row)
    # The first key is the content hash when exact dedup is on; the others are band keys.
    codes = np.full((len(keys), per_row), _NEAR, np.uint8)
    if config.exact_dedup and per_row:
        codes[:, 0] = _EXACT
    table = {
        "shard": pa.array((key >> _SHARD_SHIFT).astype(np.uint16)),
        "key": pa.array(key, pa.uint64()),
        ROW_HASH: passing[ROW_HASH].take(pa.array(owner, pa.int64())),
        "code": pa.array(codes.ravel(), pa.uint8()),
    }
    if config.keep_first_by != ROW_HASH:
        table["rank"] = passing[config.keep_first_by].take(pa.array(owner, pa.int64()))
    return pa.table(table)


_LOSERS_SCHEMA = pa.schema([(ROW_HASH, ROW_ID_TYPE), ("code", pa.uint8())])


def _losers(group: pa.Table) -> pa.Table:
    """The (row_hash, code) of every row in one shard that lost a bucket.

    Called on one shard of keys, i.e. on whole buckets. A row loses when it shares a bucket with a row
    ranked before it: by `rank` (when present, nulls last), then row id. This is a union over bucket
    collisions, not a clustering: a row goes when ANY bucket it is in holds a row ranked before it,
    even one that goes itself. So no two kept rows share a bucket and the first of each group of
    near-duplicates is kept, but in a chain A~B~C where only neighbours are similar (A first), B and
    C both go though C may not be similar to A. LSH itself is probabilistic: see `lsh_params` for the
    odds of a pair becoming a candidate.
    """
    ranks = ["key"] + ["rank"] * ("rank" in group.column_names) + [ROW_HASH]
    order = pc.sort_indices(group, sort_keys=[(name, "ascending", "at_end") for name in ranks])
    keys = group["key"].take(order).to_numpy()
    ids = group[ROW_HASH].take(order).to_numpy()
    codes = group["code"].take(order).to_numpy()
    bucket_start = np.ones(len(keys), dtype=bool)
    bucket_start[1:] = keys[1:] != keys[:-1]
    winner = ids[np.flatnonzero(bucket_start)[np.cumsum(bucket_start) - 1]]
    losing = ids != winner  # never against itself, even if a source repeated an id
    return pa.table([pa.array(ids[losing], ROW_ID_TYPE), pa.array(codes[losing], pa.uint8())], schema=_LOSERS_SCHEMA)


def write_duplicates(folder: OutputFolder, config: SegmentsConfig) -> None:
    """The dedup phase: the losers of every bucket of the written rows, into `segment_duplicates`."""
    columns = [ROW_HASH, CODE_COLUMN, KEYS_COLUMN] + [config.keep_first_by] * (config.keep_first_by != ROW_HASH)
    rows = ray.data.read_parquet(folder.segment_rows, filesystem=folder.filesystem).select_columns(columns)
    rows.context.shuffle_input_batch_bytes = SHUFFLE_BATCH_BYTES  # for this plan only
    losers = (
        rows.map_batches(_key_rows, fn_kwargs={"config": config}, batch_format="pyarrow")
        .groupby("shard", num_partitions=config.num_partitions)
        .map_groups(_losers, batch_format="pyarrow")
    )
    write_parquet(losers, folder, folder.segment_duplicates, 1_000_000, IO_CPUS, schema_if_empty=_LOSERS_SCHEMA)


def _duplicates(folder: OutputFolder) -> tuple[np.ndarray, np.ndarray]:
    """The duplicates as one lookup: their sorted unique row ids and, for each, the smallest code
    (a row loses in several buckets; an exact duplicate whose bands collide too is counted as exact)."""
    losers = folder.read_columns(folder.segment_duplicates, [ROW_HASH, "code"])
    ids, codes = losers[ROW_HASH].to_numpy(), losers["code"].to_numpy()
    order = np.lexsort((codes, ids))
    ids, codes = ids[order], codes[order]
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return ids[first], codes[first]


_lookup = ray.remote(num_cpus=IO_CPUS)(_duplicates)


def duplicate_lookup(folder: OutputFolder) -> tuple[ray.ObjectRef]:
    """The lookup of `write_duplicates`' rows, built on a worker (in a tuple: Ray passes the ref on to
    `is_duplicate` unresolved, and the array stays in the object store, one copy per node)."""
    return (_lookup.remote(folder),)


def in_sorted(row_ids: pa.ChunkedArray, ids: np.ndarray) -> np.ndarray:
    """Which of these row ids are in the sorted array `ids` (a mask)."""
    row_ids = row_ids.to_numpy().astype(np.uint64)
    if not len(ids):
        return np.zeros(len(row_ids), dtype=bool)
    at = np.minimum(np.searchsorted(ids, row_ids), len(ids) - 1)
    return ids[at] == row_ids


def is_duplicate(row_ids: pa.ChunkedArray, lookup: tuple[ray.ObjectRef]) -> np.ndarray:
    """Which of these rows lost to a duplicate (a mask), from the lookup of `duplicate_lookup`."""
    ids, _ = ray.get(lookup[0])  # zero-copy from the node's object store
    return in_sorted(row_ids, ids)


@ray.remote(num_cpus=IO_CPUS)
def _reason_counts(folder: OutputFolder, dedup: bool) -> dict[str, int]:
    codes = np.bincount(folder.read_columns(folder.segment_rows, [CODE_COLUMN])[CODE_COLUMN].to_numpy(), minlength=1)
    counts = {reason: int(codes[code]) if code < len(codes) else 0 for reason, code in CODES.items()}
    if dedup:
        _, loser_codes = _duplicates(folder)
        for reason in (EXACT_DUPLICATE, NEAR_DUPLICATE):
            counts[reason] = int(np.count_nonzero(loser_codes == CODES[reason]))
    rows_in = int(codes.sum())
    return {"rows_in": rows_in, "kept": rows_in - sum(counts.values()), "removed": counts}


def count_reasons(folder: OutputFolder, dedup: bool) -> dict:
    """{"rows_in": n, "kept": k, "removed": {reason: rows, ...}} of the written rows and duplicates,
    counted on a worker (only the counts reach the driver)."""
    return ray.get(_reason_counts.remote(folder, dedup))
