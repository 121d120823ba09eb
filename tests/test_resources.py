"""The plan's CPU need against the cluster's: a config that cannot fit is refused before any request."""

import pytest

from backtrans.resources import IO_CPUS, OTHER_OPERATORS_CPUS, busy_actors, default_actors, plan_cpus, stage_pool
from backtrans.simulator import Simulator
from tests.helpers import score_only_config, write_pairs_jsonl


def test_an_actor_holds_four_rows_per_request_slot_of_its_share():
    # 4,096 in flight on one actor: 257 tasks of 64 rows side by side hold 16,448 rows, so that tasks
    # kept open by one slow row still leave 4,096 rows at the Gate.
    pool = stage_pool(4096, 1)["compute"]
    assert (pool.max_concurrent_calls_per_actor, pool.max_tasks_in_flight_per_actor) == (257, 258)
    pool = stage_pool(1024, 2)["compute"]  # a share of 512 each
    assert (pool.min_size, pool.max_size, pool.max_concurrent_calls_per_actor) == (2, 2, 33)
    assert plan_cpus({"generate": 1, "score": 1}) == pytest.approx(2 * IO_CPUS + OTHER_OPERATORS_CPUS)


@pytest.mark.parametrize(
    ("max_concurrency", "requests_per_minute", "cluster_cpus", "stages", "actors"),
    [
        (32, None, 2, 2, 1),  # the default max_concurrency: 8 requests/s
        (1024, None, 64, 2, 1),  # 256 requests/s x 3 ms: 0.96 of one actor's 0.8 of a core
        (4096, None, 64, 2, 4),  # 1,024 requests/s: 3.1 CPUs
        (4096, None, 2, 2, 1),  # a 2-core laptop: one actor per stage, whatever the need
        (16384, None, 8, 2, 3),  # 8 CPUs less 1.2 for the other operators, over 2 stages
        (4096, 6000, 64, 2, 1),  # the rate limit bounds it: 100 requests/s
        (3, None, 64, 1, 1),
    ],
)
def test_a_stage_without_actors_gets_as_many_as_its_cpu_need(
    max_concurrency, requests_per_minute, cluster_cpus, stages, actors
):
    assert default_actors(max_concurrency, requests_per_minute, cluster_cpus, stages) == actors


def test_actors_that_used_more_than_their_share_of_a_core_say_how_many_would_not():
    assert busy_actors(actors=1, cpu_s=90, seconds=100) == 2
    assert busy_actors(actors=2, cpu_s=170, seconds=100) == 3
    assert busy_actors(actors=1, cpu_s=50, seconds=100) is None
    assert busy_actors(actors=1, cpu_s=5, seconds=0) is None


def test_4096_in_flight_with_default_actors_runs_on_two_cores_and_measures_its_cpu(tmp_path, local_ray):
    from backtrans.job import run_job

    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", 300)
    with Simulator() as sim:
        result = run_job(score_only_config(source, tmp_path / "out", sim.url, max_concurrency=4096))
        assert sim.stats()["total_requests"] == 300
    score = result.summary.stages["score"]
    assert (result.summary.complete, result.summary.rows, score.requests, score.actors) == (True, 300, 300, 1)
    assert score.cpu_s > 0


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
