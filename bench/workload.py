"""The synthetic workload: N instructions in a JSONL file, and the job config that points at the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

SUBJECTS = (
    "photosynthesis",
    "binary search",
    "the French revolution",
    "compound interest",
    "plate tectonics",
    "TCP congestion control",
    "the water cycle",
    "sourdough bread",
    "public-key cryptography",
    "the Krebs cycle",
    "supply and demand",
    "black holes",
)
# Every instruction is unique ({i}): a repeated one would be answered from the reply cache, and the
# run's rows per second would no longer measure requests against C/L.
ASKS = (
    "Explain {s} to a twelve-year-old in two short paragraphs (request {i}).",
    "List three common misconceptions about {s} and correct each one (request {i}).",
    "Write a short, friendly email to a colleague summarising {s} (item {i}).",
    "What are the main steps of {s}? Answer as a numbered list (request {i}).",
    "Give a one-paragraph overview of {s} and one practical example (case {i}).",
)


def instruction(i: int) -> str:
    return ASKS[i % len(ASKS)].format(s=SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)], i=i)


def write_rows(path: Path, n: int) -> Path:
    """N rows with an `instruction` column (written once per N and reused)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"instruction": instruction(i)}) + "\n")
    tmp.rename(path)
    return path


def job_config(rows: Path, output: Path, base_url: str, concurrency: int, actors: int | None = None) -> dict:
    """The job config a user would write for this run: both stages on the simulator, C per stage."""

    def stage(model: str) -> dict:
        section = {
            "backend": "openai",
            "base_url": base_url,
            "api_key_env": None,
            "model": model,
            "max_concurrency": concurrency,
            "timeout_s": 60,
            "max_retries": 2,
        }
        if actors is not None:
            section["actors"] = actors
        return section

    return {
        "source": {"uri": str(rows)},
        "generate": stage("bench-generator"),
        "score": stage("bench-judge"),
        "output": {"path": str(output), "mode": "overwrite"},
    }


def write_job_config(path: Path, tree: dict) -> Path:
    from backtrans.config import JobConfig

    JobConfig.model_validate(tree)  # fail here, not in the subprocess, if the config is wrong
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path
