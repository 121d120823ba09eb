"""Build and run the job from its config, top to bottom:
source -> [segments -> augment | generate] -> score -> keep columns -> Parquet shards
       -> curated subsets -> card + plot + summary -> [Hub].
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import ray

from backtrans.backends import backend_for
from backtrans.cache import compact as compact_cache
from backtrans.card import render_card
from backtrans.compaction import finish_compaction, write_compacted
from backtrans.config import JobConfig, StageConfig
from backtrans.curated import add_messages, subset_moves, with_origin, write_subsets
from backtrans.errors import Secret, root_failure
from backtrans.hub import check_access, push
from backtrans.metrics import start_metrics
from backtrans.output import PLOT_FILE, OutputFolder, write_rows
from backtrans.pacing import budget_left
from backtrans.plot import plot_scores
from backtrans.progress import show_progress
from backtrans.prompts import BACKWARD, INSTRUCTION, SEGMENT, SELF_CURATION, SELF_CURATION_JSON, load_template, render
from backtrans.resources import (
    ROWS_PER_TASK,
    configure_ray_data,
    default_actors,
    map_blocks,
    plan_cpus,
    repartition,
    stage_pool,
)
from backtrans.schema import ERROR, MESSAGES, ORIGIN, ORIGIN_SEED, ORIGIN_WEB, SCORE, SCORE_PREV, BacktransError
from backtrans.segments.filter_pass import filter_counts, read_segments, write_segments
from backtrans.sources import ResolvedFiles, read_source, require_columns, resolve_files
from backtrans.stages import AugmentStage, GenerateStage, LLMStage, ScoreStage, StageSpec
from backtrans.summary import (
    CuratedSummary,
    Phases,
    RunSummary,
    Spent,
    build_summary,
    read_contents,
    read_summary,
    write_summary,
)

logger = logging.getLogger("backtrans")

STAGES: dict[str, type[LLMStage]] = {"augment": AugmentStage, "generate": GenerateStage, "score": ScoreStage}
DEFAULT_TEMPLATES = {"augment": BACKWARD, "generate": INSTRUCTION, "score": SELF_CURATION}


class JobError(BacktransError):
    """The job cannot run as configured, or stopped; a one-line reason."""


@dataclass(frozen=True)
class RunResult:
    output_path: str
    state: str  # "skip" (complete already) | "push" (complete already, pushed now) | "fresh" | "resume"
    summary: RunSummary


def _template_path(name: str, stage: StageConfig) -> str:
    if stage.template:
        return stage.template
    if name == "augment" and stage.prompt == "bare":
        return str(SEGMENT)
    if name == "score" and stage.method == "json":
        return str(SELF_CURATION_JSON)
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


def _stage_actors(config: JobConfig, cluster: float) -> dict[str, int]:
    """Each stage's actors: its `actors`, or as many as its CPU need asks for on a cluster of
    `cluster` CPUs."""
    stages = config.llm_stages()
    return {
        name: min(stage.actors, stage.max_concurrency)
        if stage.actors
        else default_actors(stage.max_concurrency, stage.requests_per_minute, cluster, len(stages))
        for name, stage in stages.items()
    }


def _check_fits(actors: dict[str, int], cluster: float) -> None:
    """Refuse, before any request, a plan that asks for more CPU than the cluster has: Ray Data
    would wait forever for the actors it cannot place (Ray issue #44687)."""
    if actors and plan_cpus(actors) > cluster:
        most = max(actors, key=actors.get)
        raise JobError(
            f"{most}.actors: the stages' {sum(actors.values())} actors and the other operators need "
            f"{plan_cpus(actors):g} CPUs, the cluster has {cluster:g}; set fewer actors"
        )


def _stage_spec(
    name: str, stage: StageConfig, actors: int, base_url: str | None, metrics_name: str, output_path: str
) -> StageSpec:
    api_key = backend_for(stage).api_key(stage, name)  # here: only the driver's environment is sure to have it
    return StageSpec(
        name=name,
        config=stage.model_copy(update={"actors": actors}),
        base_url=base_url,
        template_path=_template_path(name, stage),
        metrics_actor=metrics_name,
        output_path=output_path,
        api_key=Secret(api_key) if api_key else None,
    )


def _add_stage(dataset: ray.data.Dataset, spec: StageSpec) -> ray.data.Dataset:
    return dataset.map_batches(
        STAGES[spec.name],
        fn_constructor_args=(spec,),
        batch_format="pyarrow",
        **stage_pool(spec.config.max_concurrency, spec.config.actors),
    )


def _check_output_reachable(config: JobConfig, folder: OutputFolder) -> None:
    """Write tasks run on every node: a local folder there would scatter the shards over their disks."""
    nodes = sum(node["Alive"] for node in ray.nodes())
    if folder.is_local and nodes > 1 and not config.output.shared:
        raise JobError(
            f"output.path {config.output.path} is a local folder and the cluster has {nodes} nodes: use object "
            "storage (s3://...) or set output.shared: true for a folder every node mounts"
        )


def _check_output_columns(config: JobConfig, source_columns: list[str]) -> None:
    available = set(source_columns) | {ERROR, MESSAGES, ORIGIN}
    for name in config.llm_stages():
        available |= set(STAGES[name].outputs)
    for column in config.output.columns:
        if column not in available:
            raise JobError(
                f"output.columns: {column!r} comes from neither the source nor a stage "
                f"(available: {', '.join(sorted(available))})"
            )


def _simulated(config: JobConfig) -> bool:
    return any(backend_for(stage).needs_simulator for stage in config.llm_stages().values())


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
    return read_segments(config, folder)


def _kept_columns(config: JobConfig) -> list[str]:
    """`output.columns`, plus `origin` before `messages` when `messages` is kept without it: the tag
    must stay with the row, so that reading the output again (a re-score) keeps it."""
    columns = list(config.output.columns)
    if MESSAGES in columns and ORIGIN not in columns:
        columns.insert(columns.index(MESSAGES), ORIGIN)
    return columns


def _as_pairs(dataset: ray.data.Dataset, config: JobConfig) -> ray.data.Dataset:
    """Each row's `origin`, set where the pair is made (the augment stage writes web pairs; other
    sources are seed pairs unless they say otherwise), and `messages` tagged by it."""
    made_here = config.augment is not None
    dataset = map_blocks(dataset, with_origin, ORIGIN_WEB if made_here else ORIGIN_SEED, made_here)
    return map_blocks(dataset, add_messages) if MESSAGES in config.output.columns else dataset


def _curate(config: JobConfig, folder: OutputFolder, rows: int) -> CuratedSummary | None:
    """Write the curated subsets (a4, a5, ...) and say what is in them."""
    subsets = config.curation.subsets
    if not rows or not subsets or SCORE not in config.output.columns:
        return None
    seed = config.curation.seed
    return CuratedSummary(
        thresholds=dict(subsets),
        subsets=write_subsets(folder, config.curation, config.output.min_rows_per_file),
        seed=seed.uri if seed else None,
        # a re-scoring run: who entered and left each subset
        moves=subset_moves(folder, subsets) if SCORE_PREV in config.output.columns else None,
    )


def _timed(fn, *args) -> float:
    started = time.time()
    fn(*args)
    return round(time.time() - started, 2)


def _summary(
    config: JobConfig, folder: OutputFolder, metrics, state: str, started: float, phases: Phases, contents, **passes
) -> RunSummary:
    """The run's summary from what its passes returned (`passes`: curated, plot, stop)."""
    snapshot = ray.get(metrics.snapshot.remote())
    segments = filter_counts(folder) if config.segments is not None else None
    return build_summary(
        config,
        contents,
        snapshot,
        state=state,
        simulated=_simulated(config),
        started=started,
        phases=phases,
        segments=segments,
        **passes,
    )


def _budgets_left(config: JobConfig, spent_before: dict[str, Spent]) -> JobConfig:
    """Each stage's budgets less what earlier runs of this output spent (pacing.budget_left)."""
    left = {}
    for name, stage in config.llm_stages().items():
        spent = spent_before.get(name, Spent())
        left[name] = budget_left(name, stage, spent.requests, spent.tokens)
    return config.model_copy(update=left)


def _stop(error: Exception, config: JobConfig, folder: OutputFolder, metrics, state: str, started: float, phases,
          spent_before: dict[str, Spent]):  # fmt: skip
    """The run stopped early: leave a summary that says why (rows written so far stay checkpointed).
    A stage that stops the run records why in the metrics actor before it raises; any other error
    is read from the exception."""
    stop = ray.get(metrics.snapshot.remote()).stop
    kind, message = (stop.kind, stop.message) if stop else root_failure(error)
    contents = read_contents(folder, SCORE in config.output.columns)
    summary = _summary(
        config, folder, metrics, state, started, phases, contents, stop=(kind, message), spent_before=spent_before
    )
    write_summary(folder, summary)
    if stop is not None and stop.resumable:
        raise JobError(f"{message}; {summary.rows} rows are written, run the same command again to resume") from None
    raise JobError(message) from None


def _publish(config: JobConfig, folder: OutputFolder, summary: RunSummary, repo_id: str | None) -> RunSummary:
    """The output's last step: the card and the summary (the completion marker), then the push to
    `repo_id` if set. A complete output that was not pushed there comes here again on a re-run."""
    # As sent, with the placeholders shown: the JSON prompt's literal braces are doubled in its file.
    scoring_prompt = render(load_template(_template_path("score", config.score)), instruction="{instruction}",
                            generation="{generation}")  # fmt: skip
    folder.write_text(folder.card, render_card(summary, repo_id, scoring_prompt))
    write_summary(folder, summary)
    if repo_id is None:
        return summary
    started = time.time()
    pushed = push(folder, config.hub, repo_id)
    seconds = round(time.time() - started, 2)
    phases = summary.phases.model_copy(update={"push": seconds})
    summary = summary.model_copy(
        update={"pushed": pushed, "phases": phases, "seconds": round(summary.seconds + seconds, 2)}
    )
    write_summary(folder, summary)  # the local record; the repo's copy says it was not yet pushed
    return summary


def run_job(config: JobConfig, started: float | None = None) -> RunResult:
    """`started`: when the process started (the CLI's entry), so the summary's start-up phase
    includes the imports and Ray's start."""
    started = time.time() if started is None else started
    folder = OutputFolder.at(config.output.path)
    _check_output_reachable(config, folder)
    repo_id = check_access(config.hub) if config.hub.repo_id else None  # before any request is spent
    done = read_summary(folder) if config.output.mode == "resume" else None
    if done is not None and done.complete:
        if repo_id is None or (done.pushed is not None and done.pushed.repo == repo_id):
            return RunResult(folder.uri, "skip", done)
        return RunResult(folder.uri, "push", _publish(config, folder, done, repo_id))  # no LLM request
    spent_before = done.spent if done is not None else {}  # what earlier, unfinished runs spent
    budgeted = _budgets_left(config, spent_before)  # the stages' budgets; the summary keeps the user's config
    configure_ray_data()
    cluster = ray.cluster_resources().get("CPU", 0)
    actors = _stage_actors(config, cluster)
    _check_fits(actors, cluster)
    with _simulators(config) as simulator_url:
        base_urls = {}
        for name, stage in config.llm_stages().items():
            backend = backend_for(stage)
            base_urls[name] = backend.resolve_base_url(stage, simulator_url)
            backend.probe(name, stage, base_urls[name])  # before the corpus is read or anything written
        # From the first file's head, before anything is written or any Ray work starts.
        source_files = resolve_files(config.source)  # once: for the Hub, it is several requests
        source_columns = require_columns(config.source, source_files, _required_columns(config))

        finish_compaction(folder)  # a run killed while it swapped in compacted shards
        state = folder.prepare(config.output.mode)
        metrics_name = f"backtrans-metrics-{uuid.uuid4().hex[:8]}"
        metrics = start_metrics(metrics_name)
        reading = time.time()
        phases = Phases(startup=round(reading - started, 2))
        dataset, columns = _read_candidates(config, folder, metrics_name, source_files, source_columns)
        _check_output_columns(config, columns)
        # Reads give blocks of up to 128 KiB (sources.SOURCE_BLOCK_BYTES); the stages want 64 rows (ROWS_PER_TASK).
        dataset = repartition(dataset, ROWS_PER_TASK)
        for name, stage in budgeted.llm_stages().items():
            compact_cache(folder, name)  # before its actors start and load it
            dataset = _add_stage(
                dataset, _stage_spec(name, stage, actors[name], base_urls[name], metrics_name, config.output.path)
            )
        try:
            with show_progress(config, metrics, folder, source_files):
                write_rows(_as_pairs(dataset, config), folder, config.output, _kept_columns(config))
        except Exception as error:
            stages = round(time.time() - reading, 2)
            phases = phases.model_copy(update={"stages": stages})
            _stop(error, config, folder, metrics, state, started, phases, spent_before)
    written = time.time()

    # Each of these is a Ray Data execution with seconds of fixed cost: run them side by side. The
    # summary and subsets read the committed shards, so the compacted ones are swapped in after them.
    with ThreadPoolExecutor(max_workers=1) as compaction:
        compacted = compaction.submit(_timed, write_compacted, folder, config.output.min_rows_per_file)
        contents = read_contents(folder, SCORE in config.output.columns)
        curated = _curate(config, folder, contents.rows)
        curate_seconds = time.time() - written
        compaction_seconds = compacted.result()
    compaction_seconds += _timed(finish_compaction, folder)
    plotting = time.time()
    if contents.scores is not None:
        folder.write_bytes(folder.plot, plot_scores(contents.scores, _simulated(config), contents.expected))
    phases = phases.model_copy(
        update={
            "stages": round(written - reading, 2),
            "write_curate": round(curate_seconds + time.time() - plotting, 2),
            "compaction": compaction_seconds,
        }
    )
    plot = PLOT_FILE if contents.scores is not None else None
    summary = _summary(
        config, folder, metrics, state, started, phases, contents, curated=curated, plot=plot, spent_before=spent_before
    )
    published = _publish(config, folder, summary, repo_id)
    if not config.output.keep_cache:  # every row is written: no request of this output is sent again
        folder.delete_dir(folder.cache)
    return RunResult(folder.uri, state, published)
