"""What a person sees while a job runs: one progress line every few seconds, and Ray kept out of the way.

`quiet_ray()` (the CLI calls it before Ray starts) points this process's stderr file descriptor at
a log file, so everything Ray writes there (its Python loggers' console handlers, the C++ core
worker's error-level lines, warnings and tracebacks, teardown messages at exit) lands in the file,
and keeps a handle on the terminal for backtrans' own lines (`say`). The file descriptor, not
only `sys.stderr`: the core worker's C++ logger writes to fd 2 itself.

`show_progress()` (job.py wraps the stages' execution in it) polls the run's RunMetrics actor from
a daemon thread on the driver and prints, e.g.

    backtrans: 1,234/8,000 rows (15%), ETA 3m12s | generate 41.2 req/s, 64 in flight, 1,200 cached |
    score 40.8 req/s, 63 in flight, 0 cached | retries 12, failures http_503: 2 | 1.2M tokens, spend 0.84

as one line: redrawn in place when stderr is a terminal, a plain line every PLAIN_INTERVAL_S
otherwise (`ray job submit`, CI, a pipe).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from backtrans.config import JobConfig, PriceConfig
from backtrans.metrics import RunSnapshot, StageCounts, spend, stage_prices

PLAIN_INTERVAL_S = 5.0  # a plain line this often (no terminal)
LIVE_INTERVAL_S = 1.0  # the live line's redraw interval (a terminal)
RATE_WINDOW_S = 10.0  # requests per second are measured over about this long
POLL_TIMEOUT_S = 10.0
JSONL_COUNT_MAX_BYTES = 1 << 30  # JSON Lines sources up to this size are counted for the rows total

_terminal = None  # the terminal stream once quiet_ray() ran; None: sys.stderr


def terminal():
    """Where backtrans' own lines go: the process's stderr as it was before quiet_ray()."""
    return _terminal or sys.stderr


def say(line: str) -> None:
    print(line, file=terminal(), flush=True)


# ---------------------------------------------------------------------------------------------- Ray's output


# Run in a small child process: it waits for the driver to end and, unless the driver said it ended
# with its own last line, prints why the console went quiet. A driver killed (SIGKILL, the OOM killer)
# or ended by Ray's C++ code (a fatal check, a lost raylet) prints nothing of its own.
_WATCHDOG = """
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
if sys.stdin.buffer.read() != b"ok":
    print(f"backtrans: error: the run ended abruptly (killed, or stopped by Ray); Ray's output: {sys.argv[1]}",
          flush=True)
"""


@dataclass
class RayOutput:
    log_path: str  # where Ray's output (and any traceback) goes for this run
    _watchdog: int | None = None  # the write end of the watchdog's pipe

    def finished(self) -> None:
        """The driver printed its last line: the watchdog stays silent."""
        if self._watchdog is not None:
            with contextlib.suppress(OSError):
                os.write(self._watchdog, b"ok")
                os.close(self._watchdog)
            self._watchdog = None


def quiet_ray() -> RayOutput:
    """Send everything written to stderr from now on to a log file; backtrans' own lines keep the
    terminal (`say`). An uncaught exception is one line on the terminal and its traceback in the log;
    call `finished()` on the result once the last line is printed."""
    global _terminal
    fd, path = tempfile.mkstemp(prefix="backtrans-", suffix="-ray.log")
    sys.stderr.flush()
    if _terminal is None:  # once per process: a second call keeps the first terminal
        _terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    os.dup2(fd, 2)  # sys.stderr (and every Python handler on it) writes to fd 2, so to the log
    os.close(fd)
    output = RayOutput(path)
    read_end, output._watchdog = os.pipe()  # not inheritable: only the watchdog holds the read end
    with contextlib.suppress(OSError):
        subprocess.Popen([sys.executable, "-c", _WATCHDOG, path], stdin=read_end, stdout=_terminal)
    os.close(read_end)

    def one_line(kind, error, tb):
        traceback.print_exception(kind, error, tb)  # to the log
        say(f"backtrans: error: {kind.__name__}: {error} (traceback in {path})")
        output.finished()

    sys.excepthook = one_line
    return output


def ray_logs_dir() -> str | None:
    """The Ray session's log folder on this machine (worker logs), if the driver runs on a node."""
    try:
        import ray

        return os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    except Exception:  # Ray Client, or a Ray without this private API: the line leaves it out
        return None


# ------------------------------------------------------------------------------------------------ the line


def format_money(amount: float) -> str:
    return "<0.01" if 0 < amount < 0.005 else f"{amount:,.2f}"


def format_count(n: int) -> str:
    """1234 -> 1.2k, 1234567 -> 1.2M."""
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= limit:
            return f"{n / limit:.1f}{suffix}"
    return str(n)


