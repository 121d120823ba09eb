"""The seed pipeline end to end on a local Ray: local JSONL -> generate -> score -> Parquet.

Both stages talk to the project's simulator through the real clients (openai.AsyncOpenAI and
huggingface_hub.AsyncInferenceClient), which name their stage in the X-Backtrans-Stage header.
The scores are literals: the simulated judge's verdicts on these rows, computed once.
"""

import json

import pytest

from backtrans.job import run_job
from backtrans.schema import INSTRUCTION, SCORE
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
    assert stats["by_kind"] == {"generate": 300, "score": 300, "backward": 0}
    assert stats["total_requests"] == 600
    assert result.summary["rows"] == 300
    assert result.summary["scores"] == {"1": 66, "2": 51, "3": 64, "4": 56, "5": 63, "null": 0}


def test_card_and_summary_describe_the_run(tmp_path, simulator):
    source = write_instruction_jsonl(tmp_path / "in.jsonl", rows=20)
    run_job(seed_config(str(source), tmp_path / "out", simulator.url))

    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    card = (tmp_path / "out" / "README.md").read_text()
    assert summary["complete"] is True and summary["rows"] == 20
    assert summary["stages"]["score"]["requests"] == 20
    assert summary["scores"] == {"1": 3, "2": 7, "3": 3, "4": 4, "5": 3, "null": 0}
    assert card.startswith("---\nconfigs:")
    assert "judge-model" in card and "Score: <rating>" in card and "load_dataset(" in card


def test_finished_output_is_skipped_on_rerun(tmp_path, simulator):
    source = write_instruction_jsonl(tmp_path / "in.jsonl", rows=10)
    config = seed_config(str(source), tmp_path / "out", simulator.url)
    run_job(config)
    assert simulator.stats()["total_requests"] == 20
    simulator.reset()

    again = run_job(config)

    assert again.state == "skip"
    assert simulator.stats()["total_requests"] == 0
    rows = read_output(tmp_path / "out").to_pylist()
    by_idea = {int(row[INSTRUCTION].split()[3]): row[SCORE] for row in rows}
    assert [by_idea[i] for i in range(10)] == [4, 2, 5, 1, 1, 4, 5, 2, 4, 3]
