"""Small builders the integration tests share."""

import json
import os
import signal
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from backtrans.config import JobConfig
from backtrans.output import OutputFolder
from backtrans.parse import SCORE_PATTERN
from backtrans.prompts import SELF_CURATION, load_template, render
from backtrans.schema import GENERATION, INSTRUCTION, REASON, ROW_HASH, SCORE
from backtrans.simulator import simulated_score

S3_BUCKET = "backtrans-tests"  # on the loopback S3 server conftest.py starts
S3_SECRET = "moto-secret-Zk29sQ"  # its secret key: the tests look for it in what the job writes and prints
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


def read_output(output: Path | str):
    """The rows of an output, a local folder or a URI (`s3://...`)."""
    folder = OutputFolder.at(str(output))
    return pq.read_table(folder.parquet_files(folder.data), filesystem=folder.filesystem)


def expected_score(instruction: str, generation: str) -> int:
    """The simulated judge's score for this pair sent in the project's self-curation prompt: a row whose
    score differs was sent another prompt, or got another row's reply."""
    return simulated_score(render(load_template(SELF_CURATION), instruction=instruction, generation=generation))


def assert_scores_match_simulator(table) -> None:
    """Every row holds the simulated judge's verdict on its own pair: that score, and the judge's reason
    with the score line taken off."""
    for row in table.to_pylist():
        assert row[SCORE] == expected_score(row[INSTRUCTION], row[GENERATION]), row
        assert row[REASON].startswith("Simulated judge (not a real model): "), row
        assert SCORE_PATTERN.search(row[REASON]) is None, row


def write_pairs_jsonl(
    path: Path, rows: int, *, long_rows: tuple[int, ...] = (), empty_rows: tuple[int, ...] = ()
) -> Path:
    """(instruction, generation) pairs for a score-only run; some rows can be made long or empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            instruction = "" if i in empty_rows else f"What is fact {i}?"
            generation = ("word " * 2000) if i in long_rows else f"Fact {i} is a fact."
            f.write(
                json.dumps({"instruction": instruction, "generation": generation, "generation_model": "seed"}) + "\n"
            )
    return path


def score_only_config(source: Path, output: Path, base_url: str, **score) -> JobConfig:
    stage = {"backend": "openai", "base_url": base_url, "model": "judge-model", "max_concurrency": 8}
    stage.update({"max_retries": 3, "timeout_s": 5, **score})
    return JobConfig.model_validate({"source": {"uri": str(source)}, "score": stage, "output": {"path": str(output)}})


def files_under(location: Path | str) -> list[str]:
    """Every file below a local folder or a URI (`s3://...`), relative to it, in name order."""
    folder = OutputFolder.at(str(location))
    found = folder.filesystem.get_file_info(pafs.FileSelector(folder.root, recursive=True, allow_not_found=True))
    return sorted(folder.relative(info.path) for info in found if info.type == pafs.FileType.File)


def checkpointed_ids(output: Path | str, checkpoint: str = "checkpoint") -> set[int]:
    """The row ids committed in a Ray Data checkpoint of an output (a local folder or a URI): the
    stages' (`checkpoint`) or the segment pass's (`segment_checkpoint`)."""
    folder = OutputFolder.at(str(output))
    root = getattr(folder, checkpoint)
    # The segment pass checkpoints each attempt in a folder of its own.
    files = [path for where in [root, *folder.folders(root)] for path in folder.committed_checkpoint_files(where)]
    return {i for path in files for i in pq.read_table(path, filesystem=folder.filesystem).column(ROW_HASH).to_pylist()}


def sigkill_when(process, reached, limit_s: float = 240.0) -> None:
    """SIGKILL a CLI run's process group once `reached()` holds (the run must still be going)."""
    deadline = time.time() + limit_s
    while not reached() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, process.stdout.read()[-2000:]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_until_quiet(sim, quiet_s: float = 3.0, limit_s: float = 60.0) -> None:
    """Wait until the killed run's Ray workers stop sending: they outlive the driver by a few seconds
    and finish the requests their tasks had started (those are the run's in-flight window, too)."""
    deadline = time.time() + limit_s
    seen, changed = sim.stats()["total_requests"], time.time()
    while time.time() - changed < quiet_s and time.time() < deadline:
        time.sleep(0.2)
        if (now := sim.stats()["total_requests"]) != seen:
            seen, changed = now, time.time()


def write_score_job(
    path: Path, source: Path, output: Path | str, base_url: str, *, concurrency: int | None = None,
    commit_rows: int | None = None, **score_keys,
):  # fmt: skip
    """A score-only job YAML for the CLI and `ray job submit` tests: instruction and score kept; the
    concurrency and the commit size are the defaults unless given."""
    score = {"backend": "openai", "base_url": base_url, "model": "judge", **score_keys}
    if concurrency is not None:
        score["max_concurrency"] = concurrency
    out = {"path": str(output), "columns": ["instruction", "score"]}
    if commit_rows is not None:
        out["commit_rows"] = commit_rows
    path.write_text(json.dumps({"source": {"uri": str(source)}, "score": score, "output": out}))  # JSON is YAML
    return path
