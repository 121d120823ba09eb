"""The reply cache (backtrans/cache.py): what its key holds, that replies survive the actor, and the
pay-once rules of whole runs, counted in the simulator's request log."""

import hashlib
import json
import tracemalloc

import pytest

from backtrans.backends import Reply
from backtrans.cache import ReplyCache, compact, load_replies, request_key, stage_dir
from backtrans.config import StageConfig, load_config
from backtrans.output import OutputFolder
from backtrans.prompts import SELF_CURATION, load_template, render
from backtrans.simulator import Simulator, SimulatorConfig
from tests.helpers import (
    S3_BUCKET,
    S3_SECRET,
    checkpointed_ids,
    read_output,
    score_only_config,
    seed_config,
    sigkill_when,
    wait_until_quiet,
    write_instruction_jsonl,
    write_pairs_jsonl,
    write_score_job,
)
from tests.test_resume import _cli

ROWS = 400
CONCURRENCY = 8  # the score stage's max_concurrency in the library-level runs below


def _stage(**changes) -> StageConfig:
    return StageConfig(**{"backend": "openai", "model": "judge", **changes})


def test_the_key_holds_what_is_asked_and_not_how_it_is_paced():
    key = request_key("score", _stage(), "prompt")
    paced = _stage(max_concurrency=4096, actors=3, max_retries=0, base_url="http://127.0.0.1:1/v1")
    assert key == request_key("score", paced, "prompt")
    assert key != request_key("generate", _stage(), "prompt")
    assert key != request_key("score", _stage(model="judge-2"), "prompt")
    assert key != request_key("score", _stage(generation_kwargs={"temperature": 0.7}), "prompt")
    assert key != request_key("score", _stage(), "prompt 2")
    assert key != request_key("score", _stage(), "prompt", ask=2)  # a re-asked prompt is another request


def test_replies_are_written_every_share_of_concurrency_and_load_in_a_new_actor(tmp_path):
    folder = OutputFolder.at(str(tmp_path))
    cache = ReplyCache(folder, "score", _stage(), flush_rows=2)
    replies = {cache.key(f"p{i}"): Reply(f"r{i}", 3, 4, "stop") for i in range(5)}
    for key, reply in replies.items():
        cache.put(key, reply)
    # Two shards of two; the fifth reply waits for the next flush (at most flush_rows - 1 unwritten).
    assert len(folder.parquet_files(stage_dir(folder, "score"))) == 2
    assert len(load_replies(folder, "score")) == 4
    cache.flush()
    assert load_replies(folder, "score") == replies
    assert ReplyCache(folder, "score", _stage(), flush_rows=2).get(cache.key("p4")) == Reply("r4", 3, 4, "stop")
    compact(folder, "score")
    assert len(folder.parquet_files(stage_dir(folder, "score"))) == 1 and load_replies(folder, "score") == replies


def test_an_actor_keeps_the_keys_not_the_text_of_the_replies_it_wrote(tmp_path):
    folder = OutputFolder.at(str(tmp_path))
    cache = ReplyCache(folder, "generate", _stage(), flush_rows=100)
    text = "x" * 10_000
    tracemalloc.start()
    for i in range(2_000):  # 20 MB of reply text, written in 20 shards
        cache.put(cache.key(f"p{i}"), Reply(f"{i} {text}", 3, 4, "stop"))
    held_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    assert held_mb < 2, held_mb
    # A prompt asked again in the same run is still answered from the cache: its shard is read.
    assert cache.get(cache.key("p7")) == Reply(f"7 {text}", 3, 4, "stop")
    assert cache.get(cache.key("p1999")) == Reply(f"1999 {text}", 3, 4, "stop")
    assert cache.get(cache.key("p2000")) is None


def _prompt(row: int) -> str:
    return render(load_template(SELF_CURATION), instruction=f"What is fact {row}?", generation=f"Fact {row} is a fact.")


def _cached_rows(output: str, stage: StageConfig, rows: int) -> set[int]:
    """The rows whose scoring reply is in the output's cache."""
    cached = load_replies(OutputFolder.at(output), "score")
    return {i for i in range(rows) if request_key("score", stage, _prompt(i)) in cached}


def _sent_rows(sim, rows: int) -> set[int]:
    """The rows whose scoring prompt the simulator's log holds."""
    sent = {entry["prompt_sha256"] for entry in sim.log()}
    return {i for i in range(rows) if hashlib.sha256(_prompt(i).encode()).hexdigest() in sent}


