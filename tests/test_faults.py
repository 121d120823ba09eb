"""Endpoint faults: every row ends up in the output once, and the simulator saw the requests we expect."""

import json

import pyarrow.parquet as pq
import pytest

from backtrans.job import JobError, run_job
from backtrans.schema import BacktransError
from backtrans.simulator import Simulator, SimulatorConfig
from tests.helpers import (
    assert_scores_match_simulator,
    score_only_config,
    seed_config,
    write_instruction_jsonl,
    write_pairs_jsonl,
)

pytestmark = pytest.mark.usefixtures("local_ray")
ROWS = 60
WITH_ERRORS = ["instruction", "generation", "score", "reason", "error"]


def _run(tmp_path, simulator_config, rows=ROWS, **score):
    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", rows)
    with Simulator(simulator_config) as sim:
        config = score_only_config(source, tmp_path / "out", sim.url, **score)
        config.output.columns = WITH_ERRORS
        result = run_job(config)
        return result, pq.read_table(tmp_path / "out" / "data"), sim.stats()


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        ({"rate_429": 0.3, "retry_after_s": 0.1}, "429"),
        ({"rate_503": 0.3}, "503"),
        ({"rate_500": 0.3}, "500"),
        ({"rate_drop": 0.3}, "drop"),
        ({"rate_garbage": 0.3}, "garbage"),
        ({"rate_hang": 0.1, "hang_s": 30}, "hang"),
    ],
)
def test_retried_faults_end_with_every_row_scored_once(tmp_path, fault, outcome):
    result, table, stats = _run(tmp_path, SimulatorConfig(seed=7, **fault), max_retries=8, timeout_s=1)

    assert table.num_rows == ROWS
    assert sorted(table.column("instruction").to_pylist()) == sorted(f"What is fact {i}?" for i in range(ROWS))
    assert table.column("error").null_count == ROWS
    assert_scores_match_simulator(table)
    faults = stats["by_outcome"][outcome]
    assert faults > 0
    assert stats["by_outcome"]["ok"] == ROWS  # exactly one successful request per row
    assert stats["total_requests"] == ROWS + faults  # every fault was retried once, nothing else was sent
    assert result.summary["stages"]["score"]["requests"] == ROWS + faults


def test_context_length_400_fails_the_row_at_once(tmp_path):
    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", 20, long_rows=(3, 11))
    with Simulator(SimulatorConfig(max_context_chars=8000)) as sim:
        config = score_only_config(source, tmp_path / "out", sim.url, max_input_chars=50_000)
        config.output.columns = WITH_ERRORS
        run_job(config)
        stats = sim.stats()
    rows = {row["instruction"]: row for row in pq.read_table(tmp_path / "out" / "data").to_pylist()}
    assert len(rows) == 20
    for i in (3, 11):
        failed = rows[f"What is fact {i}?"]
        assert failed["score"] is None
        assert failed["error"]["type"] == "http_400" and failed["error"]["attempts"] == 1
    assert stats["by_outcome"]["400"] == 2 and stats["total_requests"] == 20  # never retried


def test_exhausted_retries_keep_the_row_with_a_failure_record(tmp_path):
    result, table, stats = _run(tmp_path, SimulatorConfig(rate_503=1.0), rows=10, max_retries=2, failure_window=1000)
    assert table.num_rows == 10
    for row in table.to_pylist():
        assert row["score"] is None and row["reason"] is None
        assert row["error"] == {
            "stage": "score", "type": "http_503", "message": row["error"]["message"], "attempts": 3,
        }  # fmt: skip
    assert stats["total_requests"] == 30
    assert result.summary["failures_this_run"]["score"] == {"http_503": 10}


