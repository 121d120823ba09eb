"""`python -m tests.segments.pass_driver OUTPUT SOURCE CALLS`: the segment pass of the web demo's job
on its own local Ray, as a run that a test can SIGKILL; each row the rules run on adds a line to CALLS."""

import json
import sys

import ray

from backtrans.segments import filter_pass
from tests.segments.data import pass_config, rules_logging_their_first, segment_pass


def main(output: str, source: str, calls: str) -> None:
    filter_pass.RowRules = rules_logging_their_first(calls)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # its own, killable
    counts, _ = segment_pass(pass_config(output, source))
    print(json.dumps(counts))


if __name__ == "__main__":
    main(*sys.argv[1:])
