"""Watch one run from outside: the CPU and memory of a process tree, and the simulator's gauges.

The run under test is a subprocess (the `backtrans` CLI, or a peer's script). Everything the run
spends on the client side lives in that subprocess's process tree: the driver, the local Ray
session it starts (GCS, raylet, dashboard, log monitor) and every Ray worker and actor. The
simulator is started by the benchmark itself, outside that tree, so it is never counted.

A sampler thread reads, every `interval` seconds, each live process's CPU time (user + system) and
RSS, and the simulator's in-flight gauge per request kind (a run with no simulator, such as the
`segments` regime's, is only sampled). A process that exits keeps the CPU it had at its last sample
(the error is at most one interval of its CPU, and processes exit at shutdown, or for datatrove at
the end of each stage's worker pool). Peak RSS is the kernel's high-water mark (VmHWM) of each
process, so it is exact up to the last sample.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import psutil

STARTUP_POLL_S = 0.02  # until the first request, to time start-up finely
STEADY_POLL_S = 0.25
# Summed RSS counts a page that N processes share N times (libraries, Ray's object store). PSS
# divides each shared page among its processes, so summed it is the memory the run takes. Reading it
# walks each process's page tables, so it is sampled this many times more rarely than RSS.
PSS_EVERY_SAMPLES = 20


def role_of(proc: psutil.Process, root_pid: int) -> str:
    """A short, stable name for what a process is: driver, raylet, an actor's class, ..."""
    if proc.pid == root_pid:
        return "driver"
    try:
        cmdline = proc.cmdline()
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "unknown"
    head = cmdline[0] if cmdline else name
    if head.startswith("ray::"):  # a Ray worker sets its process title to ray::<task or actor>
        title = " ".join(cmdline).strip()
        return "worker " + title[len("ray::") :].split(" ")[0][:80]
    text = " ".join(cmdline)
    if "default_worker.py" in text:
        return "worker (starting)"
    for key in ("gcs_server", "raylet", "dashboard", "log_monitor", "runtime_env", "monitor.py"):
        if key in text:
            return key.removesuffix(".py")
    if "multiprocess" in text or "multiprocessing" in text:
        return "mp-child"
    return name


@dataclass
class ProcInfo:
    role: str
    cpu_s: float = 0.0
    peak_rss: int = 0


@dataclass
class Sample:
    t: float  # seconds since the run's process started
    cpu_s: float  # CPU of the whole tree so far (live and exited processes)
    in_flight: dict[str, int]  # simulator gauge per kind
    requests: int  # requests the simulator has received
    rss_total: int
    driver_rss: int = 0
    driver_parts: tuple[int, int] = (0, 0)  # (anonymous, shared-memory) resident bytes of the driver


