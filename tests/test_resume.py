"""Kill the job with SIGKILL half way, run it again: every row once, and few rows paid twice."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from backtrans.jsonl_datasource import row_id
from backtrans.prompts import SELF_CURATION, load_template, render
from backtrans.simulator import Simulator, SimulatorConfig
from tests.helpers import checkpointed_ids, sigkill_when, wait_until_quiet, write_pairs_jsonl, write_score_job

pytestmark = pytest.mark.integration  # runs the CLI, which starts a Ray

REPO = Path(__file__).resolve().parents[1]
ROWS = 400
SCORE_CONCURRENCY = 8
COMMIT_ROWS = 16


def _cli(config: Path, **popen):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(
        [sys.executable, "-m", "backtrans", "run", str(config)], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen,
    )  # fmt: skip


def _scoring_prompt_sha(row: int) -> str:
    prompt = render(
        load_template(SELF_CURATION), instruction=f"What is fact {row}?", generation=f"Fact {row} is a fact."
    )
    return hashlib.sha256(prompt.encode()).hexdigest()


def test_sigkill_then_rerun_writes_every_row_once(tmp_path):
    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", ROWS)
    output = tmp_path / "out"
    with Simulator(SimulatorConfig(latency_ms=150)) as sim:
        config = write_score_job(
            tmp_path / "job.yaml", source, output, sim.url, concurrency=SCORE_CONCURRENCY, commit_rows=COMMIT_ROWS
        )
        first = _cli(config, start_new_session=True)  # its own process group: the local Ray dies with it
        sigkill_when(first, lambda: len(checkpointed_ids(output)) >= ROWS * 0.4)
        wait_until_quiet(sim)
        sent_before_kill = sim.stats()["by_kind"]["score"]
        sent_in_first_run = {entry["prompt_sha256"] for entry in sim.log()}
        committed = checkpointed_ids(output)
        written_before_kill = len(committed)
        sim.reset()

        second = _cli(config)
        out, _ = second.communicate(timeout=300)
        assert second.returncode == 0, out[-3000:]
        total_score_requests = sent_before_kill + sim.stats()["by_kind"]["score"]
        second_run = [entry["prompt_sha256"] for entry in sim.log()]
        resent = set(second_run)

    table = pq.read_table(output / "data")
    assert table.num_rows == ROWS
    assert sorted(table.column("instruction").to_pylist()) == sorted(f"What is fact {i}?" for i in range(ROWS))
    assert 0 < written_before_kill < ROWS and sent_before_kill < ROWS
    paid_twice = total_score_requests - ROWS
    print(
        f"written before kill {written_before_kill}, requests before kill {sent_before_kill}, paid twice {paid_twice}"
    )
    # No row in a committed shard is sent again: Ray Data's checkpoint filter drops it after the read.
    committed_rows = [i for i in range(ROWS) if row_id(str(source), i + 1) in committed]
    assert len(committed_rows) == written_before_kill
    assert not resent & {_scoring_prompt_sha(i) for i in committed_rows}
    # Rows paid twice because of the kill: sent by the first run, not in a committed shard at the kill.
    in_flight_at_kill = sent_in_first_run - {_scoring_prompt_sha(i) for i in committed_rows}
    assert resent & sent_in_first_run <= in_flight_at_kill
    assert len(sent_in_first_run) == sent_before_kill  # the first run sent no row twice
    assert len(second_run) == len(resent)  # nor did the second
    print(f"rows in flight at the kill {len(in_flight_at_kill)}, re-sent {len(resent & sent_in_first_run)}")
    # The done-when bound of the resume issue: every row once, plus at most the rows in flight at the kill.
    assert total_score_requests <= ROWS + len(in_flight_at_kill)
    # The run committed shards of COMMIT_ROWS; the finished output is compacted to one 400-row shard.
    assert len(list((output / "data").glob("*.parquet"))) == 1 and not (output / ".compact").exists()


def _stage_actor_pids(stage_class: str) -> list[int]:
    """Ray names an actor's process `ray::MapWorker(MapBatches(CLASS))`; find them in /proc."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f"MapWorker(MapBatches({stage_class}))".encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            continue
    return pids


def test_a_killed_stage_actor_is_replaced_and_no_row_is_lost(tmp_path, local_ray):
    from backtrans.job import run_job
    from tests.helpers import score_only_config

    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", ROWS)
    with Simulator(SimulatorConfig(latency_ms=100)) as sim:
        config = score_only_config(source, tmp_path / "out", sim.url)
        config.output.columns = ["instruction", "score"]
        killed = []

        def kill_one_actor_part_way():
            deadline = time.time() + 240
            while sim.stats()["by_kind"]["score"] < ROWS // 4 and time.time() < deadline:
                time.sleep(0.05)
            if pids := _stage_actor_pids("ScoreStage"):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

        killer = threading.Thread(target=kill_one_actor_part_way)
        killer.start()
        run_job(config)
        killer.join()
        sent = sim.stats()["by_kind"]["score"]

    assert killed, "no ScoreStage actor process was found to kill"
    table = pq.read_table(tmp_path / "out" / "data")
    assert sorted(table.column("instruction").to_pylist()) == sorted(f"What is fact {i}?" for i in range(ROWS))
    assert None not in table.column("score").to_pylist()
    # Ray Data restarted the actor and re-ran its tasks: only the rows it held were asked again.
    held_by_one_actor = 3 * 64  # max_tasks_in_flight_per_actor blocks of ROWS_PER_TASK rows
    assert ROWS <= sent <= ROWS + held_by_one_actor
