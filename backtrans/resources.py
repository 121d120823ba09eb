"""How the job's plans share a small machine: CPU requests for I/O-bound work, and Ray Data settings.

Ray Data hangs when actors hold every CPU of a small cluster (Ray issue #44687), and Ray's own
checkpoint filter actor takes a whole CPU that cannot be configured. Reads, LLM stage actors and
writes mostly wait on the network or disk, so each asks for a tenth of a CPU: on a 2-core laptop the
whole plan fits beside the checkpoint filter.
"""

import ray

IO_CPUS = 0.1
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


def repartition(dataset, rows_per_block: int):
    """`repartition(target_num_rows_per_block=...)` as a task of IO_CPUS: it only moves blocks, yet Ray
    gives it no num_cpus option and a whole CPU, which a 1-CPU node whose share the stage actors hold
    never frees. Private API (the logical operator's `ray_remote_args`), checked against Ray 2.60."""
    repartitioned = dataset.repartition(target_num_rows_per_block=rows_per_block)
    repartitioned._logical_plan.dag.ray_remote_args["num_cpus"] = IO_CPUS
    return repartitioned


def configure_ray_data() -> None:
    """Settings for every plan this driver builds from now on (`read_parquet` reads the driver's
    DataContext when it builds its plan)."""
    # Ray Data's V2 Parquet reader lists footers with a pool of up to 32 new actor processes per
    # `read_parquet` (RAY_DATA_PARQUET_FOOTER_NUM_ACTORS). On a 2-core machine that added ~14 s to a
    # run with a Parquet source and ~6 s to the reads that compact and curate every output
    # (BENCHMARKS.md). The V1 reader reads footers on the driver, or in tasks for many files, and
    # gives the same `row_hash` ids, so checkpoints stay valid.
    ray.data.DataContext.get_current().use_datasource_v2 = False