@pytest.mark.integration  # runs the CLI, which starts a Ray
@pytest.mark.parametrize("where", ["local", "s3"])
def test_sigkill_with_the_default_config_then_rerun_pays_only_for_what_was_in_flight(where, s3, tmp_path):
    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", ROWS)
    output = str(tmp_path / "out") if where == "local" else f"s3://{S3_BUCKET}/{tmp_path.name}/out"
    folder = OutputFolder.at(output)
    # Requests take seconds, as a real API's do; the concurrency and the commit size are the defaults,
    # so no shard of this run is committed before it ends.
    with Simulator(SimulatorConfig(latency_ms=1000)) as sim:
        config = write_score_job(tmp_path / "job.yaml", source, output, sim.url)
        concurrency = load_config(config).score.max_concurrency
        first = _cli(config, start_new_session=True)  # its own process group: the local Ray dies with it
        sigkill_when(first, lambda: sim.stats()["by_kind"]["score"] >= ROWS * 0.4)
        wait_until_quiet(sim)
        sent_first = sim.stats()["by_kind"]["score"]
        committed = checkpointed_ids(output)
        cached = _cached_rows(output, load_config(config).score, ROWS)
        sim.reset()

        second = _cli(config)
        out, _ = second.communicate(timeout=300)
        assert second.returncode == 0, out[-3000:]
        sent_again = _sent_rows(sim, ROWS)
        sent_second = sim.stats()["by_kind"]["score"]

    paid_twice = sent_first + sent_second - ROWS
    print(f"{where}: N={ROWS} C={concurrency}: first run {sent_first} requests, {len(cached)} replies cached "
          f"at the kill, {len(committed)} rows committed; second run {sent_second} requests; "
          f"paid twice {paid_twice}")  # fmt: skip
    assert ROWS * 0.4 <= sent_first < ROWS and cached
    # Every row not cached at the kill is sent once, and no cached row again (committed rows are not read).
    assert sent_second <= ROWS - len(cached)
    assert len(sent_again) == sent_second and not sent_again & cached
    # The pay-once bound: at most the requests in flight at the kill, plus the finished replies not yet
    # written (fewer than an actor's share of max_concurrency), are paid twice.
    assert sent_first + sent_second <= ROWS + 2 * concurrency
    table = read_output(output)
    assert sorted(table.column("instruction").to_pylist()) == sorted(f"What is fact {i}?" for i in range(ROWS))
    assert None not in table.column("score").to_pylist()
    # The summary says what came from the cache (rows committed before the kill are not read again);
    # the completed run dropped the cache.
    stages = json.loads(folder.read_text(folder.summary))["stages"]
    assert stages["score"]["cache_hits"] + sent_second == ROWS - len(committed)
    assert stages["score"]["requests"] == sent_second
    assert not folder.exists(folder.cache)
    assert S3_SECRET not in out and not (tmp_path / "s3:").exists()


def test_a_rescore_with_another_judge_takes_the_cached_generations(tmp_path, local_ray):
    from backtrans.job import run_job

    source = write_instruction_jsonl(tmp_path / "seed.jsonl", 40)
    output = tmp_path / "out"
    with Simulator(SimulatorConfig(latency_ms=20)) as sim:
        first = seed_config(str(source), output, sim.url, output__keep_cache=True)
        assert run_job(first).summary.complete
        assert (output / ".cache" / "generate").is_dir()  # kept on request
        assert sim.stats()["by_kind"]["generate"] == 40
        sim.reset()

        rescore = seed_config(str(source), output, sim.url, output__keep_cache=True, output__mode="overwrite",
                              score__model="judge-model-2")  # fmt: skip
        summary = run_job(rescore).summary
        stats = sim.stats()["by_kind"]

    assert stats.get("generate", 0) == 0  # every generation came from the cache
    assert stats["score"] == 40  # the new judge is asked about every pair
    assert summary.stages["generate"].cache_hits == 40 and summary.stages["generate"].requests == 0
    assert summary.stages["score"].cache_hits == 0
    table = read_output(output)
    assert table.num_rows == 40 and set(table.column("scoring_model").to_pylist()) == {"judge-model-2"}


def test_a_budget_stop_then_rerun_pays_only_for_what_was_not_cached(tmp_path, local_ray):
    from backtrans.job import JobError, run_job

    rows = 200
    source = write_pairs_jsonl(tmp_path / "pairs.jsonl", rows)
    output = tmp_path / "out"
    with Simulator(SimulatorConfig(latency_ms=20)) as sim:
        config = score_only_config(source, output, sim.url, max_requests=60)
        with pytest.raises(JobError, match="max_requests"):
            run_job(config)
        sent_first = sim.stats()["by_kind"]["score"]
        cached = _cached_rows(str(output), config.score, rows)
        committed = checkpointed_ids(output)
        sim.reset()

        summary = run_job(score_only_config(source, output, sim.url, max_requests=1000)).summary
        sent_second = sim.stats()["by_kind"]["score"]

    # Replies of the batch that hit the budget are written before the stop is raised; other batches of
    # the actor may still have had requests in flight.
    assert sent_first > 0 and len(cached) >= sent_first - CONCURRENCY
    assert sent_second <= rows - len(cached)
    assert sent_first + sent_second <= rows + 2 * CONCURRENCY
    assert summary.complete and summary.rows == rows
    assert summary.stages["score"].requests == sent_second
    assert summary.stages["score"].cache_hits + sent_second == rows - len(committed)
    assert not (output / ".cache").exists()  # dropped: the run completed


def test_a_cached_reply_keeps_its_token_logprobs():
    from backtrans.backends.base import Reply, TokenLogprobs
    from backtrans.cache import _reply_from_json, _reply_to_json

    reply = Reply("Score: 5", 11, 3, "stop", (TokenLogprobs("5", {"5": -0.1, "4": -2.5}),))
    assert _reply_from_json(_reply_to_json(reply)) == reply
