"""One measured run: start a fresh simulator, start the system under test as a subprocess, watch it.

Every run is its own process with its own local Ray session (or distilabel's processes), started
the way a user starts it, so the wall time includes start-up and shutdown, and the memory figures
belong to that run alone.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from backtrans.simulator import SimulatorConfig, start_subprocess
from bench.monitor import RunMonitor
from bench.workload import job_config, write_job_config

REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


class RunFailed(RuntimeError):
    pass


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The driver and every Ray worker import this checkout's backtrans and bench packages.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("NO_PROXY", "127.0.0.1,localhost")
    env.setdefault("no_proxy", "127.0.0.1,localhost")
    env.pop("RAY_ADDRESS", None)  # always a local Ray of its own
    return env


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def measured_run(
    system: str,
    argv_for: Callable[[str], list[str]],
    *,
    n: int,
    latency_ms: float,
    concurrency: int,
    workdir: Path,
    timeout_s: float,
    profile: dict | None = None,
) -> dict:
    """Run `argv_for(simulator_url)` against a fresh simulator; return the figures of the run."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "run.log"
    sim = start_subprocess(SimulatorConfig(latency_ms=latency_ms, keep_log=False))
    profiler_threads: list[threading.Thread] = []
    try:
        argv = argv_for(sim.url)
        with log_path.open("w") as log:
            t0 = time.monotonic()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=_env(), cwd=REPO, text=True)
            monitor = RunMonitor(proc.pid, t0, sim)
            if profile is not None:
                monitor.on_first_request = lambda m: profiler_threads.append(_start_profilers(m, profile))
            monitor.start()
            try:
                stdout, _ = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise RunFailed(f"{system}: no result within {timeout_s:.0f} s; log tail:\n{_tail(log_path)}") from None
            finally:
                wall = time.monotonic() - t0
                monitor.stop()
                _end_leftovers(monitor)
        stats = sim.stats()
    finally:
        sim.stop()
    for thread in profiler_threads:
        thread.join(timeout=120)
    if proc.returncode != 0:
        raise RunFailed(f"{system}: exit code {proc.returncode}; log tail:\n{_tail(log_path)}")
    with log_path.open("a") as log:
        log.write("\n--- stdout ---\n" + stdout)
    return _figures(system, n, latency_ms, concurrency, wall, monitor, stats, stdout)


def _end_leftovers(monitor: RunMonitor) -> None:
    """Ray's processes of this run that outlive its driver (rare) are ended by id, nothing else."""
    deadline = time.monotonic() + 10
    for pid, handle in monitor._handles.items():
        if pid == monitor.root_pid:
            continue
        try:
            handle.wait(timeout=max(0.1, deadline - time.monotonic()))
        except psutil.TimeoutExpired:
            handle.kill()
        except psutil.NoSuchProcess:
            pass


def _figures(system, n, latency_ms, concurrency, wall, monitor: RunMonitor, stats, stdout) -> dict:
    limit = concurrency / (latency_ms / 1000.0)
    first = monitor.first_request_t
    last = monitor.last_request_t
    window = (last - first + latency_ms / 1000.0) if first is not None and last is not None else None
    requests = stats["total_requests"]
    cpu_total = monitor.cpu_total()
    cpu_window = monitor.cpu_at(last) - monitor.cpu_at(first) if window else None
    in_flight = {}
    for kind in ("generate", "score"):
        gauge = stats["by_kind_in_flight"][kind]
        steady = _steady(monitor, kind, first, window)
        in_flight[kind] = {
            "max": gauge["max_in_flight"],
            "mean": round(gauge["mean_in_flight"], 2),
            "steady_median": steady[0],
            "steady_at_cap": steady[1],
            "requests": stats["by_kind"][kind],
        }
    peaks = monitor.peak_rss_by_role()
    workers = {role: rss for role, rss in peaks.items() if role.startswith("worker")}
    largest = max(workers.items(), key=lambda kv: kv[1]) if workers else ("", 0)
    result = _last_json_line(stdout)
    return {
        "system": system,
        "n": n,
        "latency_ms": latency_ms,
        "concurrency": concurrency,
        "limit_rows_per_s": limit,
        "wall_s": round(wall, 2),
        "rows_per_s": round(n / wall, 1),
        "fraction_of_limit": round(n / wall / limit, 3),
        "startup_to_first_request_s": round(first, 2) if first is not None else None,
        "request_window_s": round(window, 2) if window else None,
        "window_rows_per_s": round(n / window, 1) if window else None,
        "window_fraction_of_limit": round(n / window / limit, 3) if window else None,
        "requests": requests,
        "by_outcome": {k: v for k, v in stats["by_outcome"].items() if v},
        "in_flight": in_flight,
        "cpu_s": round(cpu_total, 2),
        "cpu_ms_per_request": round(1000 * cpu_total / requests, 3) if requests else None,
        "cpu_window_s": round(cpu_window, 2) if cpu_window is not None else None,
        "cpu_window_ms_per_request": round(1000 * cpu_window / requests, 3) if cpu_window and requests else None,
        "cpu_by_role": {k: round(v, 2) for k, v in monitor.cpu_by_role().items() if v >= 0.05},
        "driver_peak_rss_mb": round(peaks.get("driver", 0) / MB, 1),
        "largest_worker_peak_rss_mb": round(largest[1] / MB, 1),
        "largest_worker": largest[0],
        "tree_peak_rss_mb": round(max((s.rss_total for s in monitor.samples), default=0) / MB, 1),
        "processes": len(monitor.procs),
        "output": result,
        "timeline": _timeline(monitor),
    }


