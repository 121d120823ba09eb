"""The plan's CPU need against the cluster's: a config that cannot fit is refused before any request."""

import pytest

from backtrans.resources import IO_CPUS, OTHER_OPERATORS_CPUS, plan_cpus, stage_pool
from backtrans.simulator import Simulator
from tests.helpers import score_only_config, write_pairs_jsonl


def test_an_actor_holds_eight_rows_per_request_slot_of_its_share():
    # 4,096 in flight on one actor: 513 tasks of 64 rows side by side hold 32,832 rows, so that tasks
    # kept open by one slow row still leave 4,096 rows at the Gate.
    pool = stage_pool(4096, 1)["compute"]
    assert (pool.max_concurrent_calls_per_actor, pool.max_tasks_in_flight_per_actor) == (513, 514)
    pool = stage_pool(1024, 2)["compute"]  # a share of 512 each
    assert (pool.min_size, pool.max_size, pool.max_concurrent_calls_per_actor) == (2, 2, 65)
    assert plan_cpus({"generate": 1, "score": 1}) == pytest.approx(2 * IO_CPUS + OTHER_OPERATORS_CPUS)


def test_more_actors_than_the_cluster_has_cpus_for_is_refused_naming_the_key(tmp_path, local_ray):
    from backtrans.job import JobError, run_job

    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", 10)
    with Simulator() as sim:
        config = score_only_config(source, tmp_path / "out", sim.url, actors=32, max_concurrency=64)  # 3.2 CPUs
        with pytest.raises(JobError, match=r"^score\.actors: .* the cluster has 2;"):
            run_job(config)
        assert sim.stats()["total_requests"] == 0
    assert not (tmp_path / "out").exists()


def test_short_tasks_beside_whole_cpu_tasks_reuse_their_workers(local_ray):
    # Two tasks hold both CPUs while tiny ones run one after another, each after the last one's worker
    # has been idle for longer than Ray's 1 s: with Ray's default soft limit (the CPU count), each
    # tiny task would start a new worker process; the tests' Ray runs with `keep_idle_workers`, as
    # `backtrans run`'s local Ray does.
    import os
    import time

    import ray

    @ray.remote(num_cpus=1 - IO_CPUS)
    def hold(seconds: float) -> None:
        time.sleep(seconds)

    @ray.remote(num_cpus=IO_CPUS)
    def worker_pid() -> int:
        return os.getpid()

    held = [hold.remote(12) for _ in range(2)]
    pids = []
    for _ in range(5):
        pids.append(ray.get(worker_pid.remote()))
        time.sleep(1.5)
    ray.get(held)
    assert len(set(pids)) == 1, pids
