"""The progress line and the spend, from constructed snapshots: no Ray."""

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backtrans.config import JobConfig, PriceConfig, SourceConfig
from backtrans.metrics import RunSnapshot, StageCounts, spend, stage_prices
from backtrans.output import OutputFolder
from backtrans.progress import (
    ProgressLine,
    RequestRates,
    _SegmentRulesLine,
    format_count,
    format_duration,
    rows_total,
    rows_written_before,
)
from backtrans.sources import resolve_files


def _snapshot() -> RunSnapshot:
    return RunSnapshot(
        stages={
            "generate": StageCounts(
                rows=1300, requests=1320, retries=12, prompt_tokens=400_000, completion_tokens=500_000,
                failures=Counter({"http_503": 2}), cache_hits=1200,
            ),
            "score": StageCounts(
                rows=1234, requests=1240, retries=0, prompt_tokens=250_000, completion_tokens=50_000,
                failures=Counter({"unparseable_score": 1, "http_503": 1}),
            ),
        },
        in_flight={"generate": 64, "score": 63},
    )  # fmt: skip


PRICES = {"generate": PriceConfig(input=0.5, output=1.0), "score": PriceConfig(input=1.0, output=2.0)}


def test_line_with_total_eta_rates_failures_tokens_and_spend():
    line = ProgressLine(("generate", "score"), rows_total=8000, prices=PRICES)
    text = line.render(_snapshot(), elapsed_s=30.0, request_rates={"generate": 41.23, "score": 40.8})
    assert text == (
        "backtrans: 1,234/8,000 rows (15%), ETA 2m45s | generate 41.2 req/s, 64 in flight, 1,200 cached"
        " | score 40.8 req/s, 63 in flight, 0 cached | retries 12, failures http_503: 3, unparseable_score: 1"
        " | 1.2M tokens, spend 1.05"
    )


def test_unknown_total_has_no_eta_and_no_prices_no_spend():
    line = ProgressLine(("generate", "score"))
    text = line.render(_snapshot(), elapsed_s=30.0, request_rates={})
    assert text == (
        "backtrans: 1,234/? rows | generate 0.0 req/s, 64 in flight, 1,200 cached"
        " | score 0.0 req/s, 63 in flight, 0 cached"
        " | retries 12, failures http_503: 3, unparseable_score: 1 | 1.2M tokens"
    )


def test_before_any_row_and_a_stage_not_reported_yet():
    line = ProgressLine(("augment", "score"), rows_total=60)
    text = line.render(RunSnapshot(), elapsed_s=3.0, request_rates={})
    assert text == (
        "backtrans: 0/60 rows (0%) | augment 0.0 req/s, 0 in flight, 0 cached | score 0.0 req/s, 0 in flight, 0 cached"
        " | retries 0, failures 0 | 0 tokens"
    )


def test_a_resume_counts_rows_written_before_and_its_eta_uses_this_runs_rate():
    line = ProgressLine(("score",), rows_total=2000, rows_before=500)
    snapshot = RunSnapshot(stages={"score": StageCounts(rows=500, requests=500, prompt_tokens=900)})
    text = line.render(snapshot, elapsed_s=50.0, request_rates={"score": 10.0})
    assert text == (
        "backtrans: 1,000/2,000 rows (50%), ETA 1m40s | score 10.0 req/s, 0 in flight, 0 cached"
        " | retries 0, failures 0 | 900 tokens"
    )


def test_a_finished_run_shows_no_eta_and_a_tiny_spend_is_not_zero():
    line = ProgressLine(("score",), rows_total=60, prices={"score": PriceConfig(input=0.1, output=0.1)})
    snapshot = RunSnapshot(stages={"score": StageCounts(rows=60, requests=60, prompt_tokens=9000)})
    text = line.render(snapshot, elapsed_s=12.0, request_rates={"score": 5.0})
    assert text == (
        "backtrans: 60/60 rows (100%) | score 5.0 req/s, 0 in flight, 0 cached | retries 0, failures 0"
        " | 9.0k tokens, spend <0.01"
    )