def _steady(monitor: RunMonitor, kind: str, first, window) -> tuple[float | None, float | None]:
    """Median in-flight, and the share of samples at the cap's value or above, in the middle 80%."""
    if not window:
        return None, None
    lo, hi = first + 0.1 * window, first + 0.9 * window
    values = [s.in_flight.get(kind, 0) for s in monitor.samples if lo <= s.t <= hi and s.in_flight]
    if not values:
        return None, None
    top = max(values)
    return statistics.median(values), round(sum(v >= top for v in values) / len(values), 3)


def _timeline(monitor: RunMonitor, points: int = 400) -> list[list[float]]:
    samples = [s for s in monitor.samples if s.in_flight]
    step = max(1, len(samples) // points)
    return [
        [round(s.t, 2), s.in_flight.get("generate", 0), s.in_flight.get("score", 0), s.requests]
        for s in samples[::step]
    ]


def _last_json_line(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


# --------------------------------------------------------------------------- the systems


def run_backtrans(
    rows: Path, n: int, latency_ms: float, concurrency: int, workdir: Path, *, actors=None, timeout_s, profile=None
) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "out"
    config = write_job_config(workdir / "job.yaml", job_config(rows, out, "SIMULATOR_URL", concurrency, actors))

    def argv(url: str) -> list[str]:
        text = config.read_text().replace("SIMULATOR_URL", url)
        config.write_text(text)
        return [sys.executable, "-m", "backtrans", "run", str(config)]

    figures = measured_run(
        "backtrans",
        argv,
        n=n,
        latency_ms=latency_ms,
        concurrency=concurrency,
        workdir=workdir,
        timeout_s=timeout_s,
        profile=profile,
    )
    figures["output"] = _backtrans_output(out)
    _check_rows(figures, n)
    return figures


def _backtrans_output(out: Path) -> dict:
    summary = json.loads((out / "run_summary.json").read_text())
    scores = summary.get("scores") or {}
    return {
        "rows": summary["rows"],
        "scored": sum(v for k, v in scores.items() if k != "null"),
        "failures": summary.get("failures_this_run"),
    }


def run_distilabel(rows: Path, n: int, latency_ms: float, concurrency: int, workdir: Path, *, timeout_s) -> dict:
    def argv(url: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.peer_distilabel",
            "--url",
            url,
            "--rows",
            str(rows),
            "--concurrency",
            str(concurrency),
            "--workdir",
            str(workdir),
        ]

    figures = measured_run(
        "distilabel",
        argv,
        n=n,
        latency_ms=latency_ms,
        concurrency=concurrency,
        workdir=workdir,
        timeout_s=timeout_s,
    )
    _check_rows(figures, n)
    return figures


def run_raydata_llm(
    rows: Path, n: int, latency_ms: float, concurrency: int, workdir: Path, *, timeout_s, num_cpus=None
) -> dict:
    def argv(url: str) -> list[str]:
        extra = [] if num_cpus is None else ["--num-cpus", str(num_cpus)]
        return [
            sys.executable,
            "-m",
            "bench.peer_raydata_llm",
            "--url",
            url,
            "--rows",
            str(rows),
            "--concurrency",
            str(concurrency),
            "--workdir",
            str(workdir),
            *extra,
        ]

    name = "ray.data.llm" if num_cpus is None else f"ray.data.llm (num_cpus={num_cpus})"
    figures = measured_run(
        name, argv, n=n, latency_ms=latency_ms, concurrency=concurrency, workdir=workdir, timeout_s=timeout_s
    )
    _check_rows(figures, n)
    return figures


def _check_rows(figures: dict, n: int) -> None:
    output = figures.get("output") or {}
    figures["complete"] = output.get("rows") == n and output.get("scored") == n


# --------------------------------------------------------------------------- profiling


def _start_profilers(monitor: RunMonitor, profile: dict) -> threading.Thread:
    """Once requests flow: wait `delay_s`, then py-spy record the driver and each stage actor."""

    def run() -> None:
        time.sleep(profile.get("delay_s", 3))
        monitor._sample_procs()
        targets = {
            pid: info.role
            for pid, info in monitor.procs.items()
            if info.role == "driver" or "Stage" in info.role or "MapWorker" in info.role
        }
        procs = []
        for pid, role in targets.items():
            slug = role.replace(" ", "_").replace("(", "_").replace(")", "").replace("/", "_")[:60]
            out = Path(profile["dir"]) / f"{pid}-{slug}.txt"
            procs.append(
                subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(profile.get("duration_s", 10)),
                        "--rate",
                        "100",
                        "--format",
                        "raw",
                        "--nonblocking",
                        "--output",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for p in procs:
            p.wait()

    Path(profile["dir"]).mkdir(parents=True, exist_ok=True)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