@dataclass
class RunMonitor:
    """Samples a process tree and a simulator until `stop()`."""

    root_pid: int
    t0: float
    simulator: object | None = None  # a backtrans.simulator.SimulatorProcess
    interval: float = STEADY_POLL_S
    procs: dict[int, ProcInfo] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    first_request_t: float | None = None
    last_request_t: float | None = None  # last time the request count changed
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _handles: dict[int, psutil.Process] = field(default_factory=dict)
    on_first_request: object | None = None  # callback(monitor) once requests flow
    driver_rss: int = 0
    driver_parts: tuple[int, int] = (0, 0)
    # The sample with the largest summed RSS: when it was, and each role's RSS summed at that moment.
    rss_peak_t: float | None = None
    rss_peak_by_role: dict[str, int] = field(default_factory=dict)
    pss_peak: int = 0  # the largest summed PSS, sampled every PSS_EVERY_SAMPLES samples

    def start(self) -> RunMonitor:
        self._thread = threading.Thread(target=self._loop, name="bench-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- sampling
    def _tree(self) -> list[psutil.Process]:
        try:
            root = self._handles.get(self.root_pid) or psutil.Process(self.root_pid)
            self._handles[self.root_pid] = root
            found = [root, *root.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return []
        out = []
        for proc in found:
            known = self._handles.get(proc.pid)
            if known is None:  # reuse handles: psutil caches per-object and checks pid reuse
                self._handles[proc.pid] = proc
                known = proc
            out.append(known)
        return out

    def _sample_procs(self, now: float) -> int:
        rss_total = 0
        self.driver_rss = 0
        by_role: dict[str, int] = {}
        pss_total = 0
        with_pss = len(self.samples) % PSS_EVERY_SAMPLES == 0
        for proc in self._tree():
            try:
                times = proc.cpu_times()
                rss, hwm = _rss_and_peak(proc.pid)
                pss_total += _pss(proc.pid) if with_pss else 0
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                continue
            info = self.procs.get(proc.pid)
            if info is None:
                info = self.procs[proc.pid] = ProcInfo(role_of(proc, self.root_pid))
            elif info.role.startswith("worker") or info.role == "unknown":
                # a worker's title changes as it starts, becomes an actor or runs a task; keep the
                # last one that names a task or actor
                role = role_of(proc, self.root_pid)
                if role not in ("unknown", "worker IDLE") or info.role in ("unknown", "worker (starting)"):
                    info.role = role
            info.cpu_s = times.user + times.system
            info.peak_rss = max(info.peak_rss, hwm)
            rss_total += rss
            by_role[info.role] = by_role.get(info.role, 0) + rss
            if proc.pid == self.root_pid:
                self.driver_rss = rss
                with contextlib.suppress(OSError):
                    fields = proc_status(proc.pid)
                    self.driver_parts = (fields.get("RssAnon", 0), fields.get("RssShmem", 0))
        if rss_total > sum(self.rss_peak_by_role.values()):
            self.rss_peak_t, self.rss_peak_by_role = now, by_role
        self.pss_peak = max(self.pss_peak, pss_total)
        return rss_total

    def _sample_simulator(self) -> tuple[dict[str, int], int]:
        if self.simulator is None:
            return {}, 0
        try:
            stats = self.simulator.stats()
        except OSError:
            return {}, 0
        gauges = {kind: g["in_flight"] for kind, g in stats["by_kind_in_flight"].items()}
        return gauges, stats["total_requests"]

    def _loop(self) -> None:
        last_requests = 0
        while not self._stop.is_set():
            in_flight, requests = self._sample_simulator()
            now = time.monotonic() - self.t0
            if requests and self.first_request_t is None:
                self.first_request_t = now
                if self.on_first_request is not None:
                    with contextlib.suppress(Exception):
                        self.on_first_request(self)
            if requests != last_requests:
                self.last_request_t = now
                last_requests = requests
            # Before the first request: poll the simulator often (to time start-up), the tree rarely.
            # A run without a simulator has no start-up mark to catch: it samples every `interval`.
            starting = self.simulator is not None and self.first_request_t is None
            if starting and len(self.samples) % 10:
                time.sleep(STARTUP_POLL_S)
                self.samples.append(Sample(now, self.cpu_total(), in_flight, requests, 0))
                continue
            rss_total = self._sample_procs(now)
            self.samples.append(
                Sample(now, self.cpu_total(), in_flight, requests, rss_total, self.driver_rss, self.driver_parts)
            )
            self._stop.wait(STARTUP_POLL_S if starting else self.interval)

    # -- results
    def cpu_total(self) -> float:
        return sum(info.cpu_s for info in self.procs.values())

    def cpu_by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for info in self.procs.values():
            key = _group(info.role)
            out[key] = out.get(key, 0.0) + info.cpu_s
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def peak_rss_by_role(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for info in self.procs.values():
            out[info.role] = max(out.get(info.role, 0), info.peak_rss)
        return out

    def cpu_at(self, t: float) -> float:
        """Tree CPU at the last sample at or before `t` (the first sample if none)."""
        best = self.samples[0].cpu_s if self.samples else 0.0
        for sample in self.samples:
            if sample.t > t:
                break
            if sample.rss_total:  # only samples that read the process tree
                best = sample.cpu_s
        return best


def _group(role: str) -> str:
    """Roles grouped for the CPU breakdown: one entry per actor class or system process."""
    if role.startswith("worker "):
        title = role[len("worker ") :]
        if "(" in title:  # MapWorker(MapBatches(GenerateStage)) -> MapWorker(MapBatches(GenerateStage))
            return "worker " + title
        return "worker " + title.split(".")[-1]
    return role


def _rss_and_peak(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS so far) in bytes, from the kernel's VmRSS and VmHWM counters.

    VmHWM is the exact high-water mark of the process's resident set, so a short spike between
    two samples is not missed.
    """
    fields = proc_status(pid)
    rss = fields.get("VmRSS", 0)
    return rss, max(fields.get("VmHWM", 0), rss)


def _pss(pid: int) -> int:
    """The process's proportional set size in bytes (/proc/PID/smaps_rollup)."""
    with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        for line in f:
            if line.startswith(b"Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_status(pid: int) -> dict[str, int]:
    """The memory lines of /proc/PID/status in bytes: VmRSS, VmHWM, RssAnon, RssFile, RssShmem."""
    out = {}
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith((b"Vm", b"Rss")):
                key, _, value = line.partition(b":")
                parts = value.split()
                if len(parts) == 2 and parts[1] == b"kB":
                    out[key.decode()] = int(parts[0]) * 1024
    return out
