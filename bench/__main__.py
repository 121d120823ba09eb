"""`python -m bench`: throughput, client CPU, memory and start-up of the job against its limit and its peers.

    python -m bench                          # everything (about 15 minutes on 2 cores)
    python -m bench --quick                  # one small run per regime (about 4 minutes)
    python -m bench --regime saturation --n 2000
    python -m bench --regime peers --peer-n 1000
    python -m bench --regime api --api-n 20000    # log-normal latencies (median 4 s, p99 ~15 s), C = 1,024 and 4,096
    python -m bench --regime segments --segments-n 20000 --budget-s 3600   # segment dedup vs datatrove
    python -m bench --report-only            # rebuild BENCHMARKS.md and the plot from bench/results.json

Each run is a fresh process with its own local Ray session, talking to a fresh simulator subprocess
(`keep_log=False`) with a fixed latency. Figures are merged into bench/results.json (a run replaces
the earlier run with the same key), then BENCHMARKS.md and bench/throughput.png are written from it.
The `segments` regime (bench/segments.py) runs no simulator: backtrans's segment pass and datatrove's
MinHash pipeline on one labelled corpus per N (its figures under results.json's `segments`, its plot
bench/segments.png). Its default N (20,000, 200,000, 2,000,000) take hours on 2 cores: give it the
--budget-s it needs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report, segments
from bench.runs import REPO, run_backtrans, run_distilabel, run_raydata_llm
from bench.workload import write_rows

REGIMES = ("saturation", "overhead", "peers", "client", "profile", "api", "segments")
# The api regime: a real API's latencies, log-normal with a 4 s median and sigma 0.57 (p99 ~15 s).
API_LATENCY_MS = 4000.0
API_SIGMA = 0.57
DEFAULT_REGIMES = ("saturation", "overhead", "peers", "client")
PEERS = ("distilabel", "ray.data.llm")
RESULTS = REPO / "bench" / "results.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--regime", action="append", choices=REGIMES, help="run only these (repeatable)")
    parser.add_argument("--quick", action="store_true", help="small N everywhere: a smoke run of every regime")
    parser.add_argument("--n", type=int, action="append", help="saturation N (repeatable; default 2000 20000 100000)")
    parser.add_argument("--overhead-n", type=int, default=20_000)
    parser.add_argument("--peer-n", type=int, default=2_000, help="rows for each peer (default 2000)")
    parser.add_argument("--peer", action="append", choices=PEERS, help="only these peers (repeatable)")
    parser.add_argument("--concurrency", type=int, default=64, help="C, max in flight per stage")
    parser.add_argument("--saturation-latency-ms", type=float, default=250.0)
    parser.add_argument("--overhead-latency-ms", type=float, default=20.0)
    parser.add_argument("--api-n", type=int, action="append", help="api N (repeatable; default 20000 100000)")
    parser.add_argument(
        "--api-concurrency", type=int, action="append", help="api C per stage (repeatable; default 1024 4096)"
    )
    parser.add_argument(
        "--segments-n", type=int, action="append", help="segments N (repeatable; default 20000 200000 2000000)"
    )
    parser.add_argument(
        "--segments-system", action="append", choices=segments.SYSTEMS, help="only these systems (repeatable)"
    )
    parser.add_argument(
        "--segments-object-store-mb",
        type=int,
        help="also run backtrans at each segments N on an object store of this size (Ray's floor: 75)",
    )
    parser.add_argument("--actors", type=int, default=None, help="stage actors (default: the config's default)")
    parser.add_argument("--budget-s", type=float, default=900.0, help="wall-clock budget for all runs")
    parser.add_argument(
        "--profile", action="store_true", help="add a py-spy profiled overhead run (same as --regime profile)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--plot", type=Path, default=REPO / "bench" / "throughput.png")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None, help="keep rows, outputs and logs here")
    return parser


def _load(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"runs": {}, "segments": {}, "client": {}, "profiles": {}, "environment": {}}


def _save(path: Path, results: dict) -> None:
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def _plan(args) -> list[tuple]:
    """(key, regime, system, n, latency_ms, extra) in the order they run: cheap and central first,
    the N=100,000 run last, so it gets what is left of the budget."""
    regimes = list(args.regime or DEFAULT_REGIMES) + (["profile"] if args.profile else [])
    sat_n = args.n or ([2_000] if args.quick else [2_000, 20_000, 100_000])
    overhead_n = 2_000 if args.quick else args.overhead_n
    peer_n = 500 if args.quick else args.peer_n
    peers = args.peer or list(PEERS)
    sat_l, over_l = args.saturation_latency_ms, args.overhead_latency_ms
    plan = []
    if "saturation" in regimes:
        plan += [(f"saturation/backtrans/{n}", "saturation", "backtrans", n, sat_l, {}) for n in sorted(sat_n)]
    if "overhead" in regimes:
        plan.append((f"overhead/backtrans/{overhead_n}", "overhead", "backtrans", overhead_n, over_l, {}))
    if "peers" in regimes:
        if "distilabel" in peers:
            plan.append((f"overhead/distilabel/{peer_n}", "overhead", "distilabel", peer_n, over_l, {}))
        if "ray.data.llm" in peers:
            # as its docs say for C in flight (concurrency=C, Ray Data's default of 1 CPU per actor)
            plan.append((f"overhead/ray.data.llm/{peer_n}", "overhead", "ray.data.llm", peer_n, over_l, {}))
            # the same with the fractional CPU the project gives its actors, so that it can run here
            plan.append(
                (f"overhead/ray.data.llm-0.25cpu/{peer_n}", "overhead", "ray.data.llm", peer_n, over_l, {"cpus": 0.25})
            )
    if "api" in regimes:
        api_n = args.api_n or ([2_000] if args.quick else [20_000, 100_000])
        for c in args.api_concurrency or [1_024, 4_096]:
            extra = {"concurrency": c, "sigma": API_SIGMA}
            plan += [(f"api/backtrans-c{c}/{n}", "api", "backtrans", n, API_LATENCY_MS, extra) for n in sorted(api_n)]
    if "segments" in regimes:
        segments_n = args.segments_n or list(segments.QUICK_N if args.quick else segments.DEFAULT_N)
        for n in sorted(segments_n):  # both systems on one corpus, one after the other
            systems = args.segments_system or segments.SYSTEMS
            plan += [(f"segments/{system}/{n}", "segments", system, n, None, {}) for system in systems]
            if args.segments_object_store_mb:
                mb = args.segments_object_store_mb
                plan.append((f"segments/backtrans-store{mb}mb/{n}", "segments", "backtrans", n, None, {"store_mb": mb}))
    plan.sort(key=lambda item: item[3] >= 100_000)  # the long runs go last
    if "profile" in regimes:
        plan.append(("profile/backtrans", "profile", "backtrans", min(overhead_n, 5_000), over_l, {}))
    return plan


def _run_one(item, args, workdir: Path, deadline: float, results: dict) -> dict | None:
    key, regime, system, n, latency_ms, extra = item
    remaining = deadline - time.monotonic()
    if remaining < 120:
        print(f"skip {key}: only {remaining:.0f} s of --budget-s left (raise --budget-s to run it)", flush=True)
        return None
    if regime == "segments":
        corpus = segments.corpus_for(workdir, n)
        print(f"run  {key} (budget left {deadline - time.monotonic():.0f} s)", flush=True)
        run_dir = workdir / key.replace("/", "-")
        timeout_s = deadline - time.monotonic()
        figures = segments.run(system, corpus, run_dir, timeout_s=timeout_s, object_store_mb=extra.get("store_mb"))
        figures["invocation"] = results["environment"]["date"]  # the ratio is only taken within one invocation
        figures["key"] = key
        figures["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        return figures
    rows = write_rows(workdir / f"rows-{n}.jsonl", n)
    run_dir = workdir / key.replace("/", "-")
    c = extra.get("concurrency", args.concurrency)
    print(f"run  {key} (L={latency_ms:g} ms, C={c}, budget left {remaining:.0f} s)", flush=True)
    if system == "backtrans":
        profile = None
        if regime == "profile":
            profile = {"dir": str(run_dir / "pyspy"), "delay_s": 3, "duration_s": 10}
        figures = run_backtrans(
            rows,
            n,
            latency_ms,
            c,
            run_dir,
            actors=args.actors,
            timeout_s=remaining,
            profile=profile,
            latency_sigma=extra.get("sigma", 0.0),
        )
        if profile is not None:
            results["profiles"] = _profile_summaries(Path(profile["dir"]))
            return None
    elif system == "distilabel":
        figures = run_distilabel(rows, n, latency_ms, c, run_dir, timeout_s=remaining)
    else:
        stall = 60.0
        figures = run_raydata_llm(
            rows, n, latency_ms, c, run_dir, timeout_s=remaining, num_cpus=extra.get("cpus"), stall_s=stall
        )
    figures["regime"] = regime
    figures["key"] = key
    figures["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return figures


def _profile_summaries(folder: Path) -> dict:
    from bench.pyspy_summary import summarize

    out = {}
    for file in sorted(folder.glob("*.txt")):
        summary = summarize(file, top=12)
        if summary["samples"]:
            out[file.stem.split("-", 1)[1]] = summary
    return out


def _client_regime(args, results: dict) -> None:
    from backtrans.simulator import SimulatorConfig, start_subprocess

    n = 1_000 if args.quick else 3_000
    with start_subprocess(SimulatorConfig(latency_ms=args.overhead_latency_ms, keep_log=False)) as sim:
        for mode in ("endpoint", "sdk", "aiohttp"):
            argv = [sys.executable, "-m", "bench.client", "--mode", mode, "--url", sim.url, "--n", str(n)]
            argv += ["--c", str(args.concurrency)]
            done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300)
            if done.returncode != 0:
                results["client"][mode] = {"error": done.stderr.strip().splitlines()[-1:]}
                continue
            results["client"][mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"client {mode}: {results['client'][mode]}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "bench.startup"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    if done.returncode == 0:
        results["startup"] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"ray start-up floor: {results['startup']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    results = _load(args.results)
    if not args.report_only:
        started = time.monotonic()
        deadline = started + args.budget_s
        results["environment"] = report.environment()
        with tempfile.TemporaryDirectory(prefix="backtrans-bench-") as tmp:
            workdir = args.workdir or Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            if "client" in (args.regime or DEFAULT_REGIMES):
                _client_regime(args, results)
                _save(args.results, results)
            for item in _plan(args):
                figures = _run_one(item, args, workdir, deadline, results)
                if figures is not None:
                    # the segments regime's figures have their own shape: their own table
                    runs = results.setdefault("segments", {}) if figures["regime"] == "segments" else results["runs"]
                    key = figures["key"]
                    earlier = runs.get(key)
                    if "ended" in figures and earlier is not None and "ended" not in earlier:
                        key = figures["key"] = key + "/partial"  # keep the complete run under the key
                    runs[key] = figures
                    print(report.one_line(figures), flush=True)
                _save(args.results, results)
        results["environment"]["bench_wall_s"] = round(time.monotonic() - started, 1)
        results.setdefault("invocations", []).append(
            {
                "argv": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
                "date": results["environment"]["date"],
                "wall_s": results["environment"]["bench_wall_s"],
                "load_avg_at_start": results["environment"]["load_avg_at_start"],
                "git": results["environment"]["git"],
            }
        )
        _save(args.results, results)
    print()
    print(report.table(results))
    if results.get("segments"):
        print()
        print("\n".join(report.segments_section(results)))
    report.write(results, args.report, args.plot)
    plots = [args.plot] + ([args.plot.with_name("segments.png")] if results.get("segments") else [])
    print(f"\nwrote {args.report} and {', '.join(map(str, plots))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
