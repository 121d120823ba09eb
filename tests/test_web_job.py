"""The web-corpus job end to end: segments -> augment -> score -> a4/a5 on the fake Hub -> re-scoring."""

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from datasets import load_dataset

from backtrans.config import ConfigError, SourceConfig, load_config
from backtrans.curated import SEED_TAG, WEB_TAG
from backtrans.job import run_job
from backtrans.prompts import SELF_CURATION
from backtrans.schema import BacktransError
from backtrans.simulator import Simulator, SimulatorConfig
from backtrans.sources import read_source
from backtrans.stages import instruction_problem
from tests.helpers import S3_BUCKET, expected_score, files_under, read_output

pytestmark = pytest.mark.usefixtures("local_ray")

WEB_DEMO = "jobs/configs/web_demo.yaml"
SEED_PAIRS = "jobs/data/demo_instructions.jsonl"


def _on_simulator(url: str, *stages: str) -> list[str]:
    return [override for stage in stages for override in (f"{stage}.backend=openai", f"{stage}.base_url={url}")]


def _requests_by_kind(sim: Simulator) -> dict[str, int]:
    return {kind: count for kind, count in sim.stats()["by_kind"].items() if count}


def test_web_demo_filters_augments_scores_and_publishes_subsets(tmp_path, fake_hub):
    repo = "fake-user/web-backtranslated"
    with Simulator(SimulatorConfig(latency_ms=2)) as sim:
        config = load_config(
            WEB_DEMO,
            [
                f"output.path={tmp_path / 'web'}",
                f"hub.repo_id={repo}",
                f"curation.seed={{uri: {SEED_PAIRS}, rename: {{prompt: instruction, completion: generation}}}}",
                *_on_simulator(sim.url, "augment", "score"),
            ],
        )
        result = run_job(config)
        requests = _requests_by_kind(sim)

    # Every filter rule removed what jobs/data/README.md says it was built to, and the counts add up.
    segments = result.summary["segments"]
    removed = {"empty": 4, "too_short": 10, "too_long": 8, "uppercase": 6, "boilerplate": 10, "repetitive": 6}
    removed |= {"exact_duplicate": 12, "near_duplicate": 8}
    assert segments == {"rows_in": 220, "kept": 156, "removed": removed, "skipped_lines": 0}
    assert segments["rows_in"] == segments["kept"] + sum(segments["removed"].values())

    # One backward and one scoring request per kept segment, nothing for the removed documents.
    data = pq.read_table(tmp_path / "web" / "data").to_pylist()
    assert len(data) == segments["kept"] == result.summary["rows"]
    assert requests == {"backward": len(data), "score": len(data)}
    assert len({row["row_id"] for row in data}) == len(data)
    for row in data:
        assert row["instruction"].startswith("[simulated instruction]")
        assert row["instruction_model"] == "simulated-backward"
        assert row["score"] == expected_score(row["instruction"], row["generation"])
        assert [message["role"] for message in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][0]["content"] == WEB_TAG
        assert row["messages"][1]["content"] == row["instruction"]
        assert row["messages"][2]["content"] == row["generation"]

    # The pushed repo: `all`, `a4`, `a5` load by name; the subsets hold the curated rows plus the seed pairs.
    scores = Counter(row["score"] for row in data)
    seed_rows = 60
    loaded = {name: load_dataset(repo, name, split="train") for name in ("all", "a4", "a5")}
    assert len(loaded["all"]) == len(data)
    assert len(loaded["a4"]) == scores[4] + scores[5] + seed_rows
    assert len(loaded["a5"]) == scores[5] + seed_rows
    a5 = loaded["a5"].to_list()
    assert sum(row["messages"][0]["content"] == SEED_TAG and row["score"] is None for row in a5) == seed_rows
    assert {row["row_id"] for row in a5 if row["score"] == 5} == {row["row_id"] for row in data if row["score"] == 5}
    assert result.summary["curated"]["subsets"] == {"a4": len(loaded["a4"]), "a5": len(loaded["a5"])}

    files = fake_hub.files("datasets", repo)
    card = files["README.md"].decode()
    assert "config_name: a5" in card and "![Score distribution](score_distribution.png)" in card
    assert "| near_duplicate | 8 |" in card
    assert files["score_distribution.png"].startswith(b"\x89PNG")


