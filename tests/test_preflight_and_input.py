"""Fail fast before money is spent: pre-flight probes, bad input, malformed lines."""

import json

import pyarrow.parquet as pq
import pytest

from backtrans.backends import PreflightError
from backtrans.job import run_job
from backtrans.simulator import Simulator, SimulatorConfig
from tests.helpers import score_only_config, write_pairs_jsonl

pytestmark = pytest.mark.usefixtures("local_ray")
UNREACHABLE = "http://127.0.0.1:9/v1"  # the discard port: nothing listens on loopback


def test_unreachable_endpoint_fails_before_the_corpus_is_read(tmp_path, fake_hub):
    fake_hub.create_repo("datasets", "someone/corpus")
    fake_hub.put_files("datasets", "someone/corpus", {"step3-eval.jsonl": b'{"instruction": "a", "generation": "b"}\n'})
    fake_hub.clear_requests()
    config = score_only_config("hf://datasets/someone/corpus", tmp_path / "out", UNREACHABLE)
    config.source.split = "test"

    with pytest.raises(PreflightError, match=r"^score: cannot reach http://127.0.0.1:9/v1/models"):
        run_job(config)
    assert fake_hub.requests == []  # not even the split was resolved
    assert not (tmp_path / "out").exists()


def test_refused_key_and_unknown_model_name_the_stage(tmp_path, monkeypatch):
    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", 3)
    monkeypatch.setenv("JUDGE_KEY", "sk-wrong-key-000000")
    with Simulator(SimulatorConfig(api_key="sk-right-key-111111", models=["judge-model"])) as sim:
        config = score_only_config(source, tmp_path / "out", sim.url, api_key_env="JUDGE_KEY")
        with pytest.raises(PreflightError, match=r"^score: .*/models refused the key in JUDGE_KEY \(HTTP 401\)$"):
            run_job(config)
        monkeypatch.setenv("JUDGE_KEY", "sk-right-key-111111")
        config.score.model = "gpt-5"
        with pytest.raises(PreflightError, match=r"model 'gpt-5' is not served by .* \(served: judge-model\)"):
            run_job(config)
        assert sim.stats()["by_kind"]["score"] == 0


def test_empty_and_overlong_rows_fail_without_a_request(tmp_path):
    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", 12, long_rows=(5,), empty_rows=(2, 7))
    with Simulator(SimulatorConfig()) as sim:
        config = score_only_config(source, tmp_path / "out", sim.url, max_input_chars=5000)
        config.output.columns = ["instruction", "score", "error"]
        run_job(config)
        assert sim.stats()["by_kind"]["score"] == 9
    rows = pq.read_table(tmp_path / "out" / "data").to_pylist()
    failed = sorted((row["error"]["type"], row["error"]["message"].split(" ")[0]) for row in rows if row["error"])
    assert failed == [("bad_input", "generation"), ("bad_input", "instruction"), ("bad_input", "instruction")]
    assert all(row["error"]["attempts"] == 0 for row in rows if row["error"])


def test_malformed_jsonl_line_is_named_or_skipped(tmp_path):
    source = tmp_path / "pairs.jsonl"
    good = json.dumps({"instruction": "q", "generation": "a"})
    source.write_bytes(f"{good}\n{{not json\n{good}\n".encode() + b"\xff\xfe\n" + f"{good}\n".encode())
    with Simulator(SimulatorConfig()) as sim:
        config = score_only_config(source, tmp_path / "out", sim.url)
        config.output.columns = ["instruction", "score"]
        with pytest.raises(Exception, match=r"pairs.jsonl:2: malformed JSONL line"):
            run_job(config)
        config.source.bad_lines = "skip"
        config.output.mode = "overwrite"
        result = run_job(config)
    assert pq.read_table(tmp_path / "out" / "data").num_rows == 3
    assert result.summary["skipped_lines_this_run"] == 2
