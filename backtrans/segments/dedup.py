"""Exact and near dedup as Ray Data operators: a hash shuffle of narrow key rows, never a driver-side set.

Of each group of duplicates the first row is kept: the smallest `keep_first_by` value, then `row_hash`.
The key pass reads the input once and runs the per-row rules on each row; every row becomes narrow
(shard, key, row_hash, code[, rank]) rows: a row a rule removes gives one row with that reason's
code, a row that passes gives one per dedup key (its content hash; one LSH band key per band). They
are hash-shuffled by a 12-bit shard of the key so that each `map_groups` call sees whole buckets and
finds the losers with numpy. The removed rows' ids and codes (9 bytes a row) become one sorted array
in the object store that every row batch of a second read looks its ids up in (a broadcast join, no
shuffle of the full rows): that read labels its rows without running a rule again.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from backtrans.config import SegmentsConfig
from backtrans.schema import ROW_HASH, ROW_ID_TYPE
from backtrans.segments.minhash import band_keys, content_hash, lsh_params, minhash_signatures
from backtrans.segments.rules import ROW_REASONS, RowRules, texts_of

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
REASONS = (*ROW_REASONS, EXACT_DUPLICATE, NEAR_DUPLICATE)
# A verdict travels as a uint8 code: 0 keeps the row, else 1 + its reason's place in REASONS, so the
# smallest code a row gets is the first rule that removes it (exact before near).
_CODES = {reason: code for code, reason in enumerate(REASONS, start=1)}
_EXACT, _NEAR = _CODES[EXACT_DUPLICATE], _CODES[NEAR_DUPLICATE]
_REASON_OF_CODE = pa.array([None, *REASONS], pa.string())
_SHARD_SHIFT = np.uint64(64 - 12)  # keys are shuffled by a 12-bit shard: many buckets per group


def _key_rows(batch: pa.Table, rules: RowRules, config: SegmentsConfig) -> pa.Table:
    """The (shard, key, row_hash, code[, rank]) rows of a batch; `rank` is the `keep_first_by`
    column when that is not the row id itself. A removed row's key is its own id (never a bucket)."""
    for column in {ROW_HASH, config.keep_first_by}:
        if column not in batch.column_names:
            raise ValueError(f"segments dedup needs the column {column!r}; the data has {batch.column_names}")
    texts = texts_of(batch, config.text_column).to_pylist()
    verdicts = np.array([_CODES[reason] if reason else 0 for reason in rules.reasons(texts)], np.uint8)
    row_ids = batch[ROW_HASH].to_numpy().astype(np.uint64)
    removed = np.flatnonzero(verdicts)
    passing = np.flatnonzero(verdicts == 0)
    kept_texts = [texts[i] for i in passing]
    owners, keys, codes = [removed], [row_ids[removed]], [verdicts[removed]]  # owners: a key's row in the batch
    if config.exact_dedup:
        keys.append(np.fromiter((content_hash(text) for text in kept_texts), np.uint64, len(kept_texts)))
        codes.append(np.full(len(passing), _EXACT, np.uint8))
        owners.append(passing)
    if config.near_dedup and kept_texts:
        bands, rows = lsh_params(config.near_dup_threshold)
        near = band_keys(minhash_signatures(kept_texts), bands, rows)
        keys.append(near.ravel())
        codes.append(np.full(near.size, _NEAR, np.uint8))
        owners.append(np.repeat(passing, bands))
    key, owner = np.concatenate(keys), np.concatenate(owners)
    table = {
        "shard": pa.array((key >> _SHARD_SHIFT).astype(np.uint16)),
        "key": pa.array(key, pa.uint64()),
        ROW_HASH: pa.array(row_ids[owner], ROW_ID_TYPE),
        "code": pa.array(np.concatenate(codes), pa.uint8()),
    }
    if config.keep_first_by != ROW_HASH:
        table["rank"] = batch[config.keep_first_by].take(pa.array(owner, pa.int64()))
    return pa.table(table)


