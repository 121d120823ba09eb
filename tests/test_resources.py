"""The plan's CPU need against the cluster's: a config that cannot fit is refused before any request."""

import pytest

from backtrans.resources import IO_CPUS, OTHER_OPERATORS_CPUS, plan_cpus, stage_pool
from backtrans.simulator import Simulator
from tests.helpers import score_only_config, write_pairs_jsonl


def test_one_actor_holds_its_whole_share_in_flight():
    # 4,096 in flight on one actor: Ray Data runs enough tasks of 64 rows side by side in it.
    pool = stage_pool(4096, 1)["compute"]
    assert pool.max_concurrent_calls_per_actor * 64 >= 4096
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
