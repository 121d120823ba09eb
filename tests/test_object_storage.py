"""The job with `output.path: s3://...` against a loopback S3 server (moto_server) the tests start:
everything on the bucket, nothing on the local disk, a SIGKILL resumed, a push from the bucket."""

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import ray

from backtrans.job import run_job
from backtrans.simulator import Simulator, SimulatorConfig
from tests.helpers import score_only_config, wait_until_quiet, write_pairs_jsonl, write_score_job

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BUCKET = "backtrans-tests"
SECRET = "moto-secret-Zk29sQ"
ROWS = 40


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto_server on loopback, reached through AWS_ENDPOINT_URL, with a bucket; set before Ray
    starts, so that local Ray workers inherit it (the session's Ray is restarted for this module)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server"), "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path_factory.mktemp("moto") / "moto_server.log").open("w"),  # its request log, for a failure
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    filesystem = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    for _ in range(100):
        try:
            filesystem.create_dir(BUCKET)
            break
        except OSError:  # not listening yet
            time.sleep(0.1)
    ray.shutdown()
    yield filesystem
    ray.shutdown()
    server.terminate()
    server.wait()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _files(filesystem, prefix: str) -> list[str]:
    found = filesystem.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    return sorted(info.path.removeprefix(f"{BUCKET}/{prefix}/") for info in found if info.type == pafs.FileType.File)


def _instructions(filesystem, prefix: str) -> list[str]:
    return pq.read_table(f"{BUCKET}/{prefix}/data", filesystem=filesystem).column("instruction").to_pylist()


def test_seed_job_on_s3_then_a_rerun_that_does_nothing_then_a_push(s3, local_ray, tmp_path, monkeypatch, fake_hub):
    monkeypatch.chdir(tmp_path)
    source = write_pairs_jsonl(tmp_path / "in" / "pairs.jsonl", ROWS)
    with Simulator(SimulatorConfig(latency_ms=5)) as sim:
        config = score_only_config(source, tmp_path / "unused", sim.url)
        config.output.path = f"s3://{BUCKET}/seed"
        config.output.commit_rows = 8
        config.output.min_rows_per_file = 1000

        first = run_job(config)
        assert first.state == "fresh" and first.summary.rows == ROWS and sim.stats()["by_kind"]["score"] == ROWS
        sim.reset()
        assert run_job(config).state == "skip" and sim.stats()["total_requests"] == 0

        config.hub.repo_id = "fake-user/from-s3"
        fake_hub.fail_next("POST", r"/api/datasets/fake-user/from-s3/commit/main", status=412)  # a concurrent commit
        pushed = run_job(config)
        assert pushed.state == "push" and sim.stats()["total_requests"] == 0

    assert os.listdir(tmp_path) == ["in"]  # no local `s3:` folder, nothing else on the local disk
    written = _files(s3, "seed")
    assert {"README.md", "run_summary.json", "score_distribution.png"} <= set(written)
    assert sorted(_instructions(s3, "seed")) == sorted(f"What is fact {i}?" for i in range(ROWS))
    assert any(path.startswith(".checkpoint/") for path in written)
    assert any(path.startswith("curated/a4/") for path in written) and not any(".compact" in p for p in written)
    files = fake_hub.files("datasets", "fake-user/from-s3")
    shards = [path for path in files if path.startswith("data/")]
    assert sum(pq.read_table(io.BytesIO(files[path])).num_rows for path in shards) == ROWS
    assert {"README.md", "run_summary.json"} <= set(files)
    assert all(SECRET.encode() not in content for content in files.values())


def _checkpointed(filesystem, prefix: str) -> int:
    paths = [p for p in _files(filesystem, f"{prefix}/.checkpoint") if p.endswith(".parquet") and ".pending." not in p]
    return sum(pq.read_metadata(f"{BUCKET}/{prefix}/.checkpoint/{p}", filesystem=filesystem).num_rows for p in paths)


def test_sigkill_on_s3_then_a_rerun_writes_every_row_once(s3, tmp_path):
    rows = 200
    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", rows)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with Simulator(SimulatorConfig(latency_ms=150)) as sim:
        config = write_score_job(tmp_path / "job.yaml", source, "UNSET", sim.url, concurrency=8, commit_rows=16)
        config.write_text(config.read_text().replace("path: UNSET", f"path: 's3://{BUCKET}/killed'"))

        def cli(**popen):
            command = [sys.executable, "-m", "backtrans", "run", str(config)]
            return subprocess.Popen(command, cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)  # fmt: skip

        first = cli(start_new_session=True)  # its own process group: the local Ray dies with it
        deadline = time.time() + 300
        while _checkpointed(s3, "killed") < rows * 0.4 and first.poll() is None and time.time() < deadline:
            time.sleep(0.3)
        assert first.poll() is None, first.stdout.read()[-2000:]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        wait_until_quiet(sim)
        sent_before_kill = sim.stats()["by_kind"]["score"]
        committed = _checkpointed(s3, "killed")
        sim.reset()

        second = cli()
        out, _ = second.communicate(timeout=400)
        assert second.returncode == 0, out[-3000:]
        sent_after = sim.stats()["by_kind"]["score"]

    assert sorted(_instructions(s3, "killed")) == sorted(f"What is fact {i}?" for i in range(rows))
    assert 0 < committed < rows
    assert sent_after <= rows - committed  # no committed row is sent again
    assert SECRET not in out
    assert not (tmp_path / "s3:").exists()
    print(f"committed before the kill {committed}, requests before {sent_before_kill}, "
          f"paid twice {sent_before_kill + sent_after - rows}")  # fmt: skip
