"""The run summary: what is in the output (rows, score histogram, columns) and what this run spent.

Rows and scores are counted from the written Parquet (footers, and the `score` column streamed on
the driver), so they describe the whole output even when it was finished over several resumed runs;
requests, tokens and failures come from the stage actors' counters for this run. Nothing here holds
a key: the config keeps only variable names.

`run_summary.json` is the output's completion marker: written last, read first (`read_summary`).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import BaseModel, ValidationError

from backtrans.config import JobConfig, SubsetRule
from backtrans.metrics import RunSnapshot, spend, stage_prices
from backtrans.output import OutputFolder
from backtrans.resources import busy_actors
from backtrans.schema import SCORE, SCORE_EXPECTED

# Why a pair has no score: the score stage's failure types under their own names, every failed
# request (HTTP errors, timeouts, ...) as one `endpoint_failure`.
UNSCORED_CAUSES = ("unparseable_score", "invalid_verdict", "truncated", "bad_input")
EXPECTED_BIN = 0.5  # the width of the score_expected histogram's bins, from 1 to 5


class StageSummary(BaseModel):
    model: str
    backend: str
    requests: int
    retries: int = 0  # added after the first summaries were written
    rows: int
    prompt_tokens: int
    completion_tokens: int
    cache_hits: int = 0  # replies taken from the output's reply cache instead of a request
    actors: int | None = None  # the stage's actors that ran
    cpu_s: float = 0.0  # the CPU-seconds its actor processes spent, measured in them
    actors_needed: int | None = None  # more actors than it had, when its actors' CPU was the limit


class CuratedSummary(BaseModel):
    thresholds: dict[str, int | SubsetRule]  # subset -> minimum score, or its rule
    subsets: dict[str, int]  # subset -> rows
    seed: str | None  # the uri of `curation.seed`
    moves: dict[str, dict[str, int]] | None = None  # re-scoring: subset -> {entered, left}


class Phases(BaseModel):
    """Seconds of each part of the run. Compaction runs beside write/curate, so the phases can add
    up to more than the total; a phase the run did not reach is null."""

    startup: float | None = None  # process start -> Ray up, pre-flight done, the source resolved
    stages: float | None = None  # the streaming read -> stages -> write (web jobs: and the segment pass)
    write_curate: float | None = None  # counts, curated subsets, plot, card and summary
    compaction: float | None = None
    push: float | None = None


class Column(BaseModel):
    name: str
    type: str  # as Arrow prints it
    feature: dict[str, Any]  # as a Hub card's `dataset_info: features:` entry spells it (without `name`)


class Pushed(BaseModel):
    repo: str
    commit: str


class Spent(BaseModel):
    """What a stage has spent on this output over all of its runs: budgets hold for the output."""

    requests: int = 0
    tokens: int = 0


class RunSummary(BaseModel):
    complete: bool
    rows: int
    scores: dict[str, int] | None  # "1".."5" and "null" -> rows; None when `score` is not kept
    # "1.0-1.5" .. "4.5-5.0" and "null" -> rows; None when `score_expected` is not kept
    score_expected: dict[str, int] | None = None
    failures_this_run: dict[str, dict[str, int]]  # stage -> failure type -> rows
    unscored: dict[str, int] = {}  # pairs the score stage left without a score this run, by cause
    skipped_lines_this_run: int  # JSONL lines under bad_lines: skip
    stages: dict[str, StageSummary]
    spent: dict[str, Spent] = {}  # stage -> requests and tokens over every run of this output
    spend: float | None = None  # this run's cost at the stages' `price` (None: no stage has a price)
    simulated: bool
    resumed: bool
    seconds: float  # the whole run: process start to the summary (after the push, when there is one)
    phases: Phases = Phases()
    finished_at: str
    ray: str
    python: str
    config: dict[str, Any]
    columns: list[Column] = []  # of data/, as written
    segments: dict[str, Any] | None = None  # web jobs: the segment filter's counts
    curated: CuratedSummary | None = None
    plot: str | None = None  # the score plot's file name
    pushed: Pushed | None = None  # the Hub repo and commit this output was pushed to
    stopped_by: str | None = None  # an unfinished run: the failure's type ...
    reason: str | None = None  # ... and its one-line message

    def __getitem__(self, key: str) -> Any:
        """One key as `run_summary.json` holds it, for code that reads the JSON's keys."""
        return self.model_dump(mode="json")[key]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


@dataclass(frozen=True)
class Contents:
    """What `data/` holds: the pass over the written shards that the summary reports."""

    rows: int
    scores: dict[str, int] | None
    columns: list[Column]
    expected: dict[str, int] | None = None  # the score_expected histogram, when data/ has the column


def _feature(arrow_type: pa.DataType) -> dict[str, Any]:
    """An Arrow type as the Hub's card metadata writes it (what `datasets.Features` reads)."""
    if pa.types.is_struct(arrow_type):
        return {"struct": [{"name": field.name, **_feature(field.type)} for field in arrow_type]}
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        kind = "list" if pa.types.is_list(arrow_type) else "large_list"
        inner = _feature(arrow_type.value_type)
        return {kind: inner.get("dtype") or inner.get("struct") or inner}
    names = {"double": "float64", "float": "float32", "halffloat": "float16"}
    return {"dtype": names.get(str(arrow_type), str(arrow_type))}


def columns_of(schema: pa.Schema) -> list[Column]:
    return [Column(name=field.name, type=str(field.type), feature=_feature(field.type)) for field in schema]


