"""The whole filter on Ray: every document of jobs/data/web_sample.jsonl removed by the rule it was built
to fail (and only those), the counts adding up, the rules run once per row, dedup on and off."""

import json
from collections import Counter

import numpy as np
import pytest
import ray

from backtrans.config import SegmentsConfig
from backtrans.segments.dedup import REASONS
from backtrans.segments.filter_pass import (
    REASON_COLUMN,
    annotate_segments,
    count_reasons,
    drop_removed,
    filter_segments,
)
from backtrans.segments.rules import RowRules
from tests.segments.data import (
    CATEGORY_OF,
    DUPLICATE_OF,
    KEPT,
    OTHER,
    PROSE,
    REMOVED,
    SAMPLE,
    LoggedRule,
    filter_counts,
    read_sample,
)

pytestmark = pytest.mark.usefixtures("local_ray")

EXPECTED = {"rows_in": 220, "kept": 156, "removed": dict(REMOVED)}


def test_the_sample_is_as_its_readme_says():
    assert [json.loads(line)["id"] for line in SAMPLE.read_text(encoding="utf-8").splitlines()] == [
        f"doc-{i:04d}" for i in range(1, 221)
    ]
    assert list(REMOVED) == list(REASONS) and sum(REMOVED.values()) + KEPT == 220
    assert len(DUPLICATE_OF) == 20 and DUPLICATE_OF["doc-0014"] == "doc-0011"
    assert {CATEGORY_OF[copy] for copy in DUPLICATE_OF} == {"exact_duplicate", "near_duplicate"}


def test_sample_filter_matches_the_readme_and_the_counts_add_up(metrics):
    # The sample's ids are in file order, so keeping the smallest id keeps the earlier document.
    config = SegmentsConfig(keep_first_by="id")
    annotated = annotate_segments(read_sample(), RowRules.from_config(config), config).materialize()

    reasons = {row["id"]: row[REASON_COLUMN] for row in annotated.select_columns(["id", REASON_COLUMN]).take_all()}
    assert len(reasons) == 220
    wrong = {doc: (reason, CATEGORY_OF.get(doc)) for doc, reason in reasons.items() if reason != CATEGORY_OF.get(doc)}
    assert not wrong  # every document is removed by the rule it was built to fail; the good ones are all kept

    assert count_reasons(annotated) == EXPECTED

    rows = drop_removed(annotated, metrics).take_all()
    assert filter_counts(metrics) == EXPECTED
    assert EXPECTED["rows_in"] == EXPECTED["kept"] + sum(EXPECTED["removed"].values())
    assert set(rows[0]) == {"id", "url", "text", "row_hash"}
    kept_ids = {row["id"] for row in rows}
    assert len(rows) == len(kept_ids) == KEPT
    assert not kept_ids & set(CATEGORY_OF)
    assert set(DUPLICATE_OF.values()) <= kept_ids  # the originals


@pytest.mark.parametrize("dedup", [True, False])
def test_each_rule_runs_once_per_row_it_reaches(tmp_path, dedup):
    config = SegmentsConfig(exact_dedup=dedup, near_dedup=dedup)
    rules = RowRules(tuple(LoggedRule(rule, tmp_path / "calls") for rule in RowRules.from_config(config).rules))
    annotated = annotate_segments(read_sample(), rules, config)
    assert annotated.count() == 220
    calls = Counter((tmp_path / "calls").read_text().split())
    # A row reaches a rule when no rule before it removed the row.
    assert calls == {"Empty": 220, "Length": 216, "Uppercase": 198, "Boilerplate": 192, "Repetitive": 182}


def test_filter_without_duplicates_or_dedup(metrics):
    history = OTHER + (
        " Delegations from France, Sweden, Spain, the Dutch Republic and the many states of the Holy Roman Empire"
        " attended, and the settlement redrew borders, recognised Swiss independence and confirmed religious terms."
        " Envoys travelled for weeks to reach the towns, and questions of precedence delayed the opening sessions."
    )
    texts = [PROSE, PROSE.replace("flour", "meal"), "too short", history]
    items = [{"text": text, "row_hash": np.uint64(i + 1)} for i, text in enumerate(texts)]
    dataset = ray.data.from_items(items, override_num_blocks=1)
    # No duplicates at all (the meal/flour pair is ~0.77 similar, under 0.95): the dedup still runs.
    config = SegmentsConfig(near_dup_threshold=0.95, num_partitions=2)
    kept = filter_segments(dataset, config, metrics)
    assert sorted(row["row_hash"] for row in kept.take_all()) == [1, 2, 4]
    counts = filter_counts(metrics)
    assert counts["removed"]["too_short"] == 1 and counts["rows_in"] == 4

    no_dedup = SegmentsConfig(exact_dedup=False, near_dedup=False)
    kept = filter_segments(dataset.select_columns(["text"]), no_dedup, metrics)
    assert kept.count() == 3 and filter_counts(metrics)["kept"] == 3 + 3  # the same actor, a second filter