def format_duration(seconds: float) -> str:
    seconds = int(math.ceil(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class ProgressLine:
    """What a progress line says about a run, from a RunSnapshot and what was known at the start."""

    stages: tuple[str, ...]  # in the order they run; the last one's rows are the rows done
    rows_total: int | None = None  # rows this output will hold; None: unknown
    rows_before: int = 0  # rows written by earlier runs (a resume)
    prices: dict[str, PriceConfig] = field(default_factory=dict)

    def rows_done(self, snapshot: RunSnapshot) -> int:
        last = snapshot.stages.get(self.stages[-1])
        return self.rows_before + (last.rows if last else 0)

    def render(self, snapshot: RunSnapshot, elapsed_s: float, request_rates: dict[str, float]) -> str:
        """The line, `elapsed_s` after the stages started, with each stage's requests per second."""
        done = self.rows_done(snapshot)
        total = self.rows_total
        if total is None:
            head = f"{done:,}/? rows"
        else:
            total = max(total, done)
            head = f"{done:,}/{total:,} rows ({100 * done // max(total, 1)}%)"
            this_run = done - self.rows_before
            if this_run > 0 and done < total and elapsed_s > 0:
                head += f", ETA {format_duration((total - done) * elapsed_s / this_run)}"
        parts = [head]
        for name in self.stages:
            rate, cached = request_rates.get(name, 0.0), snapshot.stages.get(name, StageCounts()).cache_hits
            parts.append(f"{name} {rate:.1f} req/s, {snapshot.in_flight.get(name, 0)} in flight, {cached:,} cached")
        counts = [snapshot.stages.get(name, StageCounts()) for name in self.stages]
        failures = Counter()
        for stage in counts:
            failures.update(stage.failures)
        failed = ", ".join(f"{kind}: {n}" for kind, n in failures.most_common()) if failures else "0"
        parts.append(f"retries {sum(stage.retries for stage in counts):,}, failures {failed}")
        tokens = f"{format_count(sum(s.prompt_tokens + s.completion_tokens for s in counts))} tokens"
        cost = spend(snapshot, self.prices)
        if cost is not None:
            tokens += f", spend {format_money(cost)}"
        parts.append(tokens)
        return "backtrans: " + " | ".join(parts)


class RequestRates:
    """Requests per second of each stage over the last RATE_WINDOW_S, from successive snapshots."""

    def __init__(self, started: float):
        self._seen: deque[tuple[float, dict[str, int]]] = deque([(started, {})])

    def add(self, now: float, snapshot: RunSnapshot) -> dict[str, float]:
        requests = {name: counts.requests for name, counts in snapshot.stages.items()}
        while len(self._seen) > 1 and now - self._seen[1][0] >= RATE_WINDOW_S:
            self._seen.popleft()
        then, before = self._seen[0]
        self._seen.append((now, requests))
        seconds = now - then
        if seconds <= 0:
            return {}
        return {name: (n - before.get(name, 0)) / seconds for name, n in requests.items()}


# ------------------------------------------------------------------------------------------- rows to do


def rows_total(config: JobConfig, folder, files) -> int | None:
    """Rows the output will hold when the run ends: the filtered segments of a web job, else the
    source's rows (`source_rows`); None when that is not cheap to know."""
    if config.segments is None:
        return source_rows(config.source, files)
    from backtrans.segments.filter_pass import filter_counts  # here: the pass imports this module

    counts = filter_counts(folder)  # the pass has run when the stages start
    return counts and counts["kept"]


def source_rows(source, files) -> int | None:
    """The source's rows (Parquet footers, or the lines of JSON Lines files on this machine up to
    JSONL_COUNT_MAX_BYTES) with `source.limit` applied; None when that is not cheap to know."""
    try:
        counted = _source_rows(files)
    except Exception:  # the total is a nicety: an unreadable footer leaves it unknown
        counted = None
    if counted is None:
        return source.limit
    return counted if source.limit is None else min(counted, source.limit)


def _source_rows(files) -> int | None:
    if files.file_format == "parquet":
        import pyarrow.dataset as pads
        import pyarrow.fs as pafs

        filesystem = files.filesystem
        if filesystem is not None and not isinstance(filesystem, pafs.FileSystem):  # fsspec (the Hub)
            filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))
        return pads.dataset(files.paths, filesystem=filesystem, format="parquet").count_rows()
    if files.filesystem is not None or not all(os.path.isfile(path) for path in files.paths):
        return None  # remote JSON Lines: counting means downloading them
    if any(path.endswith(".gz") for path in files.paths):
        return None
    if sum(os.path.getsize(path) for path in files.paths) > JSONL_COUNT_MAX_BYTES:
        return None
    rows = 0
    for path in files.paths:
        with open(path, "rb") as f:
            rows += sum(1 for line in f if line.strip())  # the reader skips blank lines too
    return rows


def rows_written_before(folder) -> int:
    """Rows earlier runs committed: the ids in Ray Data's checkpoint, which this run skips."""
    return committed_rows(folder, folder.checkpoint, {})


def committed_rows(folder, checkpoint: str, rows_of: dict[str, int]) -> int:
    """Rows committed in a Ray Data checkpoint of `folder`. `rows_of` holds each file's rows once read:
    a committed file never changes, so a poll reads only the new ones."""
    import pyarrow.parquet as pq

    rows = 0
    with contextlib.suppress(Exception):  # a nicety: an unreadable file is counted at the next poll
        for path in folder.committed_checkpoint_files(checkpoint):
            if path not in rows_of:
                rows_of[path] = pq.ParquetFile(folder.open(path)).metadata.num_rows
            rows += rows_of[path]
    return rows