def score_histogram(folder: OutputFolder) -> dict[str, int]:
    histogram = {str(score): 0 for score in range(1, 6)} | {"null": 0}
    for batch in folder.scan_columns(folder.data, [SCORE]):
        counts = pc.value_counts(batch.column(SCORE))
        for score, rows in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True):
            histogram["null" if score is None else str(score)] += rows
    return histogram


def expected_histogram(folder: OutputFolder) -> dict[str, int]:
    edges = [1 + EXPECTED_BIN * i for i in range(int(4 / EXPECTED_BIN) + 1)]
    labels = [f"{low:.1f}-{high:.1f}" for low, high in zip(edges, edges[1:], strict=False)]
    histogram = dict.fromkeys(labels, 0) | {"null": 0}
    for batch in folder.scan_columns(folder.data, [SCORE_EXPECTED]):
        for value in batch.column(SCORE_EXPECTED).to_pylist():
            label = "null" if value is None else labels[min(int((value - 1) / EXPECTED_BIN), len(labels) - 1)]
            histogram[label] += 1
    return histogram


def read_contents(folder: OutputFolder, scored: bool) -> Contents:
    """Rows, the score histogram (when `scored`: the output keeps `score`), the score_expected one (when
    it is kept) and columns of `data/`."""
    if not folder.parquet_files(folder.data):
        return Contents(0, None, [])
    columns = columns_of(folder.schema(folder.data))
    expected = expected_histogram(folder) if any(column.name == SCORE_EXPECTED for column in columns) else None
    if scored:
        scores = score_histogram(folder)
        return Contents(sum(scores.values()), scores, columns, expected)
    return Contents(folder.count_rows(folder.data), None, columns, expected)


def unscored(snapshot: RunSnapshot) -> dict[str, int]:
    """This run's pairs without a score, by cause (`UNSCORED_CAUSES`, else `endpoint_failure`)."""
    causes: dict[str, int] = {}
    counts = snapshot.stages.get("score")
    for failure, rows in (counts.failures if counts else {}).items():
        cause = failure if failure in UNSCORED_CAUSES else "endpoint_failure"
        causes[cause] = causes.get(cause, 0) + rows
    return causes


def _spent(config: JobConfig, snapshot: RunSnapshot, spent_before: dict[str, Spent]) -> dict[str, Spent]:
    """What each stage spent on this output, this run included. A budget stop counts its whole
    budget as spent: the stage actors' counts miss the requests in flight when Ray Data shuts the
    pool down, and a re-run must never spend more than the budget."""
    spent = dict(spent_before)
    for name, counts in snapshot.stages.items():
        before = spent.get(name, Spent())
        spent[name] = Spent(
            requests=before.requests + counts.requests,
            tokens=before.tokens + counts.prompt_tokens + counts.completion_tokens,
        )
    stop = snapshot.stop
    if stop is not None and stop.budget is not None:
        budget = getattr(getattr(config, stop.stage), stop.budget)
        field = "requests" if stop.budget == "max_requests" else "tokens"
        ledger = spent.setdefault(stop.stage, Spent())
        setattr(ledger, field, max(getattr(ledger, field), budget))
    return spent


def build_summary(
    config: JobConfig,
    contents: Contents,
    snapshot: RunSnapshot,
    *,
    state: str,
    simulated: bool,
    started: float,
    phases: Phases,
    segments: dict | None,
    curated: CuratedSummary | None = None,
    plot: str | None = None,
    stop: tuple[str, str] | None = None,
    spent_before: dict[str, Spent] | None = None,
) -> RunSummary:
    """The summary of one run, from what each of its passes returned. `stop`: (failure type, message)
    of a run that ended early; `spent_before`: what earlier, unfinished runs of this output spent."""
    return RunSummary(
        complete=stop is None,
        rows=contents.rows,
        scores=contents.scores,
        score_expected=contents.expected,
        failures_this_run={stage: dict(counts.failures) for stage, counts in snapshot.stages.items()},
        unscored=unscored(snapshot),
        skipped_lines_this_run=snapshot.skipped_lines,
        stages={
            name: StageSummary(
                model=getattr(config, name).model,
                backend=getattr(config, name).backend,
                requests=counts.requests,
                retries=counts.retries,
                rows=counts.rows,
                prompt_tokens=counts.prompt_tokens,
                completion_tokens=counts.completion_tokens,
                cache_hits=counts.cache_hits,
                actors=snapshot.actors.get(name),
                cpu_s=round(counts.cpu_s, 2),
                actors_needed=busy_actors(snapshot.actors[name], counts.cpu_s, phases.stages or 0)
                if snapshot.actors.get(name)
                else None,
            )
            for name, counts in snapshot.stages.items()
        },
        spent=_spent(config, snapshot, spent_before or {}),
        spend=spend(snapshot, stage_prices(config)),
        simulated=simulated,
        resumed=state == "resume",
        seconds=round(time.time() - started, 2),
        phases=phases,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        ray=ray.__version__,
        python=platform.python_version(),
        config=config.model_dump(mode="json"),
        columns=contents.columns,
        segments=segments,
        curated=curated,
        plot=plot,
        stopped_by=stop and stop[0],
        reason=stop and stop[1],
    )


def write_summary(folder: OutputFolder, summary: RunSummary) -> None:
    folder.write_text(folder.summary, summary.to_json())


def read_summary(folder: OutputFolder) -> RunSummary | None:
    """The output's summary, or None when there is none or it is not one this version reads (then
    the output counts as unfinished, and a resumed run rewrites it)."""
    try:
        return RunSummary.model_validate_json(folder.read_text(folder.summary))
    except (FileNotFoundError, ValidationError):
        return None
