"""The floor under the job's start-up on a local Ray: what Ray itself costs before any request.

`python -m bench.startup` prints one JSON line with seconds since the process started:
`import_ray`, `ray_init` (as `backtrans run` calls it), `first_task` (a 0.25-CPU task, which needs a
worker process), `actor_openai` (an actor whose constructor imports `openai` and builds an
`AsyncOpenAI`, as a stage actor does) and `actor_aiohttp` (the same with `aiohttp` only).
"""

from __future__ import annotations

import json
import sys
import time

T0 = time.monotonic()


def main() -> int:
    marks = {}
    import ray

    marks["import_ray"] = time.monotonic() - T0
    ray.init(ignore_reinit_error=True, log_to_driver=False)
    marks["ray_init"] = time.monotonic() - T0

    @ray.remote(num_cpus=0.25)
    def task() -> int:
        return 1

    ray.get(task.remote())
    marks["first_task"] = time.monotonic() - T0

    @ray.remote(num_cpus=0.25)
    class OpenAIActor:
        def __init__(self):
            import openai

            self.client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused")

        def ready(self) -> bool:
            return True

    @ray.remote(num_cpus=0.25)
    class AiohttpActor:
        def __init__(self):
            import aiohttp  # noqa: F401

        def ready(self) -> bool:
            return True

    started = time.monotonic()
    ray.get(OpenAIActor.remote().ready.remote())
    marks["actor_openai"] = time.monotonic() - started
    started = time.monotonic()
    ray.get(AiohttpActor.remote().ready.remote())
    marks["actor_aiohttp"] = time.monotonic() - started
    ray.shutdown()
    print(json.dumps({k: round(v, 2) for k, v in marks.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