def test_spend_is_prices_times_tokens_and_none_without_a_price():
    stage = {"backend": "simulated", "model": "m"}
    priced = JobConfig.model_validate(
        {
            "source": {"uri": "x.jsonl"},
            "generate": {**stage, "price": {"input": 0.5, "output": 1.0}},
            "score": {**stage, "price": {"input": 1.0, "output": 2.0}},
        }
    )
    assert stage_prices(priced) == PRICES
    assert spend(_snapshot(), stage_prices(priced)) == pytest.approx(0.2 + 0.5 + 0.25 + 0.1)
    assert spend(RunSnapshot(), stage_prices(priced)) == 0
    unpriced = JobConfig.model_validate({"source": {"uri": "x.jsonl"}, "score": stage})
    assert stage_prices(unpriced) == {} and spend(_snapshot(), stage_prices(unpriced)) is None


def test_request_rates_over_the_window():
    rates = RequestRates(started=100.0)
    assert rates.add(105.0, RunSnapshot(stages={"score": StageCounts(requests=50)})) == {"score": 10.0}
    assert rates.add(110.0, RunSnapshot(stages={"score": StageCounts(requests=150)})) == {"score": 15.0}
    # 10 s on, the first poll leaves the window: the rate is over the last 10 s only
    assert rates.add(115.0, RunSnapshot(stages={"score": StageCounts(requests=170)})) == {"score": 12.0}


def test_formats():
    assert [format_count(n) for n in (0, 999, 1000, 1234, 1_234_567, 2_500_000_000)] == [
        "0", "999", "1.0k", "1.2k", "1.2M", "2.5B",
    ]  # fmt: skip
    assert [format_duration(s) for s in (0.2, 59, 60, 192, 3599, 3600, 7500)] == [
        "1s", "59s", "1m00s", "3m12s", "59m59s", "1h00m", "2h05m",
    ]  # fmt: skip


def test_rows_total_counts_jsonl_lines_and_applies_the_limit(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"instruction": f"q{i}"}) + "\n" for i in range(7)) + "\n\n")
    config = JobConfig.model_validate({"source": {"uri": str(source)}, "score": {"backend": "simulated", "model": "m"}})
    folder = OutputFolder.at(str(tmp_path / "out"))
    assert rows_total(config, folder, resolve_files(config.source)) == 7
    limited = config.model_copy(update={"source": config.source.model_copy(update={"limit": 5})})
    assert rows_total(limited, folder, resolve_files(limited.source)) == 5
    assert rows_written_before(folder) == 0  # no checkpoint yet


def _checkpoint_file(folder: OutputFolder, name: str, rows: int) -> None:
    """A checkpoint file of `rows` ids in an attempt's folder, e.g. `attempt-0000/a.parquet`."""
    attempt, _ = name.split("/")
    folder.filesystem.create_dir(f"{folder.segment_checkpoint}/{attempt}", recursive=True)
    table = pa.table({"row_hash": pa.array(range(rows), pa.uint64())})
    pq.write_table(table, f"{folder.segment_checkpoint}/{name}", filesystem=folder.filesystem)


def test_the_segment_pass_line_counts_the_documents_committed_of_the_source(tmp_path, monkeypatch):
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(10)))
    config = SourceConfig(uri=str(source))
    folder = OutputFolder.at(str(tmp_path / "out"))
    _checkpoint_file(folder, "attempt-0000/a.parquet", 4)  # an earlier run committed 4 documents
    _checkpoint_file(folder, "attempt-0000/b.pending.parquet", 3)  # not committed: its write was cut short
    clock = iter([100.0, 110.0, 130.0])
    monkeypatch.setattr("backtrans.progress.time.monotonic", lambda: next(clock))
    line = _SegmentRulesLine(config, folder, resolve_files(config), folder.segment_checkpoint)
    line.count_source()
    assert line(final=False) == "backtrans: segments: rules on 4/10 documents, 0/s"
    _checkpoint_file(folder, "attempt-0001/c.parquet", 3)
    assert line(final=False) == "backtrans: segments: rules on 7/10 documents (70%), ETA 30s, 0/s"
