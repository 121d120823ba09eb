"""`backtrans submit CONFIG.yaml`: `ray job submit` for this job, with the keys taken along.

A job's driver runs on the cluster, so a key exported where the user types the command is not in its
environment. Ray's own channels for it are all listed: the entrypoint, the runtime_env's env_vars
and the job's metadata appear in `ray job list`, the dashboard's job API and the state API. So the
keys the config names travel as a file in a package of the job's runtime_env (`py_modules`, which
Ray uploads to its GCS and unpacks for the job's processes, like `--working-dir`): listings show the
package's content hash only. The job's driver reads the file (`load_submitted_keys`, called by
`backtrans run`) into its own environment, and from there a key reaches the stage actors as
`errors.Secret` constructor arguments, like with `backtrans run`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import yaml

from backtrans.config import JobConfig
from backtrans.schema import BacktransError

KEYS_PACKAGE = "backtrans_submitted_keys"  # the py_modules package that holds the keys file
KEYS_FILE = "keys.json"


class SubmitError(BacktransError):
    pass


def key_names(config: JobConfig) -> dict[str, str]:
    """The environment variables the job's driver reads keys from, by the config key that names each:
    every stage's `api_key_env`, and `hub.token_env` when the job pushes."""
    names = {f"{name}.api_key_env": stage.api_key_env for name, stage in config.llm_stages().items()}
    if config.hub.repo_id:
        names["hub.token_env"] = config.hub.token_env
    return {key: name for key, name in names.items() if name}


def _keys(config: JobConfig) -> dict[str, str]:
    keys = {}
    for config_key, name in key_names(config).items():
        if not os.environ.get(name):
            raise SubmitError(f"{config_key}: environment variable {name} is not set")
        keys[name] = os.environ[name]
    return keys


def _runtime_env(runtime_env_file: str | None, working_dir: str, keys_package: str) -> dict:
    runtime_env = {}
    if runtime_env_file:
        runtime_env = yaml.safe_load(Path(runtime_env_file).read_text(encoding="utf-8")) or {}
    runtime_env.setdefault("working_dir", working_dir)
    runtime_env["py_modules"] = [*runtime_env.get("py_modules", []), keys_package]
    return runtime_env


def submit(
    config: JobConfig,
    config_path: str,
    overrides: list[str],
    *,
    address: str | None,
    runtime_env_file: str | None,
    working_dir: str,
    wait: bool,
) -> int:
    """Submit `backtrans run CONFIG` as a Ray job; with `wait`, follow its logs and return 0 when it
    succeeded. `address`: the dashboard's, e.g. http://head:8265 (None: RAY_ADDRESS)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    keys = _keys(config)  # before anything reaches the cluster: a missing key is one line here
    client = JobSubmissionClient(address)
    entrypoint = shlex.join(
        ["python", "-m", "backtrans", "run", config_path, *[part for o in overrides for part in ("--set", o)]]
    )
    with tempfile.TemporaryDirectory(prefix="backtrans-submit-") as staging:
        package = os.path.join(staging, KEYS_PACKAGE)
        os.mkdir(package, 0o700)
        Path(package, "__init__.py").touch()
        descriptor = os.open(os.path.join(package, KEYS_FILE), os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as f:
            json.dump(keys, f)
        job_id = client.submit_job(
            entrypoint=entrypoint, runtime_env=_runtime_env(runtime_env_file, working_dir, package)
        )
    print(f"backtrans: submitted {job_id}; `ray job logs {job_id}` shows its output", flush=True)
    if not wait:
        return 0
    asyncio.run(_follow(client, job_id))
    status = client.get_job_status(job_id)
    if status != JobStatus.SUCCEEDED:
        print(f"backtrans: error: job {job_id} ended {status.value}", file=sys.stderr, flush=True)
        return 1
    return 0


async def _follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def load_submitted_keys() -> None:
    """In a job `backtrans submit` started: put the keys it packed into this driver's environment."""
    try:
        package = __import__(KEYS_PACKAGE)
    except ImportError:  # not a submitted job
        return
    keys = json.loads(Path(package.__file__).with_name(KEYS_FILE).read_text(encoding="utf-8"))
    os.environ.update(keys)