def test_reply_without_score_is_kept_raw_and_reasked_when_configured(tmp_path):
    result, table, stats = _run(tmp_path, SimulatorConfig(rate_noscore=1.0), rows=10)
    assert table.column("score").null_count == 10
    assert all("Score:" not in reason and reason for reason in table.column("reason").to_pylist())
    assert {row["error"]["type"] for row in table.to_pylist()} == {"unparseable_score"}
    assert stats["total_requests"] == 10

    (tmp_path / "again").mkdir()
    _, _, stats = _run(tmp_path / "again", SimulatorConfig(rate_noscore=1.0), rows=10, reask_unparseable=True)
    assert stats["total_requests"] == 20


def test_stage_down_mid_run_stops_the_job_instead_of_failing_every_row(tmp_path):
    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", 400)
    with Simulator(SimulatorConfig(rate_503=1.0)) as sim:
        config = score_only_config(source, tmp_path / "out", sim.url, max_retries=1, failure_window=20)
        with pytest.raises(JobError, match=r"score: \d+ of the last 20 requests failed"):
            run_job(config)
        assert sim.stats()["total_requests"] < 400  # stopped long before one request per row


def test_requests_per_minute_holds_across_actors(tmp_path):
    # The simulator enforces a real limit; the job's own limit keeps it from ever being hit.
    result, table, stats = _run(tmp_path, SimulatorConfig(rpm_limit=400), rows=40, requests_per_minute=360, actors=2)
    assert table.num_rows == 40
    assert stats["by_outcome"]["429"] == 0 and stats["total_requests"] == 40


def test_thousand_rows_under_mixed_faults(tmp_path):
    """Issue acceptance: 10% 429s, 10% 503s and 2% hangs; every row scored and present once."""
    source = write_instruction_jsonl(tmp_path / "in.jsonl", rows=1000)
    faults = SimulatorConfig(rate_429=0.10, rate_503=0.10, rate_hang=0.02, retry_after_s=0.2, hang_s=30, seed=3)
    with Simulator(faults) as sim:
        config = seed_config(str(source), tmp_path / "out", sim.url)
        for stage in (config.generate, config.score):
            stage.max_concurrency, stage.timeout_s, stage.max_retries = 32, 2, 10
        run_job(config)
        stats = sim.stats()
    table = pq.read_table(tmp_path / "out" / "data")
    assert table.num_rows == 1000
    assert len(set(table.column("instruction").to_pylist())) == 1000
    assert table.column("score").null_count == 0
    assert_scores_match_simulator(table)
    assert stats["by_outcome"]["ok"] == 2000
    assert stats["by_outcome"]["hang"] > 0 and stats["by_outcome"]["429"] > 0


def test_budget_stops_cleanly_with_a_summary_that_says_so(tmp_path):
    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", 200)
    with Simulator(SimulatorConfig(latency_ms=5)) as sim:
        config = score_only_config(source, tmp_path / "out", sim.url, max_requests=40, actors=2)
        with pytest.raises(JobError, match=r"score.max_requests reached .* run the same command again to resume"):
            run_job(config)
        assert sim.stats()["total_requests"] <= 40
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["complete"] is False and summary["stopped_by"] == "BudgetExhausted"
    assert summary["reason"].startswith("score.max_requests reached (")  # the stop the stage recorded
    assert (tmp_path / "out" / ".checkpoint").is_dir()


def test_re_runs_of_a_budget_stopped_output_never_spend_more_than_its_budget(tmp_path):
    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", 200)
    with Simulator(SimulatorConfig(latency_ms=5)) as sim:
        config = score_only_config(source, tmp_path / "out", sim.url, max_requests=40, actors=2)
        messages = []
        for _ in range(4):  # the first run stops; each re-run spends at most what is left, then none is
            with pytest.raises(BacktransError) as stopped:
                run_job(config)
            messages.append(str(stopped.value))
        assert sim.stats()["total_requests"] <= 40
    assert messages[-1] == (
        "score.max_requests: the budget of 40 is spent on this output (40 by earlier runs); "
        "raise score.max_requests to continue"
    )
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["spent"]["score"]["requests"] == 40
