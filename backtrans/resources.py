"""How the job's plans share a small machine: CPU requests for I/O-bound work, and Ray Data settings.

Ray Data hangs when actors hold every CPU of a small cluster (Ray issue #44687), and Ray's own
checkpoint filter actor takes a whole CPU that cannot be configured. Reads, LLM stage actors and
writes mostly wait on the network or disk, so each asks for a tenth of a CPU: on a 2-core laptop the
whole plan fits beside the checkpoint filter.
"""

import math

import ray
from ray.data import ActorPoolStrategy

IO_CPUS = 0.1
ROWS_PER_BATCH = 16
ASYNC_BATCHES_PER_TASK = 4  # Ray Data's default for async batch UDFs
# Rows per stage task: one task runs all its batches at once (the source reads blocks of this size).
ROWS_PER_TASK = ROWS_PER_BATCH * ASYNC_BATCHES_PER_TASK
# Actors per stage when `actors` is not set. An actor is one event loop that holds thousands of
# requests in flight at about 1 ms of CPU each (BENCHMARKS.md): one actor keeps up with ~1,000
# requests per second, i.e. 4,000 in flight at a 4 s latency. In-flight requests cost memory, not
# CPU, so max_concurrency does not add actors; a stage that needs more CPU than one core sets `actors`.
DEFAULT_ACTORS = 1
# What the plan holds besides the stage actors: Ray's checkpoint filter actor (a whole CPU, not
# configurable) and a read and a write task at a time.
OTHER_OPERATORS_CPUS = 1 + 2 * IO_CPUS
# Compaction and the curated subsets run after the stages, when no actor holds a CPU: Ray's default
# of a whole CPU per task runs one task per core, where a tenth of a CPU would start up to ten
# worker processes per core for a few seconds of work.
AFTER_STAGES_CPUS = 1


def map_blocks(dataset, fn, *args, num_cpus: float = IO_CPUS):
    """A light per-block transform (renames, column picks): one call per block, so blocks keep the
    small size the stages and the checkpoint rely on (map_batches' default batch size merges them
    into blocks of thousands of rows), and IO_CPUS, so Ray fuses it into the task before it instead
    of scheduling it as an operator that waits for a whole CPU (`num_cpus`: the read's)."""
    return dataset.map_batches(fn, fn_args=args, batch_format="pyarrow", batch_size=None, num_cpus=num_cpus)


def stage_pool(max_concurrency: int, actors: int) -> dict:
    """`map_batches` arguments for a stage's actor pool: Ray Data runs at most
    ASYNC_BATCHES_PER_TASK batches of one task at once, so each actor runs enough tasks side by side
    that its share of `max_concurrency` stays in flight while finished batches leave."""
    tasks_per_actor = math.ceil(max_concurrency // actors / ROWS_PER_TASK) + 1
    return {
        "batch_size": ROWS_PER_BATCH,
        "num_cpus": IO_CPUS,
        "compute": ActorPoolStrategy(
            size=actors,
            max_concurrent_calls_per_actor=tasks_per_actor,
            max_tasks_in_flight_per_actor=tasks_per_actor + 1,
        ),
    }


def plan_cpus(stage_actors: dict[str, int]) -> float:
    """CPUs the stages' plan holds at once with these actors per stage."""
    return sum(stage_actors.values()) * IO_CPUS + OTHER_OPERATORS_CPUS


def configure_ray_data() -> None:
    """Settings for every plan this driver builds from now on (`read_parquet` reads the driver's
    DataContext when it builds its plan)."""
    # Ray Data's V2 Parquet reader lists footers with a pool of up to 32 new actor processes per
    # `read_parquet` (RAY_DATA_PARQUET_FOOTER_NUM_ACTORS). On a 2-core machine that added ~14 s to a
    # run with a Parquet source and ~6 s to the reads that compact and curate every output
    # (BENCHMARKS.md). The V1 reader reads footers on the driver, or in tasks for many files, and
    # gives the same `row_hash` ids, so checkpoints stay valid.
    ray.data.DataContext.get_current().use_datasource_v2 = False
