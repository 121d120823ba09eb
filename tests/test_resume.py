"""Kill the job with SIGKILL half way, run it again: every row once, and few rows paid twice."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from backtrans.simulator import Simulator, SimulatorConfig
from tests.helpers import write_pairs_jsonl

REPO = Path(__file__).resolve().parents[1]
ROWS = 400
SCORE_CONCURRENCY = 8
ROWS_PER_FILE = 16


def _cli(config: Path, **popen):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(
        [sys.executable, "-m", "backtrans", "run", str(config)], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen,
    )  # fmt: skip


def _checkpointed_rows(output: Path) -> int:
    files = [p for p in (output / ".checkpoint").glob("*.parquet") if ".pending." not in p.name]
    return sum(pq.read_metadata(p).num_rows for p in files)


def test_sigkill_then_rerun_writes_every_row_once(tmp_path):
    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", ROWS)
    output = tmp_path / "out"
    with Simulator(SimulatorConfig(latency_ms=150)) as sim:
        config = tmp_path / "job.yaml"
        config.write_text(
            f"source: {{uri: {source}}}\n"
            f"score: {{backend: openai, base_url: '{sim.url}', model: judge, max_concurrency: {SCORE_CONCURRENCY}}}\n"
            f"output: {{path: {output}, min_rows_per_file: {ROWS_PER_FILE}, columns: [instruction, score]}}\n"
        )
        first = _cli(config, start_new_session=True)  # its own process group: the local Ray dies with it
        deadline = time.time() + 240
        while _checkpointed_rows(output) < ROWS * 0.4 and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.stdout.read()[-2000:]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        sent_before_kill = sim.stats()["by_kind"]["score"]
        written_before_kill = _checkpointed_rows(output)

        second = _cli(config)
        out, _ = second.communicate(timeout=300)
        assert second.returncode == 0, out[-3000:]
        total_score_requests = sim.stats()["by_kind"]["score"]

    table = pq.read_table(output / "data")
    assert table.num_rows == ROWS
    assert sorted(table.column("instruction").to_pylist()) == sorted(f"What is fact {i}?" for i in range(ROWS))
    assert 0 < written_before_kill < ROWS and sent_before_kill < ROWS
    paid_twice = total_score_requests - ROWS
    print(f"written before kill {written_before_kill}, requests before kill {sent_before_kill}, paid twice {paid_twice}")
    # Only rows that were sent but not yet in a committed shard when the driver died are sent again.
    assert 0 <= paid_twice <= sent_before_kill - written_before_kill
