"""Run the simulator and steer it: in a background thread (`Simulator`, for tests) or as a
`python -m backtrans.simulator` subprocess (`start_subprocess`, for the job and the benchmark).

Both read stats and the request log, reset them, and change the config (faults, latency) while
the server runs; the subprocess through the HTTP control plane (`/_sim/...`, loopback, no auth).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from backtrans.simulator.config import SimulatorConfig, config_to_argv
from backtrans.simulator.server import URL_LINE_PREFIX, SimulatorServer

API_KEY_ENV = "BACKTRANS_SIMULATOR_API_KEY"  # how start_subprocess hands the key to the child
_PACKAGE_PARENT = str(Path(os.path.abspath(__file__)).parents[2])  # the folder that holds backtrans/


class Simulator:
    """The simulator in a background thread with its own event loop.

    >>> with Simulator(SimulatorConfig(latency_ms=5)) as sim:
    ...     client = openai.AsyncOpenAI(base_url=sim.url, api_key="x")
    """

    def __init__(self, config: SimulatorConfig | None = None, **overrides: Any) -> None:
        config = config or SimulatorConfig()
        self.config = config.with_changes(**overrides) if overrides else config
        self._server = SimulatorServer(self.config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Simulator:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._server.start())
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._server.close())
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="backtrans-simulator", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise RuntimeError("simulator failed to start") from failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server.port is not None, "simulator not started"
        return self._server.port

    @property
    def url(self) -> str:
        """Base URL for the OpenAI client: `http://127.0.0.1:PORT/v1`."""
        return self._server.url

    @property
    def root_url(self) -> str:
        """`http://127.0.0.1:PORT` (for clients that append `/v1` themselves)."""
        return self._server.url.removesuffix("/v1")

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        # Run inside the server's loop, so the state needs no lock.
        if self._loop is None:
            raise RuntimeError("simulator not started")

        async def call() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    def stats(self) -> dict[str, Any]:
        return self._call(self._server.app.state.stats)

    def log(self) -> list[dict[str, Any]]:
        return self._call(lambda: list(self._server.app.state.log))

    def reset(self) -> None:
        self._call(self._server.app.state.reset)

    def configure(self, **changes: Any) -> SimulatorConfig:
        self.config = self._call(self._server.app.state.configure, changes)
        return self.config


class SimulatorProcess:
    """A simulator running as `python -m backtrans.simulator` (see `start_subprocess`)."""

    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url
        self.root_url = url.removesuffix("/v1")
        self.port = int(self.root_url.rsplit(":", 1)[1])
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _request(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.root_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with self._opener.open(request, timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/_sim/stats")

    def log(self) -> list[dict[str, Any]]:
        return self._request("GET", "/_sim/log")

    def reset(self) -> None:
        self._request("POST", "/_sim/reset", {})

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self._request("POST", "/_sim/config", changes)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_subprocess(
    config: SimulatorConfig | None = None,
    *,
    python: str | None = None,
    startup_timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> SimulatorProcess:
    """Launch `python -m backtrans.simulator` with `config` and wait for its URL.

    The child inherits stderr; its stdout carries only the `SIMULATOR_URL ...` line.
    """
    config = config or SimulatorConfig()
    child_env = dict(os.environ if env is None else env)
    # The child imports this copy of backtrans, installed or not.
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, child_env.get("PYTHONPATH", "")) if p)
    argv = [python or sys.executable, "-m", "backtrans.simulator", *config_to_argv(config)]
    if config.api_key:
        child_env[API_KEY_ENV] = config.api_key
        argv += ["--api-key-env", API_KEY_ENV]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=child_env)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(startup_timeout)
    text = line[0].strip() if line else ""
    if not text.startswith(URL_LINE_PREFIX + " "):
        proc.kill()
        proc.wait()
        raise RuntimeError(
            f"simulator subprocess did not report its URL (exit code {proc.returncode}, first line {text!r})"
        )
    return SimulatorProcess(proc, text.split(None, 1)[1])
