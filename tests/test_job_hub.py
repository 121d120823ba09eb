"""The seed pipeline against the loopback fake Hub: read a split over hf://, push the result."""

import io
import json

import pyarrow.parquet as pq
import pytest

from backtrans.hub import PUSH_ATTEMPTS, HubError, PushFailed
from backtrans.job import run_job
from backtrans.simulator import Simulator, SimulatorConfig
from tests.helpers import SEED_COLUMNS, assert_scores_match_simulator, seed_config, write_instruction_jsonl

pytestmark = pytest.mark.usefixtures("local_ray")

SOURCE_REPO = "HuggingFaceH4/instruction-dataset"


def _jsonl(rows: int) -> bytes:
    lines = [
        json.dumps({"prompt": f"Question {i}: why is the sky blue?", "completion": "Rayleigh.", "meta": {"n": i}})
        for i in range(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


def _pushed_table(fake_hub, repo_id):
    files = fake_hub.files("datasets", repo_id)
    shards = sorted(path for path in files if path.startswith("data/"))
    tables = [pq.read_table(io.BytesIO(files[path])) for path in shards]
    return files, shards, tables


def test_reads_a_hub_split_and_pushes_shards(tmp_path, fake_hub):
    # The real dataset is a single step3-eval.jsonl that `datasets` resolves as the `test` split.
    fake_hub.create_repo("datasets", SOURCE_REPO)
    fake_hub.put_files("datasets", SOURCE_REPO, {"step3-eval.jsonl": _jsonl(300)})
    with Simulator(SimulatorConfig(latency_ms=2)) as sim:
        config = seed_config(f"hf://datasets/{SOURCE_REPO}", tmp_path / "out", sim.url)
        config.hub.repo_id = "fake-user/backtranslated"
        run_job(config)
        first_push = _pushed_table(fake_hub, "fake-user/backtranslated")

        config.output.mode = "overwrite"
        run_job(config)

    files, shards, tables = _pushed_table(fake_hub, "fake-user/backtranslated")
    assert "README.md" in files and "run_summary.json" in files
    assert shards and all(path.endswith(".parquet") for path in shards)
    assert len(shards) == len(first_push[1]) and set(shards).isdisjoint(first_push[1])  # replaced, not added
    rows = sum(table.num_rows for table in tables)
    assert rows == 300
    for table in tables:
        assert table.column_names == SEED_COLUMNS
        assert_scores_match_simulator(table)
    assert b'load_dataset("fake-user/backtranslated"' in files["README.md"]


def test_unknown_split_names_the_splits(tmp_path, fake_hub):
    fake_hub.create_repo("datasets", "someone/one-split")
    fake_hub.put_files("datasets", "someone/one-split", {"step3-eval.jsonl": _jsonl(3)})
    with Simulator(SimulatorConfig()) as sim:
        config = seed_config("hf://datasets/someone/one-split", tmp_path / "out", sim.url)
        config.source.split = "train"
        with pytest.raises(ValueError, match="source.split 'train' not found.*splits: test"):
            run_job(config)
        assert sim.stats()["total_requests"] == 0


def test_a_refused_hub_token_fails_before_any_request(tmp_path, fake_hub, monkeypatch):
    fake_hub.set_token("hf_revoked_token", None)
    monkeypatch.setenv("BACKTRANS_BAD_TOKEN", "hf_revoked_token")
    source = write_instruction_jsonl(tmp_path / "in.jsonl", rows=5)
    with Simulator(SimulatorConfig()) as sim:
        config = seed_config(str(source), tmp_path / "out", sim.url)
        config.hub.repo_id = "fake-user/never-pushed"
        config.hub.token_env = "BACKTRANS_BAD_TOKEN"
        with pytest.raises(HubError) as refused:
            run_job(config)
        assert sim.log() == [] and sim.stats()["model_list_requests"] == 0
    assert str(refused.value) == (
        "hub.token_env: the Hub refused the token in BACKTRANS_BAD_TOKEN (Invalid user token.)"
    )
    assert not (tmp_path / "out").exists()


def test_a_failed_push_is_done_by_the_next_run_without_model_requests(tmp_path, fake_hub):
    repo = "fake-user/pushed-on-rerun"
    source = write_instruction_jsonl(tmp_path / "in.jsonl", rows=20)
    with Simulator(SimulatorConfig(latency_ms=2)) as sim:
        config = seed_config(str(source), tmp_path / "out", sim.url)
        config.hub.repo_id = repo
        for _ in range(PUSH_ATTEMPTS):  # a 500 that outlasts the retries
            fake_hub.fail_next("POST", rf"/api/datasets/{repo}/commit/main", status=500)
        with pytest.raises(PushFailed) as failed:
            run_job(config)
        assert str(failed.value).startswith(f"hub: pushing to {repo} failed (")
        assert str(failed.value).endswith("the output is complete, run the same command again to push it")
        on_disk = json.loads((tmp_path / "out" / "run_summary.json").read_text())
        assert on_disk["complete"] is True and on_disk["pushed"] is None and on_disk["rows"] == 20
        sim.reset()

        again = run_job(config)
        assert sim.log() == [] and sim.stats()["total_requests"] == 0 and sim.stats()["model_list_requests"] == 0
        assert run_job(config).state == "skip"  # pushed to this repo: nothing left to do

    assert again.state == "push"
    commit = fake_hub.commits("datasets", repo)[0]
    assert again.summary.pushed.model_dump() == {"repo": repo, "commit": commit}
    on_disk = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert on_disk["pushed"] == {"repo": repo, "commit": commit} and on_disk["phases"]["push"] is not None
    files, shards, tables = _pushed_table(fake_hub, repo)
    assert sum(table.num_rows for table in tables) == 20
    assert json.loads(files["run_summary.json"])["pushed"] is None  # the repo's copy was written before the push
