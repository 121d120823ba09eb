"""The job with `output.path: s3://...` against the loopback S3 server conftest.py starts: everything
on the bucket, nothing on the local disk, a re-run that does nothing, a push from the bucket. (A SIGKILL
and a resume on the bucket: tests/test_cache.py.)"""

import io
import os

import pyarrow.parquet as pq
import pytest

from backtrans.config import SourceConfig
from backtrans.job import run_job
from backtrans.simulator import Simulator, SimulatorConfig
from backtrans.sources import resolve_files
from tests.helpers import S3_BUCKET, S3_SECRET, files_under, read_output, score_only_config, write_pairs_jsonl

pytestmark = pytest.mark.integration

ROWS = 40


def test_seed_job_on_s3_then_a_rerun_that_does_nothing_then_a_push(s3, local_ray, tmp_path, monkeypatch, fake_hub):
    monkeypatch.chdir(tmp_path)
    # The corpus is on the bucket too, in 4 files: a folder URI is listed into its files, each a read task.
    lines = write_pairs_jsonl(tmp_path / "in" / "pairs.jsonl", ROWS).read_text().splitlines(keepends=True)
    source = f"s3://{S3_BUCKET}/{tmp_path.name}/corpus/"
    for shard in range(4):
        with s3.open_output_stream(f"{S3_BUCKET}/{tmp_path.name}/corpus/part-{shard}.jsonl") as f:
            f.write("".join(lines[shard::4]).encode())
    assert len(resolve_files(SourceConfig(uri=source)).paths) == 4
    prefix = f"{tmp_path.name}/seed"
    with Simulator(SimulatorConfig(latency_ms=5)) as sim:
        config = score_only_config(source, tmp_path / "unused", sim.url)
        config.output.path = f"s3://{S3_BUCKET}/{prefix}"

        first = run_job(config)
        assert first.state == "fresh" and first.summary.rows == ROWS and sim.stats()["by_kind"]["score"] == ROWS
        sim.reset()
        assert run_job(config).state == "skip" and sim.stats()["total_requests"] == 0

        config.hub.repo_id = "fake-user/from-s3"
        fake_hub.fail_next("POST", r"/api/datasets/fake-user/from-s3/commit/main", status=412)  # a concurrent commit
        pushed = run_job(config)
        assert pushed.state == "push" and sim.stats()["total_requests"] == 0

    assert os.listdir(tmp_path) == ["in"]  # no local `s3:` folder, nothing else on the local disk
    written = files_under(config.output.path)
    assert {"README.md", "run_summary.json", "score_distribution.png"} <= set(written)
    assert sorted(read_output(config.output.path).column("instruction").to_pylist()) == sorted(
        f"What is fact {i}?" for i in range(ROWS)
    )
    assert any(path.startswith(".checkpoint/") for path in written)
    assert any(path.startswith("curated/a4/") for path in written)
    assert not any(path.startswith((".compact/", ".cache/")) for path in written)  # done with, and dropped
    files = fake_hub.files("datasets", "fake-user/from-s3")
    shards = [path for path in files if path.startswith("data/")]
    assert sum(pq.read_metadata(io.BytesIO(files[path])).num_rows for path in shards) == ROWS
    assert {"README.md", "run_summary.json"} <= set(files)
    assert all(S3_SECRET.encode() not in content for content in files.values())
