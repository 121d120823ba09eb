"""The command-line contract: `backtrans run`, exit codes and one-line errors, `ray job submit`."""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from backtrans.simulator import Simulator, SimulatorConfig
from tests.helpers import (
    SEED_COLUMNS,
    assert_scores_match_simulator,
    checkpointed_ids,
    wait_until_quiet,
    write_instruction_jsonl,
    write_pairs_jsonl,
    write_score_job,
)

pytestmark = pytest.mark.integration  # runs the CLI, which starts a Ray

REPO = Path(__file__).resolve().parents[1]
DEMO_ROWS = sum(1 for line in (REPO / "jobs/data/demo_instructions.jsonl").open() if line.strip())


def _cli(*args, env=None, timeout=300):
    run_env = {**os.environ, **(env or {})}
    run_env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "backtrans", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=run_env,
        timeout=timeout,
    )


PROGRESS_LINE = re.compile(
    r"^backtrans: \d[\d,]*/(\d[\d,]*|\?) rows.* \| \w+ \d+\.\d req/s, \d+ in flight, [\d,]+ cached \| "
)
NOISE = ("core_worker.cc", "WARNING", "Progress will be logged", "Parquet dataset sampling", "row/s")


def _assert_readable_console(result) -> list[str]:
    """The first line names the log Ray's output went to; then progress lines and a few others; no
    Ray output. Returns the lines that are not progress lines."""
    lines = (result.stderr + result.stdout).splitlines()
    first = re.fullmatch(r"backtrans: Ray's logs: (\S+)( \(this run: (\S+)\))?", result.stderr.splitlines()[0])
    assert first, result.stderr[:2000]
    assert os.path.isfile(first.group(3) or first.group(1)), first.group(0)
    progress = [line for line in lines if PROGRESS_LINE.match(line)]
    others = [line for line in lines[1:] if line not in progress]
    assert progress, lines
    assert all(line.startswith("backtrans: ") for line in lines), lines
    assert not [line for line in lines if any(noise in line for noise in NOISE)], lines
    return others


def test_demo_writes_scored_parquet_and_says_it_is_simulated(tmp_path):
    result = _cli("run", "jobs/configs/demo.yaml", "--set", f"output.path={tmp_path / 'demo'}")

    assert result.returncode == 0, result.stderr[-2000:]
    assert len(_assert_readable_console(result)) <= 8, result.stderr + result.stdout
    assert f"backtrans: {DEMO_ROWS}/{DEMO_ROWS} rows (100%)" in result.stderr
    assert f"wrote {DEMO_ROWS} rows to {tmp_path / 'demo'}/data" in result.stdout
    assert "SIMULATED" in result.stdout
    table = pq.read_table(tmp_path / "demo" / "data")
    assert table.column_names == SEED_COLUMNS and table.num_rows == DEMO_ROWS
    assert_scores_match_simulator(table)
    assert "Simulated text." in (tmp_path / "demo" / "README.md").read_text()
    assert json.loads((tmp_path / "demo" / "run_summary.json").read_text())["simulated"] is True


def test_web_demo_runs_with_one_command_and_reports_filters_and_subsets(tmp_path):
    result = _cli("run", "jobs/configs/web_demo.yaml", "--set", f"output.path={tmp_path / 'web'}")

    assert result.returncode == 0, result.stderr[-2000:]
    _assert_readable_console(result)
    summary = json.loads((tmp_path / "web" / "run_summary.json").read_text())
    kept, subsets = summary["segments"]["kept"], summary["curated"]["subsets"]
    assert f"segments 220 in, {kept} kept" in result.stdout
    assert f"curated a4: {subsets['a4']} rows, a5: {subsets['a5']} rows" in result.stdout
    assert "SIMULATED" in result.stdout
    scores = pq.read_table(tmp_path / "web" / "data").column("score").to_pylist()
    assert len(scores) == kept and subsets["a5"] == scores.count(5)
    assert (tmp_path / "web" / "score_distribution.png").read_bytes().startswith(b"\x89PNG")


def test_a_run_that_stops_ends_with_its_one_line_error_and_nothing_of_ray_after_it(tmp_path):
    # A budget stops the score stage part way: the stages, their actors and Ray shut down after the error.
    result = _cli(
        "run", "jobs/configs/demo.yaml",
        "--set", f"output.path={tmp_path / 'demo'}", "--set", "score.max_requests=20",
    )  # fmt: skip

    assert result.returncode == 1
    assert result.stdout == ""
    last = result.stderr.splitlines()[-1]
    assert last.startswith("backtrans: error: score.max_requests reached"), result.stderr[-2000:]
    assert last.endswith("run the same command again to resume")
    assert len(_assert_readable_console(result)) == 1  # the error line


def test_bad_config_exits_2_naming_the_key(tmp_path):
    result = _cli("run", "jobs/configs/demo.yaml", "--set", "score.max_concurency=4")
    assert result.returncode == 2
    assert result.stderr.strip() == "backtrans: error: config key score.max_concurency: unknown key"


