"""Build and run the job from its config, top to bottom:
source -> [segments -> augment | generate] -> score -> keep columns -> Parquet shards
       -> curated subsets -> card + plot + summary -> [Hub].
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import ray
from ray.data import ActorPoolStrategy

from backtrans.backends import backend_for
from backtrans.card import render_card
from backtrans.compaction import finish_compaction, write_compacted
from backtrans.config import JobConfig, StageConfig
from backtrans.curated import MESSAGES_COLUMN, SEED_TAG, WEB_TAG, add_messages, subset_moves, write_subsets
from backtrans.errors import root_failure
from backtrans.hub import push
from backtrans.metrics import start_metrics
from backtrans.output import PLOT_FILE, OutputFolder, write_rows
from backtrans.plot import plot_scores
from backtrans.progress import show_progress
from backtrans.prompts import BACKWARD, INSTRUCTION, SEGMENT, SELF_CURATION, load_template
from backtrans.resources import IO_CPUS, configure_ray_data, map_blocks
from backtrans.schema import ERROR
from backtrans.segment_pass import filter_counts, read_segments, write_segments
from backtrans.sources import ResolvedFiles, read_source, require_columns, resolve_files
from backtrans.stages import AugmentStage, GenerateStage, LLMStage, ScoreStage, StageSpec
from backtrans.summary import build_summary, write_summary

logger = logging.getLogger("backtrans")

ROWS_PER_BATCH = 16
ASYNC_BATCHES_PER_TASK = 4  # Ray Data's default for async batch UDFs
# Rows per stage task: one task runs all its batches at once (the source reads blocks of this size).
ROWS_PER_TASK = ROWS_PER_BATCH * ASYNC_BATCHES_PER_TASK
REQUESTS_PER_ACTOR = 64  # requests in flight per stage actor when `actors` is not set
STAGES: dict[str, type[LLMStage]] = {"augment": AugmentStage, "generate": GenerateStage, "score": ScoreStage}
DEFAULT_TEMPLATES = {"augment": BACKWARD, "generate": INSTRUCTION, "score": SELF_CURATION}


class JobError(RuntimeError):
    """The job cannot run as configured; a one-line reason."""


@dataclass(frozen=True)
class RunResult:
    output_path: str
    state: str  # "skip" | "fresh" | "resume"
    summary: dict | None
    hub_repo: str | None


def _active_stages(config: JobConfig) -> dict[str, StageConfig]:
    return {name: getattr(config, name) for name in STAGES if getattr(config, name) is not None}


def _check_before_spending(config: JobConfig) -> None:
    """Everything that can be checked without reading the corpus or sending a request."""
    for name, stage in _active_stages(config).items():
        try:
            backend_for(stage).check_config(stage)
        except ValueError as error:
            raise JobError(f"{name}.{error}") from None
        if stage.template is not None and not os.path.isfile(stage.template):
            raise JobError(f"{name}.template: file not found: {stage.template}")
    if config.hub.repo_id and "://" in config.output.path:
        raise JobError("hub.repo_id: pushing needs a local output.path")


def _template_path(name: str, stage: StageConfig) -> str:
    if stage.template:
        return stage.template
    if name == "augment" and stage.prompt == "bare":
        return str(SEGMENT)
    return str(DEFAULT_TEMPLATES[name])


def _required_columns(config: JobConfig) -> list[str]:
    """The columns the source must have, after `rename`."""
    if config.segments is not None:
        return [config.segments.text_column]
    if config.augment is not None:
        return ["generation"]  # the segment the backward model writes an instruction for
    return ["instruction"] if config.generate is not None else ["instruction", "generation"]


@contextlib.contextmanager
def _simulators(config: JobConfig):
    """Start one loopback simulator for all stages with `backend: simulated`; yield its base URL."""
    if not _simulated(config):
        yield None
        return
    from backtrans.simulator import SimulatorConfig, start_subprocess

    with start_subprocess(SimulatorConfig(keep_log=False)) as simulator:
        yield simulator.url


def _stage_spec(name: str, stage: StageConfig, base_url: str | None, metrics_name: str) -> StageSpec:
    # One actor keeps 64 requests in flight at ~1.5 ms of CPU each (BENCHMARKS.md); every further
    # actor is a process that imports Ray Data and the client while the job starts.
    actors = min(stage.actors or math.ceil(stage.max_concurrency / REQUESTS_PER_ACTOR), stage.max_concurrency)
    return StageSpec(
        name=name,
        config=stage.model_copy(update={"actors": actors}),
        base_url=base_url,
        template_path=_template_path(name, stage),
        metrics_actor=metrics_name,
    )


def _add_stage(dataset: ray.data.Dataset, spec: StageSpec) -> ray.data.Dataset:
    # Ray Data runs at most ASYNC_BATCHES_PER_TASK batches of one task at once; run enough tasks
    # side by side in each actor that its slots stay full while finished batches leave.
    slots_per_actor = spec.config.max_concurrency // spec.config.actors
    tasks_per_actor = math.ceil(slots_per_actor / ROWS_PER_TASK) + 1
    return dataset.map_batches(
        STAGES[spec.name],
        fn_constructor_args=(spec,),
        batch_size=ROWS_PER_BATCH,
        batch_format="pyarrow",
        num_cpus=IO_CPUS,
        compute=ActorPoolStrategy(
            size=spec.config.actors,
            max_concurrent_calls_per_actor=tasks_per_actor,
            max_tasks_in_flight_per_actor=tasks_per_actor + 1,
        ),
    )


def _check_output_columns(config: JobConfig, source_columns: list[str]) -> None:
    available = set(source_columns) | {ERROR, MESSAGES_COLUMN}
    for name in _active_stages(config):
        available |= set(STAGES[name].outputs)
    for column in config.output.columns:
        if column not in available:
            raise JobError(
                f"output.columns: {column!r} comes from neither the source nor a stage "
                f"(available: {', '.join(sorted(available))})"
            )


def _simulated(config: JobConfig) -> bool:
    return any(backend_for(stage).needs_simulator for stage in _active_stages(config).values())


def _read_candidates(
    config: JobConfig, folder: OutputFolder, metrics_name: str, source_files: ResolvedFiles, source_columns: list[str]
) -> tuple[ray.data.Dataset, list[str]]:
    """The rows the LLM stages work on, and their columns: the source, or for web corpora its
    filtered segments."""
    if config.segments is None:
        return read_source(config.source, metrics_name, source_files), source_columns
    counts = write_segments(config, folder, metrics_name, source_files)
    if not counts["kept"]:
        raise JobError(f"segments: the filter removed all {counts['rows_in']} documents of {config.source.uri}")
    return read_segments(folder)


def _with_messages(dataset: ray.data.Dataset, config: JobConfig) -> ray.data.Dataset:
    if MESSAGES_COLUMN not in config.output.columns:
        return dataset
    tag = WEB_TAG if config.augment is not None else SEED_TAG
    return map_blocks(dataset, add_messages, tag)


def _curate(config: JobConfig, folder: OutputFolder) -> dict | None:
    """Write the curated subsets (a4, a5, ...) and say what is in them."""
    subsets = config.curation.subsets
    if not subsets or "score" not in config.output.columns:
        return None
    seed = config.curation.seed
    curated = {
        "thresholds": dict(subsets),
        "subsets": write_subsets(folder, config.curation, config.output.min_rows_per_file),
        "seed": seed.uri if seed else None,
    }
    if "score_prev" in config.output.columns:  # a re-scoring run: who entered and left each subset
        curated["moves"] = subset_moves(folder, subsets)
    return curated


def _summary(config: JobConfig, folder: OutputFolder, metrics, started: float, state: str) -> dict:
    summary = build_summary(config, folder, ray.get(metrics.snapshot.remote()), started, state, _simulated(config))
    if config.segments is not None:
        summary["segments"] = filter_counts(folder)
    return summary


def _stop(error: Exception, config: JobConfig, folder: OutputFolder, metrics, started: float, state: str):
    """The run stopped early: leave a summary that says why (rows written so far stay checkpointed).
    A stage that stops the run records why in the metrics actor before it raises; any other error
    is read from the exception."""
    stop = ray.get(metrics.snapshot.remote()).stop
    kind, message = (stop.kind, stop.message) if stop else root_failure(error)
    summary = _summary(config, folder, metrics, started, state)
    summary.update(complete=False, stopped_by=kind, reason=message)
    write_summary(folder, summary)
    if stop is not None and stop.resumable:
        raise JobError(f"{message}; {summary['rows']} rows are written, run the same command again to resume") from None
    raise JobError(message) from None


def run_job(config: JobConfig) -> RunResult:
    started = time.time()
    _check_before_spending(config)
    configure_ray_data()
    with _simulators(config) as simulator_url:
        base_urls = {}
        for name, stage in _active_stages(config).items():
            backend = backend_for(stage)
            base_urls[name] = backend.resolve_base_url(stage, simulator_url)
            backend.probe(name, stage, base_urls[name])  # before the corpus is read or anything written
        # From the first file's head, before anything is written or any Ray work starts.
        source_files = resolve_files(config.source)  # once: for the Hub, it is several requests
        source_columns = require_columns(config.source, source_files, _required_columns(config))

        folder = OutputFolder(os.path.abspath(config.output.path))
        finish_compaction(folder)  # a run killed while it swapped in compacted shards
        state = folder.prepare(config.output.mode)
        if state == "skip":
            return RunResult(folder.root, state, None, None)

        metrics_name = f"backtrans-metrics-{uuid.uuid4().hex[:8]}"
        metrics = start_metrics(metrics_name)
        dataset, columns = _read_candidates(config, folder, metrics_name, source_files, source_columns)
        _check_output_columns(config, columns)
        # Reads give blocks of up to 128 KiB (sources.SOURCE_BLOCK_BYTES); the stages want 64 rows (ROWS_PER_TASK).
        dataset = dataset.repartition(target_num_rows_per_block=ROWS_PER_TASK)
        for name, stage in _active_stages(config).items():
            dataset = _add_stage(dataset, _stage_spec(name, stage, base_urls[name], metrics_name))
        try:
            with show_progress(config, metrics, folder, source_files):
                write_rows(_with_messages(dataset, config), folder, config.output)
        except Exception as error:
            _stop(error, config, folder, metrics, started, state)

    # Each of these is a Ray Data execution with seconds of fixed cost: run them side by side. The
    # summary and subsets read the committed shards, so the compacted ones are swapped in after them.
    with ThreadPoolExecutor(max_workers=1) as compaction:
        compacted = compaction.submit(write_compacted, folder, config.output.min_rows_per_file)
        summary = _summary(config, folder, metrics, started, state)
        if summary["rows"]:
            summary["curated"] = _curate(config, folder)
        compacted.result()
    finish_compaction(folder)
    if summary["scores"] is not None:
        plot_scores(summary["scores"], folder.plot, summary["simulated"])
        summary["plot"] = PLOT_FILE
    scoring_prompt = load_template(_template_path("score", config.score))
    with open(folder.card, "w", encoding="utf-8") as f:
        f.write(render_card(summary, config.hub.repo_id, scoring_prompt))
    write_summary(folder, summary)
    hub_repo = push(folder, config.hub) if config.hub.repo_id else None
    return RunResult(folder.root, state, summary, hub_repo)
