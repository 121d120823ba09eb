"""How the job's plans share a small machine: CPU requests for I/O-bound work, and Ray Data settings.

Ray Data hangs when actors hold every CPU of a small cluster (Ray issue #44687), and Ray's own
checkpoint filter actor takes a whole CPU that cannot be configured. Reads, LLM stage actors and
writes mostly wait on the network or disk, so each asks for a tenth of a CPU: on a 2-core laptop the
whole plan fits beside the checkpoint filter.
"""

import logging
import math
import os

import ray
from ray.data import ActorPoolStrategy

IO_CPUS = 0.1
ROWS_PER_BATCH = 16
ASYNC_BATCHES_PER_TASK = 4  # Ray Data's default for async batch UDFs
# Rows per stage task: one task runs all its batches at once (the source reads blocks of this size).
ROWS_PER_TASK = ROWS_PER_BATCH * ASYNC_BATCHES_PER_TASK
# A stage actor is one event loop: it holds thousands of requests in flight, waiting requests cost
# memory, not CPU, and its CPU bounds how many requests per second it sends. It spends 2.6-3.9 ms of
# CPU per request (BENCHMARKS.md, api regime: the openai SDK's request path and Ray Data's batches).
ACTOR_CPU_S_PER_REQUEST = 0.003
# Past this share of its core an actor's loop reads its own replies late, and that counts as latency.
ACTOR_BUSY_SHARE = 0.8
# The reply time a stage's default actor count is planned for when no `requests_per_minute` bounds
# its rate: a hosted chat model's median for a few hundred tokens (the api regime's). A faster server
# makes the same `max_concurrency` send more per second; the run measures each actor's CPU, and says
# when the next run should set more `actors` (`busy_actors`).
PLANNED_LATENCY_S = 4.0
# What the plan holds besides the stage actors: Ray's checkpoint filter actor (a whole CPU, not
# configurable) and a read and a write task at a time.
OTHER_OPERATORS_CPUS = 1 + 2 * IO_CPUS
# The segment pass's rules run inside its read tasks (one per file, CPU-bound): a core each, less the
# tenth a write takes, so that a 1-CPU node runs one beside the write that commits its rows. As
# separate operators, Ray Data's resource allocator gave the write no CPU at all once the reads,
# the renames and the rules held their shares of 2 cores: at 2,000,000 documents nothing was
# committed while the rules' output piled up in the object store.
RULES_CPUS = 1 - IO_CPUS
# The segment pass's rules output blocks of this many documents, not the stages' blocks of about 64.
# Each block has a fixed cost: CPU in the driver and the workers, and the stats of every block an
# operator has output, which Ray Data's driver keeps to the end, so its memory grew with the corpus
# (bench/analysis.md, eighth session). A block is one commit of the default `output.commit_rows`, so a
# killed pass still loses only the blocks in flight.
RULES_BLOCK_ROWS = 1024
# Ray Data's shuffle map task partitions its input in batches of up to this many bytes
# (`DataContext.shuffle_input_batch_bytes`, 1 GiB by default) and holds a few times its batch: at the
# default the dedup's largest worker grew with the corpus. The reduce side holds one partition each
# (`segments.num_partitions`).
SHUFFLE_BATCH_BYTES = 128 * 1024 * 1024
# Ray kills a worker process that has been idle for a second once its node has more workers than its
# `num_workers_soft_limit`, by default its CPU count. These plans run tasks of IO_CPUS beside whole-CPU
# work (the segment pass's writes beside its rules; the stages' reads and writes beside their actors),
# so more tasks than CPUs: every short write task then started a new worker, 2-3 CPU-seconds of
# imports, and on 2 cores that churn took the CPU that a second rules task would have used. The
# limit is raised to as many IO_CPUS tasks as the CPUs hold. Ray reads it from this variable where
# its raylet starts: `backtrans run`'s local Ray, or each node's `ray start` (cluster/README.md).
WORKERS_SOFT_LIMIT_VARIABLE = "RAY_num_workers_soft_limit"


def workers_soft_limit(cpus: int) -> int:
    return math.ceil(cpus / IO_CPUS)


def keep_idle_workers(environ=os.environ) -> None:
    """Raise the worker soft limit of a Ray that this process starts (a value already set is kept)."""
    environ.setdefault(WORKERS_SOFT_LIMIT_VARIABLE, str(workers_soft_limit(os.cpu_count() or 1)))


# Compaction and the curated subsets run after the stages, when no actor holds a CPU: half a CPU
# runs two tasks per core (a tenth would start up to ten worker processes per core for a few seconds
# of work), and fits on a 1-CPU node that something else holds a share of.
AFTER_STAGES_CPUS = 0.5


def map_blocks(dataset, fn, *args, num_cpus: float = IO_CPUS):
    """A light per-block transform (renames, column picks): one call per block, so blocks keep the
    small size the stages and the checkpoint rely on (map_batches' default batch size merges them
    into blocks of thousands of rows), and IO_CPUS, so Ray fuses it into the task before it instead
    of scheduling it as an operator that waits for a whole CPU (`num_cpus`: the read's)."""
    return dataset.map_batches(fn, fn_args=args, batch_format="pyarrow", batch_size=None, num_cpus=num_cpus)


# Rows an actor holds per request it may have in flight. A task ends when its slowest row does, and a
# real API's latencies are heavy-tailed (p99 about 3x the mean): a task whose other rows are done
# still holds its place. With this many rows per slot waiting at the actor's Gate, the Gate
# (`max_concurrency`), not the number of tasks, bounds what is in flight. Waiting rows cost memory
# only, and nothing is paid for them until they are sent. Eight held C in flight too, but the rows
# then reached the next stage later (api regime, C=1,024: 0.71 of C/L against 0.77; bench/analysis.md).
ROWS_PER_SLOT = 4


