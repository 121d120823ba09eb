"""The whole pass on Ray: every document of jobs/data/web_sample.jsonl removed by the rule it was built
to fail (and only those), the counts adding up, the rules run once per row, and a killed pass that
resumes without starting over."""

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray

from backtrans.config import load_config
from backtrans.output import OutputFolder
from backtrans.segments.dedup import CODE_COLUMN, KEYS_COLUMN, REASONS, duplicate_lookup
from backtrans.segments.filter_pass import rule_rows
from backtrans.segments.rules import RowRules
from tests.helpers import S3_BUCKET, checkpointed_ids, sigkill_when
from tests.segments.data import (
    CATEGORY_OF,
    DUPLICATE_OF,
    KEPT,
    OTHER,
    PROSE,
    REMOVED,
    ROOT,
    SAMPLE,
    WEB_DEMO,
    LoggedRule,
    kept_segments,
    pass_config,
    read_sample,
    segment_pass,
)

pytestmark = pytest.mark.usefixtures("local_ray")

EXPECTED = {"rows_in": 220, "kept": 156, "removed": dict(REMOVED), "skipped_lines": 0}


def _written(folder) -> list[dict]:
    return pq.ParquetDataset(folder.parquet_files(folder.segment_rows), filesystem=folder.filesystem).read().to_pylist()


def test_the_sample_is_as_its_readme_says():
    assert [json.loads(line)["id"] for line in SAMPLE.read_text(encoding="utf-8").splitlines()] == [
        f"doc-{i:04d}" for i in range(1, 221)
    ]
    assert list(REMOVED) == list(REASONS) and sum(REMOVED.values()) + KEPT == 220
    assert len(DUPLICATE_OF) == 20 and DUPLICATE_OF["doc-0014"] == "doc-0011"
    assert {CATEGORY_OF[copy] for copy in DUPLICATE_OF} == {"exact_duplicate", "near_duplicate"}


def test_every_row_is_written_with_its_verdict_and_the_counts_add_up(tmp_path):
    # The sample's ids are in file order, so keeping the smallest id keeps the earlier document.
    config = pass_config(tmp_path / "out", keep_first_by="id")
    counts, folder = segment_pass(config)
    assert counts == EXPECTED
    assert json.loads(folder.read_text(folder.segment_counts)) == EXPECTED

    rows = _written(folder)
    ids, codes = ray.get(duplicate_lookup(folder)[0])
    lost = dict(zip(ids.tolist(), codes.tolist(), strict=True))
    reasons = {}
    for row in rows:
        code = row[CODE_COLUMN] or lost.get(row["row_hash"], 0)
        reasons[row["id"]] = REASONS[code - 1] if code else None
        # A row a rule removed keeps its id and code, not its text; a passing row carries its keys.
        assert (row["text"] is None) == bool(row[CODE_COLUMN]) == (row[KEYS_COLUMN] is None)
    assert len(rows) == len(reasons) == 220
    wrong = {doc: (reason, CATEGORY_OF.get(doc)) for doc, reason in reasons.items() if reason != CATEGORY_OF.get(doc)}
    assert not wrong  # every document is removed by the rule it was built to fail; the good ones are all kept

    kept = kept_segments(config)
    assert set(kept[0]) == {"id", "url", "generation", "row_id", "row_hash"}
    kept_ids = {row["id"] for row in kept}
    assert len(kept) == len(kept_ids) == KEPT
    assert not kept_ids & set(CATEGORY_OF)
    assert set(DUPLICATE_OF.values()) <= kept_ids  # the originals

    # A finished pass is not run again: its files stay as they are.
    before = {path: folder.filesystem.get_file_info(path).mtime for path in folder.parquet_files(folder.segment_rows)}
    assert segment_pass(config)[0] == EXPECTED
    assert {path: folder.filesystem.get_file_info(path).mtime for path in before} == before


def test_each_rule_runs_once_per_row_it_reaches(tmp_path):
    config = load_config(WEB_DEMO).segments
    rules = RowRules(tuple(LoggedRule(rule, tmp_path / "calls") for rule in RowRules.from_config(config).rules))
    rows = read_sample().map_batches(rule_rows, fn_kwargs={"rules": rules, "config": config}, batch_format="pyarrow")
    assert rows.count() == 220
    calls = Counter((tmp_path / "calls").read_text().split())
    # A row reaches a rule when no rule before it removed the row.
    assert calls == {"Empty": 220, "Length": 216, "Uppercase": 198, "Boilerplate": 192, "Repetitive": 182}


