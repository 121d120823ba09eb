"""The output folder's file operations, the run summary's JSON, the card's column list, and the
Hub access check the job makes before it spends anything (against the loopback fake Hub)."""

import json
from collections import Counter

import pyarrow as pa
import pytest
from datasets import Features

from backtrans.card import render_card
from backtrans.config import HubConfig, JobConfig, SubsetRule
from backtrans.hub import HubError, check_access
from backtrans.metrics import RunSnapshot, StageCounts
from backtrans.output import OutputFolder
from backtrans.schema import OUTPUT_TYPES
from backtrans.summary import (
    Contents,
    CuratedSummary,
    Phases,
    Pushed,
    RunSummary,
    build_summary,
    columns_of,
    read_summary,
    unscored,
)
from backtrans.testing.fake_hub import Account


def test_the_folder_reads_and_writes_through_its_filesystem(tmp_path):
    folder = OutputFolder.at(str(tmp_path / "out"))
    assert folder.root == str(tmp_path / "out") and folder.data == f"{tmp_path}/out/data"
    folder.write_text(folder.path("data", "b.parquet"), "b")
    folder.write_bytes(folder.path("data", "a.parquet"), b"a")
    folder.write_text(folder.path("data", "notes.txt"), "n")
    assert folder.parquet_files(folder.data) == [f"{folder.data}/a.parquet", f"{folder.data}/b.parquet"]
    assert folder.parquet_files(folder.path("missing")) == []
    folder.move(f"{folder.data}/b.parquet", folder.path("curated", "a5", "b.parquet"))
    assert folder.folders(folder.curated_root) == [folder.curated("a5")]
    assert folder.read_text(folder.curated("a5") + "/b.parquet") == "b"
    assert folder.relative(folder.curated("a5")) == "curated/a5"
    folder.delete_file(f"{folder.data}/gone.parquet")  # missing: no error
    folder.delete_dir(folder.curated_root)
    assert not folder.exists(folder.curated_root) and folder.exists(folder.data)
    with pytest.raises(FileNotFoundError):
        folder.read_text(folder.summary)


def _summary(cpu_s: float = 0.123, stages_s: float | None = None, **fields) -> RunSummary:
    config = JobConfig.model_validate({"source": {"uri": "in.jsonl"}, "score": {"backend": "simulated", "model": "j"}})
    counts = StageCounts(rows=3, requests=4, retries=1, prompt_tokens=30, cpu_s=cpu_s)
    snapshot = RunSnapshot(stages={"score": counts}, actors={"score": 1})
    schema = pa.schema([("instruction", pa.string()), ("score", pa.int64())])
    contents = Contents(rows=3, scores={"1": 0, "2": 0, "3": 1, "4": 2, "5": 0, "null": 0}, columns=columns_of(schema))
    return build_summary(
        config,
        contents,
        snapshot,
        state="fresh",
        simulated=True,
        started=0.0,
        phases=Phases(startup=1.5, stages=stages_s),
        **fields,
    )


def test_a_stage_whose_actor_was_cpu_bound_is_told_how_many_actors_to_set(capsys):
    from types import SimpleNamespace

    from backtrans.cli import _report

    summary = _summary(cpu_s=90.0, stages_s=100.0, segments=None)  # 0.9 of a core over the stages
    assert (summary.stages["score"].actors, summary.stages["score"].actors_needed) == (1, 2)
    _report(SimpleNamespace(state="fresh", output_path="out", summary=summary))
    assert "backtrans: score's 1 actor(s) were CPU-bound (22500.0 ms of CPU per request): score.actors: 2 " in (
        capsys.readouterr().out
    )
    assert _summary(cpu_s=50.0, stages_s=100.0, segments=None).stages["score"].actors_needed is None


def test_the_summary_keeps_its_keys_and_reads_back(tmp_path):
    folder = OutputFolder.at(str(tmp_path))
    summary = _summary(segments=None)
    folder.write_text(folder.summary, summary.to_json())
    on_disk = json.loads((tmp_path / "run_summary.json").read_text())
    assert list(on_disk) == [
        "complete", "rows", "scores", "score_expected", "failures_this_run", "unscored", "skipped_lines_this_run",
        "stages", "spent", "spend", "simulated",
        "resumed", "seconds", "phases", "finished_at", "ray", "python", "config", "columns", "segments",
        "curated", "plot", "pushed", "stopped_by", "reason",
    ]  # fmt: skip
    assert on_disk["stages"] == {
        "score": {
            "model": "j",
            "backend": "simulated",
            "requests": 4,
            "retries": 1,
            "rows": 3,
            "prompt_tokens": 30,
            "completion_tokens": 0,
            "cache_hits": 0,
            "actors": 1,
            "cpu_s": 0.12,
            "actors_needed": None,
        }
    }
    assert on_disk["phases"] == {"startup": 1.5, "stages": None, "write_curate": None, "compaction": None, "push": None}
    assert on_disk["columns"] == [
        {"name": "instruction", "type": "string", "feature": {"dtype": "string"}},
        {"name": "score", "type": "int64", "feature": {"dtype": "int64"}},
    ]
    assert on_disk["complete"] is True and on_disk["pushed"] is None
    assert summary["rows"] == 3 and summary["stages"]["score"]["retries"] == 1  # the JSON view of a key
    assert read_summary(folder) == summary
    folder.write_text(folder.summary, '{"complete": true}')  # not a summary this version reads
    assert read_summary(folder) is None