def test_rescoring_keeps_ids_and_reports_moves_between_subsets(tmp_path):
    # A second judge: here the same simulator with a reworded prompt, so its scores differ per pair.
    second_judge = tmp_path / "judge2.txt"
    second_judge.write_text(SELF_CURATION.read_text(encoding="utf-8") + "\n(second round)")
    with Simulator(SimulatorConfig(latency_ms=2)) as sim:
        first = load_config(WEB_DEMO, [f"output.path={tmp_path / 'web'}", *_on_simulator(sim.url, "augment", "score")])
        run_job(first)
        sim.reset()
        rescore = load_config(
            "jobs/configs/web_rescore.yaml",
            [
                f"source.uri={tmp_path / 'web' / 'data'}",
                f"output.path={tmp_path / 'rescored'}",
                f"score.template={second_judge}",
                *_on_simulator(sim.url, "score"),
            ],
        )
        result = run_job(rescore)
        requests = _requests_by_kind(sim)

    before = {row["row_id"]: row for row in pq.read_table(tmp_path / "web" / "data").to_pylist()}
    after = {row["row_id"]: row for row in pq.read_table(tmp_path / "rescored" / "data").to_pylist()}
    assert after.keys() == before.keys()
    assert requests == {"score": len(before)}  # no augment stage, one new score per pair
    for row_id, row in after.items():
        assert row["score_prev"] == before[row_id]["score"]
        assert row["scoring_model"] == "simulated-judge-2"
        assert row["instruction"] == before[row_id]["instruction"]
    # The tag travels with the row: the re-scored web pairs keep the web tag, though no augment stage ran.
    assert len(after) == 156
    assert {(row["origin"], row["messages"][0]["content"]) for row in after.values()} == {("web", WEB_TAG)}
    entered = sum(row["score"] == 5 and row["score_prev"] != 5 for row in after.values())
    left = sum(row["score_prev"] == 5 and row["score"] != 5 for row in after.values())
    assert entered and left  # the reworded prompt moves pairs both ways
    assert result.summary["curated"]["moves"]["a5"] == {"entered": entered, "left": left}
    assert (
        json.loads((tmp_path / "rescored" / "run_summary.json").read_text())["curated"]["moves"]["a5"]["left"] == left
    )


def _segment_files(output: str) -> list[str]:
    return [path for path in files_under(output) if path.startswith(".segments/")]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_resumed_web_run_reuses_the_segments_and_sends_nothing_twice(where, s3, tmp_path):
    output = str(tmp_path / "web") if where == "local" else f"s3://{S3_BUCKET}/{tmp_path.name}/web"
    with Simulator(SimulatorConfig(latency_ms=2)) as sim:
        config = load_config(WEB_DEMO, [f"output.path={output}", *_on_simulator(sim.url, "augment", "score")])
        config.output.mode = "resume"
        config.augment.max_requests = 100  # the budget stops the first run part way
        with pytest.raises(BacktransError, match="run the same command again to resume"):
            run_job(config)
        first = _requests_by_kind(sim)["backward"]
        segment_files = _segment_files(output)
        written = read_output(output).num_rows if any(p.startswith("data/") for p in files_under(output)) else 0
        config.augment.max_requests = None
        result = run_job(config)
        total = _requests_by_kind(sim)["backward"]
    assert segment_files and _segment_files(output) == segment_files  # filtered once, reused
    data = read_output(output).to_pylist()
    assert len({row["row_id"] for row in data}) == len(data) == result.summary["segments"]["kept"]
    # The second run asked only for the rows not written by the first.
    assert total - first <= len(data) - written