def test_filter_without_duplicates_or_dedup(tmp_path):
    history = OTHER + (
        " Delegations from France, Sweden, Spain, the Dutch Republic and the many states of the Holy Roman Empire"
        " attended, and the settlement redrew borders, recognised Swiss independence and confirmed religious terms."
        " Envoys travelled for weeks to reach the towns, and questions of precedence delayed the opening sessions."
    )
    texts = [PROSE, PROSE.replace("flour", "meal"), "too short", history]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": text}) + "\n" for i, text in enumerate(texts)))
    # No duplicates at all (the meal/flour pair is ~0.77 similar, under 0.95): the dedup still runs.
    config = pass_config(tmp_path / "dedup", source, near_dup_threshold=0.95, num_partitions=2, min_chars=100)
    counts, folder = segment_pass(config)
    assert sorted(row["id"] for row in kept_segments(config)) == [0, 1, 3]
    assert counts["removed"]["too_short"] == 1 and counts["rows_in"] == 4 and counts["kept"] == 3
    assert folder.exists(folder.segment_duplicates)

    config = pass_config(tmp_path / "no-dedup", source, exact_dedup=False, near_dedup=False, min_chars=100)
    counts, folder = segment_pass(config)
    assert sorted(row["id"] for row in kept_segments(config)) == [0, 1, 3] and counts["kept"] == 3
    assert not folder.exists(folder.segment_duplicates)


COPIES = 30  # the sample 30 times over: 6,600 rows, several commits of the default 1,024


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_killed_pass_resumes_where_it_was_and_runs_the_rules_once_per_committed_row(where, s3, tmp_path):
    source = tmp_path / "corpus.jsonl"
    source.write_text(SAMPLE.read_text(encoding="utf-8") * COPIES, encoding="utf-8")
    rows_in = 220 * COPIES
    output = str(tmp_path / "out") if where == "local" else f"s3://{S3_BUCKET}/{tmp_path.name}/out"
    config = pass_config(output, source)  # the default commit size and dedup settings
    commit = config.output.commit_rows

    def run(calls: str) -> subprocess.Popen:
        argv = [sys.executable, "-m", "tests.segments.pass_driver", output, str(source), str(tmp_path / calls)]
        # Its own process group: the local Ray it starts dies with it.
        return subprocess.Popen(argv, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, text=True)

    def committed() -> int:
        return len(checkpointed_ids(output, "segment_checkpoint"))

    sigkill_when(run("first"), lambda: committed() >= 2 * commit)
    # The killed run's workers outlive its driver by a few seconds, and a write they had started may
    # still commit: the count is taken once it has stopped changing.
    committed_at_kill, since = committed(), time.time()
    while time.time() - since < 5:
        time.sleep(0.5)
        if (now := committed()) != committed_at_kill:
            committed_at_kill, since = now, time.time()
    ran_first = _lines(tmp_path / "first")
    second = run("second")
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0
    ran_second = _lines(tmp_path / "second")
    print(f"{where}: {rows_in} rows, commit {commit}: the first run ran the rules on {ran_first} and "
          f"committed {committed_at_kill}; the second ran them on {ran_second}")  # fmt: skip

    assert 2 * commit <= committed_at_kill < rows_in
    # The re-run ran the rules on exactly the rows not committed; the rows lost to the kill were at
    # most the blocks in flight then (a write's bundle and the blocks waiting for it).
    assert ran_second == rows_in - committed_at_kill
    assert ran_first - committed_at_kill <= 2 * commit
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts | {"removed": None} == {"rows_in": rows_in, "kept": KEPT, "removed": None, "skipped_lines": 0}
    written = _written(OutputFolder.at(output))
    assert len({row["row_hash"] for row in written}) == len(written) == rows_in  # every row once
    # The same segments as a pass that was never cut short.
    whole = pass_config(tmp_path / "whole", source)
    assert segment_pass(whole)[0] == counts
    assert {row["row_hash"] for row in kept_segments(config)} == {row["row_hash"] for row in kept_segments(whole)}
    assert not (tmp_path / "s3:").exists() and os.path.exists(source)


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_pass_counts_rows_removed_by_a_rule_and_by_dedup_apart(tmp_path):
    counts, folder = segment_pass(pass_config(tmp_path / "out"))
    rows = pq.ParquetDataset(folder.parquet_files(folder.segment_rows), filesystem=folder.filesystem).read()
    by_rule = pc.sum(pc.greater(rows[CODE_COLUMN], 0)).as_py()
    assert by_rule == sum(counts["removed"][reason] for reason in REASONS[:-2])
    assert counts["removed"]["exact_duplicate"] == 12 and counts["removed"]["near_duplicate"] == 8


def test_the_rules_write_blocks_of_1024_documents(tmp_path):
    # Ray Data's driver keeps the stats of every block to the end of the pass: the stages' blocks of
    # about 64 rows made its memory grow with the corpus (resources.RULES_BLOCK_ROWS).
    source = tmp_path / "corpus.jsonl"
    source.write_text(SAMPLE.read_text(encoding="utf-8") * 10, encoding="utf-8")  # 2,200 rows, one file
    counts, folder = segment_pass(pass_config(tmp_path / "out", source))  # the default segments: and commit size
    # The write commits bundles of at least `output.commit_rows` (1,024) rows, one shard each: with
    # 1,024-row blocks a shard is one block. (With the read's blocks of 128 KiB: 111, 1,043 and 1,046.)
    files = folder.parquet_files(folder.segment_rows)
    assert sorted(pq.read_metadata(path, filesystem=folder.filesystem).num_rows for path in files) == [152, 1024, 1024]
    assert counts["rows_in"] == 2200
