"""The seed pipeline end to end on a local Ray: local JSONL -> generate -> score -> Parquet.

Both stages talk to the project's simulator through the real clients (openai.AsyncOpenAI and
huggingface_hub.AsyncInferenceClient).
"""

import json

import pytest

from backtrans.job import run_job
from backtrans.simulator import Simulator, SimulatorConfig
from tests.helpers import SEED_COLUMNS, assert_scores_match_simulator, read_output, seed_config, write_instruction_jsonl

pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture
def simulator():
    with Simulator(SimulatorConfig(latency_ms=5)) as sim:
        yield sim


@pytest.mark.parametrize("generate_backend", ["openai", "hf-endpoint"])
def test_seed_pipeline_scores_every_row_once(tmp_path, simulator, generate_backend):
    source = write_instruction_jsonl(tmp_path / "step3-eval.jsonl", rows=300)
    config = seed_config(str(source), tmp_path / "out", simulator.url, generate_backend=generate_backend)

    result = run_job(config)

    table = read_output(tmp_path / "out")
    assert table.column_names == SEED_COLUMNS
    assert table.num_rows == 300
    instructions = table.column("instruction").to_pylist()
    assert sorted(instructions) == sorted(f"Explain idea number {i} in two sentences." for i in range(300))
    assert_scores_match_simulator(table)
    assert set(table.column("generation_model").to_pylist()) == {"gen-model"}
    assert set(table.column("scoring_model").to_pylist()) == {"judge-model"}
    stats = simulator.stats()
    assert stats["by_kind"]["generate"] == 300 and stats["by_kind"]["score"] == 300
    assert result.summary["rows"] == 300
    assert sum(result.summary["scores"].values()) == 300


def test_card_and_summary_describe_the_run(tmp_path, simulator):
    source = write_instruction_jsonl(tmp_path / "in.jsonl", rows=20)
    run_job(seed_config(str(source), tmp_path / "out", simulator.url))

    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    card = (tmp_path / "out" / "README.md").read_text()
    assert summary["complete"] is True and summary["rows"] == 20
    assert summary["stages"]["score"]["requests"] == 20
    assert card.startswith("---\nconfigs:")
    assert "judge-model" in card and "Score: <rating>" in card and "load_dataset(" in card


def test_finished_output_is_skipped_on_rerun(tmp_path, simulator):
    source = write_instruction_jsonl(tmp_path / "in.jsonl", rows=10)
    config = seed_config(str(source), tmp_path / "out", simulator.url)
    run_job(config)
    simulator.reset()

    again = run_job(config)

    assert again.state == "skip"
    assert simulator.stats()["total_requests"] == 0
    assert read_output(tmp_path / "out").num_rows == 10
