"""Dedup: the key rows of a batch and the losers of a shard, pure functions; then the ranking on Ray."""

import pyarrow as pa
import pytest

from backtrans.config import SegmentsConfig
from backtrans.segments.dedup import REASONS, _key_rows, _losers
from backtrans.segments.filter_pass import rule_rows
from backtrans.segments.minhash import content_hash, lsh_params
from backtrans.segments.rules import RowRules
from tests.segments.data import DUPLICATE_OF, KEPT, OTHER, PROSE, kept_segments, pass_config, read_sample, segment_pass


def _code(reason: str) -> int:
    return REASONS.index(reason) + 1


def test_a_removed_row_gets_no_keys_and_a_passing_row_one_row_per_dedup_key():
    config = SegmentsConfig()
    longer = PROSE + "\n" + OTHER
    batch = pa.table({"text": ["too short", PROSE, longer], "row_hash": pa.array([7, 8, 9], pa.uint64())})
    rows = rule_rows(batch, RowRules.from_config(config), config)
    bands, _ = lsh_params(config.near_dup_threshold)
    assert rows["filter_code"].to_pylist() == [_code("too_short"), 0, 0]
    assert rows["text"].to_pylist() == [None, PROSE, longer]
    assert rows["dedup_keys"][0].as_py() is None
    assert [len(keys.as_py()) for keys in rows["dedup_keys"][1:]] == [1 + bands] * 2
    keys = _key_rows(rows, config)
    assert keys.num_rows == 2 * (1 + bands)
    for row_id, text in ((8, PROSE), (9, longer)):
        mine = keys.filter(pa.compute.equal(keys["row_hash"], row_id))
        assert mine["code"].to_pylist() == [_code("exact_duplicate")] + [_code("near_duplicate")] * bands
        assert mine["key"][0].as_py() == content_hash(text)
    assert "rank" not in keys.column_names  # keep_first_by is row_hash itself
    by_id = config.model_copy(update={"keep_first_by": "id"})
    ranked = _key_rows(rows.append_column("id", pa.array(["c", "a", "b"])), by_id)
    assert ranked["rank"].to_pylist()[:2] == ["a", "a"]


def _removed_pairs(**columns) -> list[tuple[int, int]]:
    group = pa.table({"shard": pa.array([0] * len(columns["key"]), pa.uint16())} | columns)
    removed = _losers(group)
    return sorted(zip(removed["row_hash"].to_pylist(), removed["code"].to_pylist(), strict=True))


def test_a_row_loses_a_bucket_only_to_a_row_ranked_before_it():
    near, exact = _code("near_duplicate"), _code("exact_duplicate")
    columns = {
        "key": pa.array([5, 5, 5, 9, 9, 7, 7], pa.uint64()),
        "row_hash": pa.array([30, 10, 20, 40, 30, 50, 50], pa.uint64()),
        "code": pa.array([near] * 5 + [exact] * 2, pa.uint8()),
    }
    # 10 wins bucket 5; 30 wins bucket 9 though it lost bucket 5; a repeated id 50 never loses to itself.
    assert _removed_pairs(**columns) == [(20, near), (30, near), (40, near)]
    # Ranked by another column first (nulls last), row ids only break ties.
    ranks = pa.array(["doc-3", "doc-9", "doc-1", "doc-2", None, "doc-5", "doc-5"])
    assert _removed_pairs(**columns, rank=ranks) == [(10, near), (30, near), (30, near)]


@pytest.mark.usefixtures("local_ray")
def test_by_default_the_copy_with_the_smallest_row_hash_is_kept(tmp_path):
    config = pass_config(tmp_path / "out", num_partitions=4)
    counts, _ = segment_pass(config)
    rows = {row["id"]: row["row_hash"] for row in kept_segments(config)}
    assert counts["kept"] == len(rows) == KEPT
    assert counts["removed"]["exact_duplicate"] == 12 and counts["removed"]["near_duplicate"] == 8
    everyone = {row["id"]: row["row_hash"] for row in read_sample().select_columns(["id", "row_hash"]).take_all()}
    for copy, original in DUPLICATE_OF.items():
        first = min((copy, original), key=everyone.get)
        assert first in rows and ({copy, original} - {first}).isdisjoint(rows), (copy, original)
