"""Client cost per request, without Ray: the project's `ChatEndpoint` against lighter clients.

Each mode runs in its own process (`python -m bench.client --mode M ...`), sends `n` chat requests
to the simulator with at most `c` in flight, from `2c` worker coroutines (so, as in a stage actor,
as many requests wait at the in-flight cap as are in flight), and prints one JSON line: its own CPU
seconds (`time.process_time`, imports excluded) per request and the request rate.

- `endpoint`: `backtrans.endpoints.ChatEndpoint.complete`, with the stage's `Gate`, as an actor runs it;
- `sdk`: `openai.AsyncOpenAI.chat.completions.create` under an `asyncio.Semaphore`, no gate;
- `aiohttp`: a bare `aiohttp` POST of the same JSON body, `json.loads` of the reply.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

MODES = ("endpoint", "sdk", "aiohttp")


def _prompt(i: int) -> str:
    from bench.workload import instruction

    return instruction(i)


async def _drive(n: int, c: int, send) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await send(_prompt(i))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(2 * c)))
    return time.perf_counter() - started


async def _run(mode: str, url: str, n: int, c: int) -> dict:
    from backtrans.config import StageConfig
    from backtrans.schema import STAGE_HEADER

    stage = StageConfig(backend="openai", base_url=url, model="bench-generator", max_concurrency=c, actors=1)
    body_extra = {"max_tokens": 1024, "temperature": 0.7}
    stage_header = {STAGE_HEADER: "generate"}  # as the endpoint sends it, so every mode sends the same request
    if mode == "endpoint":
        from backtrans.backends import backend_for
        from backtrans.endpoints import ChatEndpoint

        stage = stage.model_copy(update={"generation_kwargs": {"max_new_tokens": 1024, "temperature": 0.7}})
        endpoint = ChatEndpoint("generate", stage, backend_for(stage).connect("generate", stage, url, None))

        async def send(prompt: str) -> None:
            await endpoint.complete(prompt)

        async def close() -> None:  # the endpoint's client lives as long as its stage actor
            return None
    elif mode == "sdk":
        import openai

        client = openai.AsyncOpenAI(
            base_url=url, api_key="unused", max_retries=0, timeout=60, default_headers=stage_header
        )
        slots = asyncio.Semaphore(c)

        async def send(prompt: str) -> None:
            async with slots:
                reply = await client.chat.completions.create(
                    model=stage.model, messages=[{"role": "user", "content": prompt}], **body_extra
                )
            _ = reply.choices[0].message.content

        close = client.close
    else:
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=c), timeout=aiohttp.ClientTimeout(total=60)
        )
        slots = asyncio.Semaphore(c)
        chat_url = url.rstrip("/") + "/chat/completions"

        async def send(prompt: str) -> None:
            body = json.dumps({"model": stage.model, "messages": [{"role": "user", "content": prompt}], **body_extra})
            async with (
                slots,
                session.post(
                    chat_url, data=body, headers={"Content-Type": "application/json", **stage_header}
                ) as response,
            ):
                payload = json.loads(await response.read())
                if response.status != 200:
                    raise RuntimeError(response.status)
            _ = payload["choices"][0]["message"]["content"]

        close = session.close
    await _drive(min(n, 2 * c), c, send)  # warm-up: connections, lazy imports
    cpu0 = time.process_time()
    wall = await _drive(n, c, send)
    cpu = time.process_time() - cpu0
    await close()
    return {"mode": mode, "n": n, "c": c, "cpu_ms_per_request": round(1000 * cpu / n, 3), "requests_per_s": n / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--c", type=int, default=64)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_run(args.mode, args.url, args.n, args.c))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
