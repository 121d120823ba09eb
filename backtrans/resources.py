"""CPU requests for the job's I/O-bound work.

Ray Data hangs when actors hold every CPU of a small cluster (Ray issue #44687), and Ray's own
checkpoint filter actor takes a whole CPU that cannot be configured. Reads, LLM stage actors and
writes mostly wait on the network or disk, so each asks for a tenth of a CPU: on a 2-core laptop the
whole plan fits beside the checkpoint filter.
"""

IO_CPUS = 0.1
