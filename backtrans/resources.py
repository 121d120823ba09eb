"""CPU requests for the job's I/O-bound work.

Ray Data hangs when actors hold every CPU of a small cluster (Ray issue #44687), and Ray's own
checkpoint filter actor takes a whole CPU that cannot be configured. Reads, LLM stage actors and
writes mostly wait on the network or disk, so each asks for a tenth of a CPU: on a 2-core laptop the
whole plan fits beside the checkpoint filter.
"""

IO_CPUS = 0.1


def map_blocks(dataset, fn, *args):
    """A light per-block transform (renames, column picks): one call per block, so blocks keep the
    small size the stages and the checkpoint rely on (map_batches' default batch size merges them
    into blocks of thousands of rows), and IO_CPUS, so Ray fuses it into the task before it instead
    of scheduling it as an operator that waits for a whole CPU."""
    return dataset.map_batches(fn, fn_args=args, batch_format="pyarrow", batch_size=None, num_cpus=IO_CPUS)
