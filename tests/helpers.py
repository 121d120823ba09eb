"""Small builders the integration tests share."""

import json
from pathlib import Path

import pyarrow.parquet as pq

from backtrans.config import JobConfig
from backtrans.parse import parse_verdict
from backtrans.prompts import SELF_CURATION, load_template, render
from backtrans.simulator import simulated_score

SEED_COLUMNS = ["instruction", "generation", "generation_model", "score", "reason", "scoring_model"]


def write_instruction_jsonl(path: Path, rows: int) -> Path:
    """Rows shaped like HuggingFaceH4/instruction-dataset: prompt, completion, meta."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            record = {
                "prompt": f"Explain idea number {i} in two sentences.",
                "completion": f"Idea {i} is ...",
                "meta": {"category": "Open QA", "n": i},
            }
            f.write(json.dumps(record) + "\n")
    return path


def seed_config(
    source_uri: str, output: Path, base_url: str, *, generate_backend: str = "openai", **extra
) -> JobConfig:
    tree = {
        "source": {"uri": source_uri, "split": "test", "rename": {"prompt": "instruction"}},
        "generate": {
            "backend": generate_backend,
            "base_url": base_url,
            "model": "gen-model",
            "max_concurrency": 8,
            "max_retries": 2,
            "timeout_s": 10,
        },
        "score": {
            "backend": "openai",
            "base_url": base_url,
            "model": "judge-model",
            "max_concurrency": 8,
            "max_retries": 2,
            "timeout_s": 10,
        },
        "output": {"path": str(output)},
    }
    for dotted, value in extra.items():
        section, key = dotted.split("__")
        tree[section][key] = value
    return JobConfig.model_validate(tree)


def read_output(output: Path):
    return pq.read_table(output / "data")


def expected_score(instruction: str, generation: str) -> int:
    """What the simulator answers for this pair's scoring prompt."""
    return simulated_score(render(load_template(SELF_CURATION), instruction=instruction, generation=generation))


def assert_scores_match_simulator(table) -> None:
    for row in table.to_pylist():
        assert row["score"] == expected_score(row["instruction"], row["generation"]), row
        assert parse_verdict(row["reason"] + "\nScore: 1").score == 1  # reason holds no score line itself
