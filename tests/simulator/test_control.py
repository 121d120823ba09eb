"""Running and steering the simulator: as `python -m backtrans.simulator` through its HTTP control plane."""

import asyncio

import openai

from backtrans.schema import STAGE_HEADER
from backtrans.simulator import SimulatorConfig, start_subprocess
from backtrans.simulator.replies import prompt_digest


def test_subprocess():
    secret = "sk-subprocess-secret"
    prompt = "Rate this answer from 1 to 5.\nQ: Question number 5?\nA: Answer number 5."
    cfg = SimulatorConfig(latency_ms=5, api_key=secret, models=["judge"], rate_503=1.0)
    with start_subprocess(cfg) as proc:
        assert proc.url == f"http://127.0.0.1:{proc.port}/v1"
        assert secret not in " ".join(proc.proc.args)
        assert proc.configure(rate_503=0.0)["rate_503"] == 0.0

        async def main():
            async with openai.AsyncOpenAI(
                base_url=proc.url, api_key=secret, max_retries=0, default_headers={STAGE_HEADER: "score"}
            ) as c:
                r = await c.chat.completions.create(model="judge", messages=[{"role": "user", "content": prompt}])
                return r.choices[0].message.content

        reply = asyncio.run(main())
        stats = proc.stats()
        log = proc.log()
        proc.reset()
        after_reset = proc.stats()
    assert proc.proc.returncode is not None
    assert reply.endswith("Score: 5")
    assert stats["total_requests"] == 1
    assert stats["authorized_requests"] == 1
    assert stats["by_kind"]["score"] == 1
    assert stats["config"]["models"] == ["judge"]
    assert stats["config"]["api_key"] == "***"
    assert [(e["kind"], e["score"], e["prompt_sha256"]) for e in log] == [("score", 5, prompt_digest(prompt))]
    assert after_reset["total_requests"] == 0