def _removed(group: pa.Table) -> pa.Table:
    """The (row_hash, code) of every row in one shard that a rule removed or that lost a bucket.

    Called on one shard of keys, i.e. on whole buckets. A row loses when it shares a bucket with a row
    ranked before it: by `rank` (when present, nulls last), then row id. This is a union over bucket
    collisions, not a clustering: a row goes when ANY bucket it is in holds a row ranked before it,
    even one that goes itself. So no two kept rows share a bucket and the first of each group of
    near-duplicates is kept, but in a chain A~B~C where only neighbours are similar (A first), B and
    C both go though C may not be similar to A. LSH itself is probabilistic: see `lsh_params` for the
    odds of a pair becoming a candidate.
    """
    by_rule = pc.less(group["code"], _EXACT)
    removed = group.filter(by_rule).select([ROW_HASH, "code"])
    candidates = group.filter(pc.invert(by_rule))
    ranks = ["key"] + ["rank"] * ("rank" in group.column_names) + [ROW_HASH]
    order = pc.sort_indices(candidates, sort_keys=[(name, "ascending", "at_end") for name in ranks])
    keys = candidates["key"].take(order).to_numpy()
    ids = candidates[ROW_HASH].take(order).to_numpy()
    codes = candidates["code"].take(order).to_numpy()
    bucket_start = np.ones(len(keys), dtype=bool)
    bucket_start[1:] = keys[1:] != keys[:-1]
    winner = ids[np.flatnonzero(bucket_start)[np.cumsum(bucket_start) - 1]]
    losing = ids != winner  # never against itself, even if a source repeated an id
    losers = pa.table({ROW_HASH: pa.array(ids[losing], ROW_ID_TYPE), "code": pa.array(codes[losing], pa.uint8())})
    return pa.concat_tables([removed, losers])


@ray.remote
def _lookup_table(*blocks: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The removed rows as one lookup: their sorted unique row ids and, for each, the smallest code
    (a row loses in several buckets; an exact duplicate whose bands collide too is counted as exact)."""
    blocks = [block for block in blocks if block.num_rows]
    if not blocks:
        return np.empty(0, np.uint64), np.empty(0, np.uint8)
    ids = np.concatenate([block[ROW_HASH].to_numpy() for block in blocks])
    codes = np.concatenate([block["code"].to_numpy() for block in blocks])
    order = np.lexsort((codes, ids))
    ids, codes = ids[order], codes[order]
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return ids[first], codes[first]


def removed_rows(dataset: ray.data.Dataset, rules: RowRules, config: SegmentsConfig) -> tuple[ray.ObjectRef]:
    """Run the key pass now; return the lookup of every removed row (in a tuple: Ray passes the ref on
    to `reasons_of` unresolved, and the array stays in the object store, one copy per node)."""
    removed = (
        dataset.map_batches(_key_rows, fn_kwargs={"rules": rules, "config": config}, batch_format="pyarrow")
        .groupby("shard", num_partitions=config.num_partitions)
        .map_groups(_removed, batch_format="pyarrow")
    )
    # Only ObjectRefs pass through the driver; the blocks stay in the object store. (Materialized
    # first: to_arrow_refs on a plan with no rows out would run it again to find a schema.)
    blocks = removed.materialize().to_arrow_refs()
    return (_lookup_table.remote(*blocks),)


def reasons_of(batch: pa.Table, lookup: tuple[ray.ObjectRef]) -> pa.Array:
    """Each row's reason from the lookup of `removed_rows` (null: kept)."""
    ids, codes = ray.get(lookup[0])  # zero-copy from the node's object store
    row_ids = batch[ROW_HASH].to_numpy().astype(np.uint64)
    if not len(ids):
        return pa.nulls(len(row_ids), pa.string())
    at = np.minimum(np.searchsorted(ids, row_ids), len(ids) - 1)
    verdicts = np.where(ids[at] == row_ids, codes[at], 0)
    return _REASON_OF_CODE.take(pa.array(verdicts, pa.int64()))
