"""The run summary: what is in the output (rows, score histogram) and what this run spent.

Rows and scores are counted from the written Parquet (footers, and the `score` column streamed on
the driver), so they describe the whole output even when it was finished over several resumed runs;
requests, tokens and failures come from the stage actors' counters for this run. Nothing here holds
a key: the config keeps only variable names.
"""

from __future__ import annotations

import json
import platform
import time

import pyarrow.compute as pc
import ray

from backtrans.config import JobConfig
from backtrans.metrics import RunSnapshot
from backtrans.output import OutputFolder, count_rows, parquet_files, scan_columns


def score_histogram(folder: OutputFolder) -> dict[str, int]:
    histogram = {str(score): 0 for score in range(1, 6)} | {"null": 0}
    for batch in scan_columns(folder.data, ["score"]):
        counts = pc.value_counts(batch.column("score"))
        for score, rows in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True):
            histogram["null" if score is None else str(score)] += rows
    return histogram


def build_summary(
    config: JobConfig, folder: OutputFolder, snapshot: RunSnapshot, started: float, state: str, simulated: bool
) -> dict:
    if not parquet_files(folder.data):
        scores, rows = None, 0
    elif "score" in config.output.columns:
        scores = score_histogram(folder)
        rows = sum(scores.values())
    else:
        scores, rows = None, count_rows(folder.data)
    failures = {stage: dict(counts.failures) for stage, counts in snapshot.stages.items()}
    return {
        "complete": True,
        "rows": rows,
        "scores": scores,
        "failures_this_run": failures,
        "skipped_lines_this_run": snapshot.skipped_lines,  # JSONL lines under bad_lines: skip
        "stages": {
            name: {
                "model": getattr(config, name).model,
                "backend": getattr(config, name).backend,
                "requests": counts.requests,
                "rows": counts.rows,
                "prompt_tokens": counts.prompt_tokens,
                "completion_tokens": counts.completion_tokens,
            }
            for name, counts in snapshot.stages.items()
        },
        "simulated": simulated,
        "resumed": state == "resume",
        "seconds": round(time.time() - started, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ray": ray.__version__,
        "python": platform.python_version(),
        "config": config.model_dump(mode="json"),
    }


def write_summary(folder: OutputFolder, summary: dict) -> None:
    with open(folder.summary, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
