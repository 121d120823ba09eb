"""backtrans in the `segments` regime: the web job's segment pass alone, as a fresh process.

    python -m bench.segments_backtrans JOB.yaml [--object-store-mb MB]

Starts a local Ray as `backtrans run` does and runs only the pass the web job runs before any
request (`write_segments`: length bounds, rules, exact and MinHash near dedup, the kept segments
written to `OutputFolder.segment_rows`). The pass's internals are being rewritten, so this calls
nothing of it but `write_segments(config, folder, metrics_name, files)`; the bench reads the kept
ids from `segment_rows` after this process has exited, so that reading them is not in its memory.

Prints one JSON line: the pass's counts, its seconds, Ray's CPUs, and what Ray's object store
spilled to disk over the session (the raylet's store stats, as Ray Data reads them for its own
`Dataset.stats()`). `--object-store-mb`: a smaller object store than Ray's default (30% of the
memory), to show the pass spilling to disk rather than failing when the store fills.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid


def object_store_stats() -> dict:
    """The session's object store totals so far, from the raylet (Ray's private API; Ray 2.60)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    stats = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats
    return {
        "spilled_bytes": int(stats.spilled_bytes_total),
        "spilled_objects": int(stats.spilled_objects_total),
        "restored_bytes": int(stats.restored_bytes_total),
        "fallback_bytes": int(stats.object_store_bytes_fallback),  # allocated on disk when the store was full
        "created_bytes": int(stats.cumulative_created_bytes),
        "capacity_bytes": int(stats.object_store_bytes_avail),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.segments_backtrans")
    parser.add_argument("config")
    parser.add_argument("--object-store-mb", type=int, default=None)
    args = parser.parse_args(argv)
    import ray

    from backtrans.config import load_config
    from backtrans.metrics import start_metrics
    from backtrans.output import OutputFolder
    from backtrans.resources import configure_ray_data, keep_idle_workers
    from backtrans.segments.filter_pass import write_segments
    from backtrans.sources import resolve_files

    config = load_config(args.config)
    # A local Ray of its own (as `backtrans run` starts without RAY_ADDRESS), never a cluster that
    # something else runs on this machine: the figures are of this pass alone.
    store = None if args.object_store_mb is None else args.object_store_mb * 1024 * 1024
    keep_idle_workers()  # as `backtrans run` does for its local Ray
    ray.init(address="local", log_to_driver=False, include_dashboard=False, object_store_memory=store)
    configure_ray_data()
    folder = OutputFolder.at(config.output.path)
    metrics_name = f"bench-segments-metrics-{uuid.uuid4().hex[:8]}"
    metrics = start_metrics(metrics_name)  # held: the actor lives while a handle does
    files = resolve_files(config.source)
    started = time.monotonic()
    counts = write_segments(config, folder, metrics_name, files)
    pass_s = time.monotonic() - started
    store = object_store_stats()
    cpus = ray.cluster_resources().get("CPU", 0)
    ray.kill(metrics)
    ray.shutdown()
    print(json.dumps({"counts": counts, "pass_s": round(pass_s, 2), "ray_cpus": cpus, "object_store": store}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
