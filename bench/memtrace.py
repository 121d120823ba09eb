"""Where the driver's memory goes: `backtrans run` under tracemalloc.

    python -m bench.memtrace OUT.json CONFIG.yaml [--set ...]

Runs the CLI in this process with tracemalloc on (5 frames), takes a snapshot once the pipeline
is under way (`--early-s` after start) and one when the write has finished (just before the run
summary is built), and writes to OUT.json: RSS and traced bytes at both points, and the allocation
sites that grew most between them. Python allocations only: Arrow buffers and Ray's C++ core are
not traced, so compare `traced` growth with `rss` growth to tell which side grows.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import tracemalloc

import psutil


def _point(snapshot: tracemalloc.Snapshot | None) -> dict:
    current, peak = tracemalloc.get_traced_memory()
    return {"rss_mb": psutil.Process().memory_info().rss / 2**20, "traced_mb": current / 2**20, "t": time.time()}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    early_s = 90.0
    if "--early-s" in argv:
        at = argv.index("--early-s")
        early_s = float(argv[at + 1])
        del argv[at : at + 2]
    out, cli_args = argv[0], argv[1:]
    tracemalloc.start(5)
    marks: dict = {}
    snaps: dict = {}

    def early() -> None:
        time.sleep(early_s)
        snaps["early"] = tracemalloc.take_snapshot()
        marks["early"] = _point(snaps["early"])

    threading.Thread(target=early, daemon=True).start()

    import backtrans.job as job

    build_summary = job.build_summary

    def traced_build_summary(*args, **kwargs):
        snaps["late"] = tracemalloc.take_snapshot()
        marks["late"] = _point(snaps["late"])
        return build_summary(*args, **kwargs)

    job.build_summary = traced_build_summary  # patched in this process only; the file is not changed

    from backtrans.cli import main as cli_main

    code = cli_main(["run", *cli_args])
    result = {"exit": code, "marks": marks, "grew": []}
    if "early" in snaps and "late" in snaps:
        snaps = {k: v.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)]) for k, v in snaps.items()}
        for stat in snaps["late"].compare_to(snaps["early"], "traceback")[:15]:
            result["grew"].append(
                {
                    "kb": round(stat.size_diff / 1024, 1),
                    "count": stat.count_diff,
                    "where": [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stat.traceback][::-1],
                }
            )
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    return code


if __name__ == "__main__":
    sys.exit(main())