def test_missing_instruction_column_fails_before_any_request(tmp_path):
    source = write_instruction_jsonl(tmp_path / "in.jsonl", rows=5)  # has `prompt`, and no rename below
    with Simulator(SimulatorConfig()) as sim:
        result = _cli(
            "run", "jobs/configs/demo.yaml",
            "--set", f"source.uri={source}", "--set", "source.rename={}",
            "--set", "generate.backend=openai", "--set", f"generate.base_url={sim.url}",
            "--set", "score.backend=openai", "--set", f"score.base_url={sim.url}",
            "--set", f"output.path={tmp_path / 'out'}",
        )  # fmt: skip
        assert sim.stats()["total_requests"] == 0
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("backtrans: error: column 'instruction' is missing from")
    assert "columns: prompt, completion, meta" in last
    assert not (tmp_path / "out" / "data").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _submit(dashboard: int, env: dict, *entrypoint: str, options: tuple[str, ...] = ()):
    for _ in range(36):  # the head's job agent may still be starting: Ray says "try again later"
        submit = subprocess.run(
            ["ray", "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", str(REPO),
             *options, "--", "python", *entrypoint],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if "No available agent" not in submit.stdout + submit.stderr:
            return submit
        time.sleep(5)
    return submit


@pytest.mark.skipif(shutil.which("ray") is None, reason="the ray CLI comes with ray[default]")
def test_ray_job_submit_against_a_local_head_and_resume_after_ray_job_stop(tmp_path):
    ray.shutdown()  # one Ray per machine here: the session's local Ray restarts on demand afterwards
    # Ray 2.60 heads use token auth; the head, `ray job` and the job's driver all read this token.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    dashboard = _free_port()
    address = ["--address", f"http://127.0.0.1:{dashboard}"]
    start = ["ray", "start", "--head", f"--port={_free_port()}", f"--dashboard-port={dashboard}", "--num-cpus=2"]
    subprocess.run([*start, "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=180)
    rows, output = 300, tmp_path / "stopped"
    try:
        demo = _submit(dashboard, env, "jobs/self_curation.py", "jobs/configs/demo.yaml",
                       "--set", f"output.path={tmp_path / 'out'}")  # fmt: skip

        # A second job, stopped with `ray job stop` part way, then submitted again. It is slow on purpose
        # (about 40 s of requests) so that the stop lands well before it ends, even on a fast machine.
        with Simulator(SimulatorConfig(latency_ms=500)) as sim:
            source = write_pairs_jsonl(tmp_path / "pairs.jsonl", rows)
            config = write_score_job(tmp_path / "job.yaml", source, output, sim.url, concurrency=4, commit_rows=16)
            first = _submit(dashboard, env, "jobs/self_curation.py", str(config),
                            options=("--no-wait", "--submission-id", "backtrans-stopped"))  # fmt: skip
            assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
            deadline = time.time() + 300
            while len(checkpointed_ids(output)) < rows * 0.3 and time.time() < deadline:
                time.sleep(0.2)
            stop = subprocess.run(["ray", "job", "stop", *address, "backtrans-stopped"],
                                  env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
            assert stop.returncode == 0, stop.stdout[-2000:] + stop.stderr[-2000:]
            wait_until_quiet(sim)
            committed = len(checkpointed_ids(output))
            sent_before = sim.stats()["by_kind"]["score"]
            sim.reset()
            second = _submit(dashboard, env, "jobs/self_curation.py", str(config))
            sent_after = sim.stats()["by_kind"]["score"]
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "succeeded" in demo.stdout + demo.stderr
    assert pq.read_table(tmp_path / "out" / "data").num_rows == DEMO_ROWS

    assert 0 < committed < rows, committed
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    instructions = pq.read_table(output / "data").column("instruction").to_pylist()
    assert sorted(instructions) == sorted(f"What is fact {i}?" for i in range(rows))
    # Rows not written before the stop come from the reply cache or are sent again; only what was in
    # flight at the stop (at most 2 x max_concurrency) is paid for twice.
    summary = json.loads((output / "run_summary.json").read_text())
    assert sent_after + summary["stages"]["score"]["cache_hits"] == rows - committed
    assert sent_before >= committed and sent_before + sent_after <= rows + 2 * 4


def test_submit_fails_in_one_line_without_its_key_or_its_cluster(tmp_path):
    config = write_score_job(tmp_path / "job.yaml", tmp_path / "in.jsonl", "s3://bucket/out", "http://127.0.0.1:9/v1",
                             api_key_env="BACKTRANS_NOT_SET_KEY")  # fmt: skip
    address = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    result = _cli("submit", str(config), "--address", address)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "backtrans: error: score.api_key_env: environment variable BACKTRANS_NOT_SET_KEY is not set"
    )
    # With the key set, the unreachable dashboard is one line too, and the key is not in it.
    result = _cli("submit", str(config), "--address", address, env={"BACKTRANS_NOT_SET_KEY": "sk-submit-Zx81kQ"})
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("backtrans: error: ") and "sk-submit-Zx81kQ" not in result.stdout + result.stderr


def test_submit_packs_the_keys_the_config_names():
    from backtrans.config import JobConfig
    from backtrans.submit import key_names

    stage = {"backend": "openai", "model": "m"}
    config = JobConfig.model_validate({
        "source": {"uri": "x.jsonl"}, "generate": {**stage, "api_key_env": "GEN_KEY"},
        "score": {**stage, "api_key_env": "JUDGE_KEY"}, "hub": {"repo_id": "me/data"},
    })  # fmt: skip
    assert key_names(config) == {"generate.api_key_env": "GEN_KEY", "score.api_key_env": "JUDGE_KEY",
                                 "hub.token_env": "HF_TOKEN"}  # fmt: skip