def stage_pool(max_concurrency: int, actors: int) -> dict:
    """`map_batches` arguments for a stage's actor pool: Ray Data runs at most
    ASYNC_BATCHES_PER_TASK batches of one task at once, so each actor runs enough tasks side by side
    to hold ROWS_PER_SLOT rows per request slot of its share of `max_concurrency`."""
    tasks_per_actor = math.ceil(ROWS_PER_SLOT * (max_concurrency // actors) / ROWS_PER_TASK) + 1
    return {
        "batch_size": ROWS_PER_BATCH,
        "num_cpus": IO_CPUS,
        "compute": ActorPoolStrategy(
            size=actors,
            max_concurrent_calls_per_actor=tasks_per_actor,
            max_tasks_in_flight_per_actor=tasks_per_actor + 1,
        ),
    }


def default_actors(max_concurrency: int, requests_per_minute: int | None, cluster_cpus: float, stages: int) -> int:
    """Actors for a stage that sets none, from its CPU need: the requests per second it may send
    (`max_concurrency` / PLANNED_LATENCY_S, or its rate limit if lower) x CPU per request, at most
    ACTOR_BUSY_SHARE of a core each, and no more actors than the cluster has cores for its stages
    (a CPU-bound actor beyond them adds a process, not requests)."""
    per_second = max_concurrency / PLANNED_LATENCY_S
    if requests_per_minute is not None:
        per_second = min(per_second, requests_per_minute / 60)
    needed = math.ceil(per_second * ACTOR_CPU_S_PER_REQUEST / ACTOR_BUSY_SHARE)
    cores = math.floor((cluster_cpus - OTHER_OPERATORS_CPUS) / stages)
    return max(1, min(needed, cores, max_concurrency))


def busy_actors(actors: int, cpu_s: float, seconds: float) -> int | None:
    """The actors a stage should have had, when its `actors` spent more than ACTOR_BUSY_SHARE of a
    core each over `seconds` (`cpu_s`: their CPU, measured); None when they had CPU to spare."""
    if seconds <= 0 or cpu_s / (actors * seconds) <= ACTOR_BUSY_SHARE:
        return None
    return math.ceil(cpu_s / (seconds * ACTOR_BUSY_SHARE))


def plan_cpus(stage_actors: dict[str, int]) -> float:
    """CPUs the stages' plan holds at once with these actors per stage."""
    return sum(stage_actors.values()) * IO_CPUS + OTHER_OPERATORS_CPUS


def repartition(dataset, rows_per_block: int, num_cpus: float = IO_CPUS):
    """`repartition(target_num_rows_per_block=...)` as a task of `num_cpus`: it only moves blocks, yet
    Ray gives it no num_cpus option and a whole CPU, which a 1-CPU node whose share the stage actors
    hold never frees. With the CPUs of the map before it, Ray fuses it into that map's tasks. Private
    API (the logical operator's `ray_remote_args`), checked against Ray 2.60."""
    repartitioned = dataset.repartition(target_num_rows_per_block=rows_per_block)
    repartitioned._logical_plan.dag.ray_remote_args["num_cpus"] = num_cpus
    return repartitioned


def configure_ray_data() -> None:
    """Settings for every plan this driver builds from now on (`read_parquet` reads the driver's
    DataContext when it builds its plan)."""
    # Ray Data's V2 Parquet reader lists footers with a pool of up to 32 new actor processes per
    # `read_parquet` (RAY_DATA_PARQUET_FOOTER_NUM_ACTORS). On a 2-core machine that added ~14 s to a
    # run with a Parquet source and ~6 s to the reads that compact and curate every output
    # (BENCHMARKS.md). The V1 reader reads footers on the driver, or in tasks for many files, and
    # gives the same `row_hash` ids, so checkpoints stay valid.
    context = ray.data.DataContext.get_current()
    context.use_datasource_v2 = False
    # backtrans prints its own progress line (progress.py). Ray Data's bars count blocks under a
    # "row/s" label; without a terminal they become a progress log every 10 s ("Progress will be
    # logged because stdout is a non-interactive terminal"); this switch turns off both, and the
    # "Parquet dataset sampling" bars of every `read_parquet` (its ProgressBar reads it too).
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False  # the plan of every execution, at INFO
    # Ray Data starts a thread per map task that reads the process's memory every second, for its
    # stats. A stage actor runs hundreds of tasks at once (`stage_pool`), so hundreds of such threads
    # took the GIL from the event loop that sends the requests: at 4,096 in flight, 100,000 rows, the
    # generate actor had 865 threads and stopped reading its replies until they timed out (BENCHMARKS.md).
    context.memory_usage_poll_interval_s = None
    dataset_logger = logging.getLogger("ray.data.dataset")
    if not any(isinstance(f, _NoFalseCpuWarning) for f in dataset_logger.filters):
        dataset_logger.addFilter(_NoFalseCpuWarning())


class _NoFalseCpuWarning(logging.Filter):
    """Drops Ray Data's "The Ray cluster currently does not have any available CPUs. The Dataset job
    will hang" warning. Ray checks `ray.available_resources()` once as each execution starts; after
    the stages, compaction and the curated subsets start side by side, each with a 1-CPU read and a
    1-CPU footer-sampling task, so on a 2-core machine one of them finds 0 CPUs free for the second
    those tasks take, and never hangs. (The stage pools hold no CPU by then: they are gone when the
    stages' write returns.) A run that does stall shows it in the progress line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "does not have any available CPUs" not in record.getMessage()