def test_sharded_parquet_on_the_hub_is_read_by_several_tasks(fake_hub, monkeypatch):
    # Ray packs Parquet row groups into read units of 128 MiB, so a real Hub shard (~2 GB) is many
    # units. These shards are 100 KB, so the unit shrinks to 64 KiB to keep that proportion.
    monkeypatch.setenv("RAY_DATA_PARQUET_BIN_PACKING_BYTES", str(64 * 1024))
    repo = "tester/web-shards"
    fake_hub.create_repo("datasets", repo)
    shards = {}
    for shard in range(4):
        table = pa.table({"text": [f"document {shard}-{i} " + "web text " * 220 for i in range(50)]})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        shards[f"data/train-{shard:05d}-of-00004.parquet"] = sink.getvalue().to_pybytes()
    fake_hub.put_files("datasets", repo, shards)

    def with_task(batch: pa.Table) -> pa.Table:
        task = ray.get_runtime_context().get_task_id()
        return batch.append_column("task", pa.array([task] * len(batch)))

    dataset = read_source(SourceConfig(uri=f"hf://datasets/{repo}", split="train"))
    read = dataset.map_batches(with_task, batch_format="pyarrow", batch_size=None).materialize()
    assert read.count() == 200
    assert read.num_blocks() >= 4
    assert len({row["task"] for row in read.iter_rows()}) >= 2


def _augment_only(tmp_path, sim, texts: list[str], *overrides: str):
    segments = tmp_path / "segments.jsonl"
    segments.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    config = load_config(
        WEB_DEMO,
        [
            "segments=null",
            f"source.uri={segments}",
            "source.rename={text: generation}",
            f"output.path={tmp_path / 'out'}",
            *_on_simulator(sim.url, "augment", "score"),
            *overrides,
        ],
    )
    run_job(config)
    return pq.read_table(tmp_path / "out" / "data").to_pylist()


def test_bare_prompt_sends_the_segment_alone_to_a_fine_tuned_backward_model(tmp_path):
    texts = [
        f"Segment {i}: tides rise and fall twice a day as the Moon's pull stretches the oceans. " * 3 for i in range(5)
    ]
    with Simulator(SimulatorConfig(latency_ms=2)) as sim:
        rows = _augment_only(
            tmp_path, sim, texts, "augment.prompt=bare", "output.columns=[row_id, instruction, generation, score]"
        )
        requests = _requests_by_kind(sim)
    # The simulator sees a bare text as a generation request, not as the paper's backward prompt.
    assert requests == {"generate": 5, "score": 5}
    assert all(row["instruction"].startswith("[simulated response from simulated-backward]") for row in rows)
    assert sorted(row["generation"] for row in rows) == texts


def test_an_instruction_that_copies_its_segment_fails_the_row_and_is_not_scored(tmp_path):
    # The simulated reply to a bare text quotes its first 12 words: for these short texts, all of it.
    texts = [f"Segment {i}: how tides work." for i in range(4)]
    with Simulator(SimulatorConfig(latency_ms=2)) as sim:
        rows = _augment_only(
            tmp_path, sim, texts, "augment.prompt=bare", "output.columns=[instruction, generation, score, error]"
        )
        requests = _requests_by_kind(sim)
    assert requests == {"generate": 4}
    assert sorted(row["generation"] for row in rows) == texts
    for row in rows:
        assert row["instruction"] is None and row["score"] is None
        assert row["error"]["stage"] == "augment" and row["error"]["type"] == "bad_instruction"
        assert "copies the segment" in row["error"]["message"]


def test_written_instructions_are_validated():
    segment = "Umami is one of the five basic tastes. " * 10
    assert instruction_problem("What is umami?", segment, 1000) is None
    assert instruction_problem("", segment, 1000).type == "bad_instruction"
    assert "over 20" in instruction_problem("Tell me everything about umami", segment, 20).message
    assert "copies" in instruction_problem(segment.upper(), segment, 10_000).message
    assert "copies" in instruction_problem(segment[:300], segment, 1000).message


def test_web_config_errors_name_the_sections(tmp_path):
    with pytest.raises(ConfigError, match="add an augment section"):
        load_config(WEB_DEMO, ["augment=null"])
    with pytest.raises(ConfigError, match="use one"):
        load_config(WEB_DEMO, ["generate={backend: simulated, model: g}"])
    with pytest.raises(ConfigError, match="curation.subsets.*between 1 and 5"):
        load_config(WEB_DEMO, ["curation.subsets={a6: 6}"])