def test_the_card_lists_columns_and_types_as_hub_features():
    schema = pa.schema(list(OUTPUT_TYPES.items()))
    columns = columns_of(schema)
    features = [{"name": column.name, **column.feature} for column in columns]
    # What `datasets` reads from the card has the output's Arrow types. (datasets 4 writes a list
    # column as `list:`, datasets 3 as `sequence:`; both read `list:`.)
    assert Features._from_yaml_list(features).type == Features.from_arrow_schema(schema).type
    role, content = {"name": "role", "dtype": "string"}, {"name": "content", "dtype": "string"}
    assert columns[-1].feature == {"list": [role, content]}
    summary = _summary(segments=None).model_copy(update={"pushed": Pushed(repo="me/x", commit="abc")})
    card = render_card(summary, "me/x", "PROMPT")
    assert "dataset_info:\n- config_name: all\n  features:\n  - name: instruction\n    dtype: string\n" in card
    assert "| `instruction` | `string` |\n| `score` | `int64` |" in card


@pytest.fixture
def token(fake_hub, monkeypatch):
    """Sets the token in BACKTRANS_TEST_TOKEN to stand for `account` on the fake Hub."""

    def use(value: str, account: Account | None) -> HubConfig:
        fake_hub.set_token(value, account)
        monkeypatch.setenv("BACKTRANS_TEST_TOKEN", value)
        return HubConfig(repo_id="fake-user/new-data", token_env="BACKTRANS_TEST_TOKEN")

    return use


def test_a_refused_or_read_only_token_is_named(token):
    with pytest.raises(HubError) as refused:
        check_access(token("hf_revoked", None))
    assert str(refused.value) == (
        "hub.token_env: the Hub refused the token in BACKTRANS_TEST_TOKEN (Invalid user token.)"
    )
    with pytest.raises(HubError) as read_only:
        check_access(token("hf_read", Account(role="read")))
    assert str(read_only.value) == (
        "hub.token_env: the token in BACKTRANS_TEST_TOKEN is read-only; pushing needs write access"
    )


def test_write_access_is_checked_on_the_repo_or_its_namespace(token, fake_hub):
    member = Account(name="alice", orgs={"lab": "write", "club": "read"})
    hub = token("hf_alice", member)
    assert check_access(hub.model_copy(update={"repo_id": "lab/new"})) == "lab/new"
    assert check_access(hub.model_copy(update={"repo_id": "mine"})) == "alice/mine"
    with pytest.raises(HubError) as club:
        check_access(hub.model_copy(update={"repo_id": "club/new"}))
    assert str(club.value) == (
        "hub.repo_id: club/new does not exist and alice (token in BACKTRANS_TEST_TOKEN) may not create repos under club"
    )
    fake_hub.create_repo("datasets", "club/existing")
    with pytest.raises(HubError) as existing:
        check_access(hub.model_copy(update={"repo_id": "club/existing"}))
    assert str(existing.value) == "hub.repo_id: alice (token in BACKTRANS_TEST_TOKEN) may not write to club/existing"


def test_the_card_shows_unscored_pairs_by_cause_the_expected_histogram_and_expected_rules():
    expected = {"1.0-1.5": 0, "1.5-2.0": 0, "2.0-2.5": 1, "2.5-3.0": 0, "3.0-3.5": 0, "3.5-4.0": 0, "4.0-4.5": 1,
                "4.5-5.0": 0, "null": 1}  # fmt: skip
    rules = {"a4": 4, "e45": SubsetRule(min_score=4, min_expected=4.5)}
    summary = _summary(segments=None, curated=CuratedSummary(thresholds=rules, subsets={"a4": 2, "e45": 0}, seed=None))
    summary = summary.model_copy(update={"unscored": {"unparseable_score": 1}, "score_expected": expected})
    card = render_card(summary, "me/x", "PROMPT")

    assert "| cause | pairs | share |\n|---|---|---|\n| unparseable_score | 1 | 33.3% |\n" in card
    assert "| score_expected | rows |\n|---|---|\n| 1.0-1.5 | 0 |" in card and "| 4.0-4.5 | 1 |" in card
    assert "| `a4` | 2 | score >= 4 |" in card and "| `e45` | 0 | score >= 4 and score_expected >= 4.5 |" in card
    assert RunSummary.model_validate_json(summary.to_json()).curated.thresholds == rules


def test_unscored_counts_the_score_stages_failures_by_cause():
    failures = Counter({"unparseable_score": 2, "truncated": 1, "http_500": 3, "timeout": 1})
    counts = StageCounts(rows=9, failures=failures)
    snapshot = RunSnapshot(stages={"score": counts, "generate": StageCounts(failures=Counter({"http_400": 5}))})
    assert unscored(snapshot) == {"unparseable_score": 2, "truncated": 1, "endpoint_failure": 4}
