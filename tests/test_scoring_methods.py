"""score.method end to end on a local Ray, through both backends against the simulator's weak judge.

The judge leaves the score line out of 30% of its plain replies (the same pairs every run); a JSON
request is always answered with a verdict; the token of a plain reply's score carries a known
distribution over 1..5 (`replies.score_probs`).
"""

import pytest

from backtrans.config import JobConfig
from backtrans.job import JobError, run_job
from backtrans.prompts import SELF_CURATION, SELF_CURATION_JSON, load_template, render
from backtrans.simulator import Simulator, SimulatorConfig
from backtrans.simulator.replies import prompt_digest, score_for_digest, score_probs, weak_judge_leaves_out_score
from tests.helpers import read_output, write_pairs_jsonl

pytestmark = pytest.mark.usefixtures("local_ray")

ROWS = 300
WEAK = 0.3
COLUMNS = ["instruction", "generation", "score", "reason", "score_expected", "score_probs", "error"]


@pytest.fixture(scope="module")
def simulator():
    with Simulator(SimulatorConfig(noscore_share=WEAK, keep_log=False)) as sim:
        yield sim


def _config(tmp_path, sim, backend, method, **sections):
    url = sim.url if backend == "openai" else sim.root_url
    score = {"backend": backend, "base_url": url, "model": "judge", "method": method, "max_concurrency": 16}
    tree = {
        "source": {"uri": str(write_pairs_jsonl(tmp_path / "pairs.jsonl", ROWS))},
        "score": score | {"max_retries": 2, "timeout_s": 10},
        "output": {"path": str(tmp_path / "out"), "columns": COLUMNS},
        **sections,
    }
    return JobConfig.model_validate(tree)


def _digest(row, method):
    template = load_template(SELF_CURATION_JSON if method == "json" else SELF_CURATION)
    return prompt_digest(render(template, instruction=row["instruction"], generation=row["generation"]))


def _weak(digest):
    return weak_judge_leaves_out_score(digest, WEAK)


@pytest.mark.parametrize("backend", ["openai", "hf-endpoint"])
def test_parse_reports_the_weak_judges_missing_score_lines_as_unparseable(tmp_path, simulator, backend):
    result = run_job(_config(tmp_path, simulator, backend, "parse"))

    rows = read_output(tmp_path / "out").to_pylist()
    missing = [row for row in rows if _weak(_digest(row, "parse"))]
    assert len(rows) == ROWS and 0.25 * ROWS < len(missing) < 0.35 * ROWS
    assert all(row["score"] is None and row["error"]["type"] == "unparseable_score" for row in missing)
    scored = [row for row in rows if not _weak(_digest(row, "parse"))]
    assert all(row["score"] == score_for_digest(_digest(row, "parse")) and row["error"] is None for row in scored)
    assert result.summary.failures_this_run == {"score": {"unparseable_score": len(missing)}}
    assert result.summary.unscored == {"unparseable_score": len(missing)}


@pytest.mark.parametrize("backend", ["openai", "hf-endpoint"])
def test_json_scores_every_pair(tmp_path, simulator, backend):
    result = run_job(_config(tmp_path, simulator, backend, "json"))

    rows = read_output(tmp_path / "out").to_pylist()
    assert len(rows) == ROWS
    for row in rows:
        assert row["score"] == score_for_digest(_digest(row, "json")) and row["error"] is None, row
        assert row["reason"].startswith("Simulated judge (not a real model): ")
    assert result.summary.unscored == {}


@pytest.mark.parametrize("backend", ["openai", "hf-endpoint"])
def test_logprobs_scores_every_pair_with_a_score_token_by_the_servers_distribution(tmp_path, simulator, backend):
    curation = {"subsets": {"a4": 4, "e45": {"min_expected": 4.5}}}
    result = run_job(_config(tmp_path, simulator, backend, "logprobs", curation=curation))

    rows = read_output(tmp_path / "out").to_pylist()
    assert len(rows) == ROWS
    expected_rows = 0
    for row in rows:
        digest = _digest(row, "logprobs")
        if _weak(digest):
            assert row["score"] is None and row["error"]["type"] == "unparseable_score", row
            continue
        probs = score_probs(digest)
        assert row["score_probs"] == pytest.approx(probs, abs=1e-6)
        assert row["score_expected"] == pytest.approx(sum((i + 1) * p for i, p in enumerate(probs)), abs=1e-6)
        assert row["score"] == score_for_digest(digest) and row["error"] is None
        expected_rows += row["score_expected"] >= 4.5
    histogram = result.summary.score_expected
    assert sum(histogram.values()) == ROWS and histogram["null"] == ROWS - sum(r["score"] is not None for r in rows)
    assert result.summary.curated.subsets["e45"] == expected_rows
    assert result.summary.curated.subsets["a4"] == sum((row["score"] or 0) >= 4 for row in rows)


def test_logprobs_against_a_server_without_logprobs_stops_at_the_first_reply(tmp_path):
    with (
        Simulator(SimulatorConfig(serve_logprobs=False, keep_log=False)) as sim,
        pytest.raises(JobError, match=r"score\.method logprobs: .* returned no logprobs"),
    ):
        run_job(_config(tmp_path, sim, "openai", "logprobs"))
