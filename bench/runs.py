"""One measured run: start a fresh simulator, start the system under test as a subprocess, watch it.

Every run is its own process with its own local Ray session (or distilabel's processes), started
the way a user starts it, so the wall time includes start-up and shutdown, and the memory figures
belong to that run alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
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
from bench.peer_cli import peer_argv
from bench.workload import job_config, write_job_config

REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The driver and every Ray worker import this checkout's backtrans and bench packages.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("NO_PROXY", "127.0.0.1,localhost")
    env.setdefault("no_proxy", "127.0.0.1,localhost")
    env.pop("RAY_ADDRESS", None)  # always a local Ray of its own
    return env


def _tail(path: Path, lines: int = 15) -> str:
    """The run's own error line (`backtrans: error: ...`) if any, then the last lines of its log."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    own = [line for line in text if line.startswith(("backtrans:", "Traceback", "RuntimeError", "ValueError"))]
    return "\n".join(own[-3:] + text[-lines:])


def measured_run(
    system: str,
    argv_for: Callable[[str], list[str]],
    n: int,
    latency_ms: float,
    concurrency: int,
    workdir: Path,
    *,
    timeout_s: float,
    stall_s: float = 120.0,
    profile: dict | None = None,
    latency_sigma: float = 0.0,
) -> dict:
    """Run `argv_for(simulator_url)` against a fresh simulator; return the figures of the run.

    The run is ended (by its pids) when it exceeds `timeout_s`, or when no request reaches the
    simulator for `stall_s` while it is not done; its figures are then those of the part that ran,
    with `ended` saying why.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "run.log"
    sim = start_subprocess(SimulatorConfig(latency_ms=latency_ms, latency_sigma=latency_sigma, keep_log=False))
    sim_proc = psutil.Process(sim.pid)
    profiler_threads: list[threading.Thread] = []
    ended = None
    try:
        argv = argv_for(sim.url)
        with log_path.open("w") as log, (workdir / "stdout.txt").open("w") as out:
            sim_cpu0 = _cpu(sim_proc)
            host0 = psutil.cpu_times()
            load0 = os.getloadavg()[0]
            t0 = time.monotonic()
            t0_wall = time.time()
            proc = subprocess.Popen(argv, stdout=out, stderr=log, env=_env(), cwd=REPO)
            monitor = RunMonitor(proc.pid, t0, sim)
            if profile is not None:
                monitor.on_first_request = lambda m: profiler_threads.append(_start_profilers(m, profile))
            monitor.start()
            try:
                ended = _wait(proc, monitor, t0, timeout_s, stall_s)
            finally:
                wall = time.monotonic() - t0
                monitor.stop()
                _end_leftovers(monitor)
                host1 = psutil.cpu_times()
                sim_cpu = _cpu(sim_proc) - sim_cpu0
        stats = sim.stats()
    finally:
        sim.stop()
    for thread in profiler_threads:
        thread.join(timeout=120)
    stdout = (workdir / "stdout.txt").read_text(errors="replace")
    if ended is None and proc.returncode != 0:
        ended = f"exit code {proc.returncode}"
        errors = [line for line in _tail(log_path, 0).splitlines() if line.startswith("backtrans:")]
        if errors:
            ended += f" ({errors[-1][:200]})"
    figures = _figures(system, n, latency_ms, concurrency, wall, monitor, stats, stdout, latency_sigma)
    figures["phases"] = _phases(log_path, t0_wall, monitor)
    busy = _busy(host1) - _busy(host0)
    figures["host"] = {
        "load_avg_1m_before": round(load0, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "busy_cpu_s": round(busy, 1),
        "simulator_cpu_s": round(sim_cpu, 1),
        # CPU that neither the run nor the simulator spent: other work on the machine
        "other_cpu_s": round(max(0.0, busy - figures["cpu_s"] - sim_cpu), 1),
    }
    if ended is not None:
        figures["ended"] = ended
        figures["log_tail"] = _tail(log_path, 8)
        # rows known to be done: scoring requests the simulator answered
        done = stats["by_kind"]["score"] - stats["by_kind_in_flight"]["score"]["in_flight"]
        figures["rows_done"] = done
        figures["rows_per_s"] = round(done / wall, 1)
        figures["fraction_of_limit"] = round(done / wall / figures["limit_rows_per_s"], 3)
    return figures


def measured_process(argv: list[str], workdir: Path, *, timeout_s: float) -> dict:
    """Run `argv` with no simulator under the process-tree monitor; return what it spent: wall time
    (process start to exit), CPU by process, peak memory (`memory_peaks`), the host's load, and the
    last JSON line it printed (`output`). Ended by its pids past `timeout_s`, with `ended` saying so."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "run.log"
    with log_path.open("w") as log, (workdir / "stdout.txt").open("w") as out:
        host0 = psutil.cpu_times()
        load0 = os.getloadavg()[0]
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=log, env=_env(), cwd=REPO)
        monitor = RunMonitor(proc.pid, t0).start()
        try:
            ended = _wait(proc, monitor, t0, timeout_s, stall_s=None)
        finally:
            wall = time.monotonic() - t0
            monitor.stop()
            _end_leftovers(monitor)
            host1 = psutil.cpu_times()
    if ended is None and proc.returncode != 0:
        ended = f"exit code {proc.returncode}"
    cpu = monitor.cpu_total()
    busy = _busy(host1) - _busy(host0)
    figures = {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "cpu_by_role": {k: round(v, 2) for k, v in monitor.cpu_by_role().items() if v >= 0.05},
        **memory_peaks(monitor),
        "processes": len(monitor.procs),
        "host": {
            "load_avg_1m_before": round(load0, 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
            "busy_cpu_s": round(busy, 1),
            "other_cpu_s": round(max(0.0, busy - cpu), 1),  # CPU the run did not spend: other work
        },
        "output": _last_json_line((workdir / "stdout.txt").read_text(errors="replace")),
    }
    if ended is not None:
        figures["ended"] = ended
        figures["log_tail"] = _tail(log_path, 8)
    return figures


LOG_STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
PHASE_MARKS = (  # (phase name, text of the Ray log line that ends it), first occurrence
    ("ray_init", "Started a local Ray instance"),
    ("first_dataset_execution", "Starting execution of Dataset"),
    ("data_written", "Data sink"),
)


def _phases(log_path: Path, t0_wall: float, monitor: RunMonitor) -> dict:
    """When, in seconds since the process started, the run passed the marks Ray logs."""
    from datetime import datetime

    phases: dict[str, float] = {}
    executions = []
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return phases
    for line in lines:
        match = LOG_STAMP.match(line)
        if match is None:
            continue
        at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - t0_wall
        if "Starting execution of Dataset" in line:
            executions.append(round(at, 2))
        for name, text in PHASE_MARKS:
            if text in line and name not in phases:
                phases[name] = round(at, 2)
    if executions:
        phases["dataset_executions_started"] = executions
    if monitor.first_request_t is not None:
        phases["first_request"] = round(monitor.first_request_t, 2)
    if monitor.last_request_t is not None:
        phases["last_request"] = round(monitor.last_request_t, 2)
    return phases


def _cpu(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def _busy(times) -> float:
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _wait(
    proc: subprocess.Popen, monitor: RunMonitor, t0: float, timeout_s: float, stall_s: float | None
) -> str | None:
    """Wait for the run's process; None when it exits by itself, else why it was ended. `stall_s`:
    end it when no request reached the simulator for that long (None: a run without a simulator)."""
    while True:
        try:
            proc.wait(timeout=1.0)
            return None
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic() - t0
        reason = None
        if now > timeout_s:
            reason = f"timed out after {timeout_s:.0f} s"
        elif stall_s is not None:
            last = monitor.last_request_t if monitor.last_request_t is not None else 0.0
            idle = now - last
            if idle > stall_s:
                reason = f"stalled: no request for {idle:.0f} s"
        if reason is not None:
            try:
                tree = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                tree = []
            proc.kill()
            proc.wait()
            for child in tree:  # the run's own Ray processes, by pid
                with contextlib.suppress(psutil.Error):
                    child.kill()
            return reason


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


def _figures(system, n, latency_ms, concurrency, wall, monitor: RunMonitor, stats, stdout, latency_sigma=0.0) -> dict:
    # Little's law with the mean latency: a log-normal's mean is its median x exp(sigma^2 / 2).
    mean_latency_s = latency_ms / 1000.0 * math.exp(latency_sigma**2 / 2)
    limit = concurrency / mean_latency_s
    first = monitor.first_request_t
    last = monitor.last_request_t
    window = (last - first + mean_latency_s) if first is not None and last is not None else None
    requests = stats["total_requests"]
    cpu_total = monitor.cpu_total()
    cpu_window = monitor.cpu_at(last) - monitor.cpu_at(first) if window else None
    in_flight = {}
    for kind in ("generate", "score"):
        gauge = stats["by_kind_in_flight"][kind]
        steady = _steady(monitor, kind, first, window, concurrency)
        in_flight[kind] = {
            "max": gauge["max_in_flight"],
            "mean": round(gauge["mean_in_flight"], 2),
            "steady_mean": steady[0],
            "steady_median": steady[1],
            "steady_at_cap": steady[2],
            "requests": stats["by_kind"][kind],
        }
    result = _last_json_line(stdout)
    return {
        "system": system,
        "n": n,
        "latency_ms": latency_ms,
        "latency_sigma": latency_sigma,
        "concurrency": concurrency,
        "limit_rows_per_s": limit,
        "wall_s": round(wall, 2),
        "rows_per_s": round(n / wall, 1),
        "fraction_of_limit": round(n / wall / limit, 3),
        "startup_to_first_request_s": round(first, 2) if first is not None else None,
        "request_window_s": round(window, 2) if window else None,
        "window_rows_per_s": round(n / window, 1) if window else None,
        "window_fraction_of_limit": round(n / window / limit, 3) if window else None,
        "middle_fraction_of_limit": _middle_fraction(monitor, first, window, limit),
        "requests": requests,
        "by_outcome": {k: v for k, v in stats["by_outcome"].items() if v},
        "in_flight": in_flight,
        "cpu_s": round(cpu_total, 2),
        "cpu_ms_per_request": round(1000 * cpu_total / requests, 3) if requests else None,
        "cpu_window_s": round(cpu_window, 2) if cpu_window is not None else None,
        "cpu_window_ms_per_request": round(1000 * cpu_window / requests, 3) if cpu_window and requests else None,
        "cpu_by_role": {k: round(v, 2) for k, v in monitor.cpu_by_role().items() if v >= 0.05},
        **memory_peaks(monitor),
        "processes": len(monitor.procs),
        "output": result,
        "timeline": _timeline(monitor),
    }


SYSTEM_ROLES = frozenset({"driver", "gcs_server", "raylet", "dashboard", "log_monitor", "runtime_env", "monitor"})


def memory_peaks(monitor: RunMonitor) -> dict:
    """Peak RSS (VmHWM) of the driver (the run's own process: for Ray, not the raylet, whose RSS holds
    the object store's shared memory), of the largest other process that is no Ray daemon (a Ray
    worker or actor; a datatrove worker), and the peak over the run of the tree's summed RSS (shared
    pages count in every process that maps them)."""
    peaks = monitor.peak_rss_by_role()
    workers = {role: rss for role, rss in peaks.items() if role not in SYSTEM_ROLES}
    largest = max(workers.items(), key=lambda kv: kv[1]) if workers else ("", 0)
    return {
        "driver_peak_rss_mb": round(peaks.get("driver", 0) / MB, 1),
        "largest_worker_peak_rss_mb": round(largest[1] / MB, 1),
        "largest_worker": largest[0],
        "tree_peak_rss_mb": round(max((s.rss_total for s in monitor.samples), default=0) / MB, 1),
        # Where the summed RSS goes: each role's largest peak, over 50 MB.
        "peak_rss_mb_by_role": {role: round(rss / MB) for role, rss in sorted(peaks.items()) if rss >= 50 * MB},
        # What made up the summed peak: the moment, and every role's RSS then (a role's processes summed).
        "tree_peak_rss_at_s": monitor.rss_peak_t,
        "tree_peak_pss_mb": round(monitor.pss_peak / MB, 1),
        "tree_peak_rss_mb_by_role": {role: round(rss / MB) for role, rss in sorted(monitor.rss_peak_by_role.items())},
    }


def _steady(monitor: RunMonitor, kind: str, first, window, cap: int) -> tuple:
    """Mean and median of the sampled in-flight gauge, and the share of samples at the cap C,
    over the middle 80% of the request window (the steady state, without ramp-up and drain)."""
    if not window:
        return None, None, None
    lo, hi = first + 0.1 * window, first + 0.9 * window
    values = [s.in_flight.get(kind, 0) for s in monitor.samples if lo <= s.t <= hi and s.in_flight]
    if not values:
        return None, None, None
    return (
        round(statistics.fmean(values), 1),
        statistics.median(values),
        round(sum(v >= cap for v in values) / len(values), 3),
    )


def _middle_fraction(monitor: RunMonitor, first, window, limit: float) -> float | None:
    """Requests per second per stage over the middle 80% of the request window, the part the
    in-flight `steady` figures sample, as a fraction of C/L: the stages' rate once both run, without
    the pipeline's fill (the second stage waits for the first one's replies) and drain."""
    if not window:
        return None
    lo, hi = first + 0.1 * window, first + 0.9 * window
    middle = [s for s in monitor.samples if lo <= s.t <= hi]
    if len(middle) < 2 or middle[-1].t <= middle[0].t:
        return None
    per_stage = (middle[-1].requests - middle[0].requests) / (middle[-1].t - middle[0].t) / 2  # generate and score
    return round(per_stage / limit, 3)


def _timeline(monitor: RunMonitor, points: int = 400) -> list[list[float]]:
    """[t, in flight generate, in flight score, requests so far, driver RSS MB, of which anonymous MB,
    of which shared memory MB] per kept sample."""
    samples = [s for s in monitor.samples if s.in_flight and s.rss_total]
    step = max(1, len(samples) // points)
    return [
        [
            round(s.t, 2),
            s.in_flight.get("generate", 0),
            s.in_flight.get("score", 0),
            s.requests,
            round(s.driver_rss / MB, 1),
            round(s.driver_parts[0] / MB, 1),
            round(s.driver_parts[1] / MB, 1),
        ]
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
    rows: Path,
    n: int,
    latency_ms: float,
    concurrency: int,
    workdir: Path,
    *,
    actors=None,
    timeout_s,
    profile=None,
    latency_sigma: float = 0.0,
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
        n,
        latency_ms,
        concurrency,
        workdir,
        timeout_s=timeout_s,
        profile=profile,
        latency_sigma=latency_sigma,
    )
    if "ended" not in figures:
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
        return peer_argv("bench.peer_distilabel", url, rows, concurrency, workdir)

    return _run_peer("distilabel", argv, n, latency_ms, concurrency, workdir, timeout_s=timeout_s)


def run_raydata_llm(
    rows: Path, n: int, latency_ms: float, concurrency: int, workdir: Path, *, timeout_s, num_cpus=None, stall_s=120.0
) -> dict:
    def argv(url: str) -> list[str]:
        extra = [] if num_cpus is None else ["--num-cpus", str(num_cpus)]
        return [*peer_argv("bench.peer_raydata_llm", url, rows, concurrency, workdir), *extra]

    return _run_peer("ray.data.llm", argv, n, latency_ms, concurrency, workdir, timeout_s=timeout_s, stall_s=stall_s)


def _run_peer(
    system: str, argv: Callable[[str], list[str]], n: int, latency_ms: float, concurrency: int, workdir: Path, **options
) -> dict:
    """`measured_run` of a peer: its output is the JSON line it prints."""
    figures = measured_run(system, argv, n, latency_ms, concurrency, workdir, **options)
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
        monitor._sample_procs(time.monotonic() - monitor.t0)
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
