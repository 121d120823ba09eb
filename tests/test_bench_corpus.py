"""The `segments` regime's labelled corpus (bench/corpus.py) and its quality figures: no Ray needed."""

import json
from collections import Counter

import numpy as np
import pytest

from backtrans.config import SegmentsConfig
from backtrans.segments.minhash import jaccard
from backtrans.segments.rules import RowRules
from bench.corpus import EXACT, NEAR_LEVELS, Labels, generate, quality

N = 2_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("corpus") / "docs", N, seed=7, files=2)


def _rows(corpus) -> list[dict]:
    return [json.loads(line) for path in corpus.paths for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_texts(corpus, tmp_path):
    again = generate(tmp_path / "again", N, seed=7, files=2)
    assert [path.read_bytes() for path in again.paths] == [path.read_bytes() for path in corpus.paths]
    assert np.array_equal(again.labels().copy_of, corpus.labels().copy_of)
    other = generate(tmp_path / "other", N, seed=8, files=2)
    assert _rows(other)[0]["text"] != _rows(corpus)[0]["text"]


def test_documents_are_id_and_text_in_two_files_and_pass_every_rule(corpus):
    rows = _rows(corpus)
    assert [len(path.read_text().splitlines()) for path in corpus.paths] == [1_000, 1_000]
    assert [row["id"] for row in rows] == [f"{i:09d}" for i in range(N)]
    assert {tuple(row) for row in rows} == {("id", "text")}
    texts = [row["text"] for row in rows]
    assert all(600 <= len(text) <= 3_000 for text in texts)
    assert Counter(RowRules.from_config(SegmentsConfig()).reasons(texts)) == {None: N}


def test_planted_duplicates_are_counted_and_near_copies_hit_their_jaccard(corpus):
    labels = corpus.labels()
    texts = [row["text"] for row in _rows(corpus)]
    copies = labels.copy_of >= 0
    assert Counter(labels.kind.tolist()) == {0: 1_306, 1: 334, 2: 120, 3: 120, 4: 120}
    exact = np.flatnonzero(copies & (labels.kind == EXACT))
    assert len(exact) == 200  # 10% of the documents
    nothing_removed = quality(labels, range(N))
    assert nothing_removed["groups"] == {"exact": 134, "near_0.9": 60, "near_0.8": 60, "near_0.6": 60}
    assert nothing_removed["recall"] == dict.fromkeys(nothing_removed["groups"], 0.0)
    assert nothing_removed["false_positive_rate"] == 0.0
    assert all(texts[i] == texts[labels.copy_of[i]] for i in exact)
    for k, level in enumerate(NEAR_LEVELS):
        near = np.flatnonzero(copies & (labels.kind == 2 + k))
        assert len(near) == 60  # 3% of the documents, each the copy of its own original
        measured = np.array([jaccard(texts[i], texts[labels.copy_of[i]]) for i in near])
        assert np.abs(measured - level).max() <= 0.02
        assert np.allclose(measured, labels.jaccard[near], atol=1e-6)  # the label says what was measured
    # Documents outside the groups share no shingle with anything: spot-check some against the rest.
    distinct = np.flatnonzero(labels.kind == 0)[:20]
    assert max(jaccard(texts[i], texts[j]) for i in distinct for j in range(0, N, 50) if i != j) == 0.0


def test_quality_on_a_hand_made_case():
    # exact groups {0, 1, 2}, {12, 13}, {14, 15}; near pairs (3, 4) at 0.9, (5, 6) at 0.8, (7, 8) at 0.6;
    # distinct 9, 10, 11.
    kind = np.array([1, 1, 1, 2, 2, 3, 3, 4, 4, 0, 0, 0, 1, 1, 1, 1], np.int8)
    copy_of = np.array([-1, 0, 0, -1, 3, -1, 5, -1, 7, -1, -1, -1, -1, 12, -1, 14])
    labels = Labels(kind, copy_of, np.full(16, np.nan, np.float32))
    kept = [0, 3, 4, 6, 7, 8, 9, 10, 14, 15, 99]  # 12 and 13 both removed; 99 is no document
    assert quality(labels, kept) == {
        "documents": 16,
        "kept": 10,
        "kept_ids_not_in_corpus": 1,
        "groups": {"exact": 3, "near_0.9": 1, "near_0.8": 1, "near_0.6": 1},
        # exact: 2 of {1, 2}, 1 of {13} (and the group is lost), 0 of {15}: 3 of 4
        "recall": {"exact": 0.75, "near_0.9": 0.0, "near_0.8": 1.0, "near_0.6": 0.0},
        "lost": {"exact": 1, "near_0.9": 0, "near_0.8": 0, "near_0.6": 0},
        "distinct": 3,
        "distinct_removed": 1,
        "false_positive_rate": 0.333333,
    }