# -------------------------------------------------------------------------------------------- the reporter


class _Reporter(threading.Thread):
    """Prints `render(final)` every interval from a daemon thread, and once more when finished:
    redrawn in place when `stream` is a terminal, a plain line every PLAIN_INTERVAL_S otherwise.
    `render` returns None when it has nothing to say yet; `prepare` runs first, on the thread."""

    def __init__(self, render, stream, prepare=None):
        super().__init__(name="backtrans-progress", daemon=True)
        self.render, self.prepare, self.stream = render, prepare, stream
        self.live = _isatty(stream)
        self.interval = LIVE_INTERVAL_S if self.live else PLAIN_INTERVAL_S
        self.done = threading.Event()
        self._drawn = False

    def run(self) -> None:
        if self.prepare is not None:
            with contextlib.suppress(Exception):
                self.prepare()
        while not self.done.wait(self.interval):
            self.show()

    def show(self) -> None:
        text = self.render(self.done.is_set())
        if text is None:
            return
        if not self.live:
            print(text, file=self.stream, flush=True)
            return
        # Redrawn in place, cut to the terminal's width: a line that wrapped could not be redrawn.
        self.stream.write("\r" + text[: _columns(self.stream) - 1] + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        self.done.set()
        self.join(timeout=POLL_TIMEOUT_S)
        self.show()  # the last figures, always: a run shorter than one interval prints one line too
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


@contextlib.contextmanager
def _reporting(render, prepare=None) -> Iterator[None]:
    reporter = _Reporter(render, terminal(), prepare)
    reporter.start()
    try:
        yield
    finally:
        reporter.finish()


class _StagesLine:
    """The stages' line: polls the run's RunMetrics actor."""

    def __init__(self, line: ProgressLine, metrics):
        self.line, self.metrics = line, metrics
        self.started = time.monotonic()
        self.rates = RequestRates(self.started)
        self.last: RunSnapshot | None = None

    def __call__(self, final: bool) -> str | None:
        try:
            import ray

            snapshot = ray.get(self.metrics.snapshot.remote(), timeout=POLL_TIMEOUT_S)
        except Exception:  # a slow or finished metrics actor: the next poll tries again
            snapshot = self.last
            if snapshot is None:
                return None
        self.last = snapshot
        if final:  # the stages' execution returned: their actors are gone, nothing is in flight
            snapshot = dataclasses.replace(snapshot, in_flight={})
        now = time.monotonic()
        return self.line.render(snapshot, now - self.started, self.rates.add(now, snapshot))


class _SegmentRulesLine:
    """The segment pass's rules phase: documents committed to its checkpoints, of the source's."""

    def __init__(self, source, folder, files, checkpoint: str):
        self.source, self.folder, self.files, self.checkpoint = source, folder, files, checkpoint
        self.rows_of: dict[str, int] = {}  # committed checkpoint files never change: each is read once
        self.started = time.monotonic()
        self.before = self.committed()
        self.total: int | None = None

    def count_source(self) -> None:
        self.total = source_rows(self.source, self.files)

    def committed(self) -> int:
        """Over every attempt's checkpoint folder (`filter_pass._attempt`)."""
        attempts = self.folder.folders(self.checkpoint)
        return sum(committed_rows(self.folder, attempt, self.rows_of) for attempt in attempts)

    def __call__(self, final: bool) -> str:
        done = self.committed()
        this_run, elapsed = done - self.before, time.monotonic() - self.started
        head = f"{done:,}/{self.total:,} documents" if self.total else f"{done:,}/? documents"
        if self.total and this_run > 0 and done < self.total:
            head += f" ({100 * done // self.total}%), ETA {format_duration((self.total - done) * elapsed / this_run)}"
        return f"backtrans: segments: rules on {head}, {this_run / max(elapsed, 1e-9):,.0f}/s"


def _columns(stream) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    return columns or 80  # a pseudo-terminal may not know its size


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except Exception:
        return False


@contextlib.contextmanager
def show_progress(config: JobConfig, metrics, folder, files) -> Iterator[ProgressLine]:
    """Print progress while the body runs the stages: `metrics` is the run's RunMetrics actor,
    `folder` the OutputFolder, `files` the resolved source files (sources.ResolvedFiles)."""
    line = ProgressLine(
        tuple(config.llm_stages()), rows_before=rows_written_before(folder), prices=stage_prices(config)
    )

    def count_rows() -> None:
        line.rows_total = rows_total(config, folder, files)

    with _reporting(_StagesLine(line, metrics), count_rows):
        yield line


def show_segment_progress(source, folder, files, checkpoint: str):
    """Print progress while the body runs the segment pass's rules phase on `source` (`files`),
    checkpointed at `checkpoint` in `folder`."""
    line = _SegmentRulesLine(source, folder, files, checkpoint)
    return _reporting(line, line.count_source)
