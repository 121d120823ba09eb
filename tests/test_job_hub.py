"""The seed pipeline against the loopback fake Hub: read a split over hf://, push the result."""

import io
import json

import pyarrow.parquet as pq
import pytest

from backtrans.job import run_job
from backtrans.simulator import Simulator, SimulatorConfig
from tests.helpers import SEED_COLUMNS, assert_scores_match_simulator, seed_config

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
