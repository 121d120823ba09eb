"""Tests for the deterministic OpenAI-compatible simulator (real clients, loopback only)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import openai
import pytest
from huggingface_hub import AsyncInferenceClient

from backtrans.prompts import BACKWARD, SELF_CURATION, load_template, render
from backtrans.simulator import (
    BACKWARD_PROMPT_PREFIX,
    SCORE_PROMPT_PREFIX,
    Simulator,
    SimulatorConfig,
    _build_parser,
    _config_from_args,
    config_to_argv,
    simulated_score,
    start_subprocess,
)


def run(coro):
    return asyncio.run(coro)


def score_prompt(i: int) -> str:
    return (
        f"{SCORE_PROMPT_PREFIX} Evaluate whether or not the answer is a good example.\n\n"
        f"<instruction>Question number {i}?</instruction>\n<answer>Answer number {i}.</answer>"
    )


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def client(sim: Simulator, **kw) -> openai.AsyncOpenAI:
    kw.setdefault("api_key", "unused")
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 10)
    return openai.AsyncOpenAI(base_url=sim.url, **kw)


async def ask(sim: Simulator, text: str, model: str = "m", **kw) -> str:
    create_kw = {k: kw.pop(k) for k in list(kw) if k in ("max_tokens", "stop")}
    async with client(sim, **kw) as c:
        r = await c.chat.completions.create(model=model, messages=user(text), **create_kw)
        return r.choices[0].message.content


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


# --------------------------------------------------------------------------- content


def test_simulated_score_definition():
    import hashlib

    for text in ["", "abc", score_prompt(3)]:
        expected = 1 + int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 5
        assert simulated_score(text) == expected
    assert {simulated_score(score_prompt(i)) for i in range(50)} == {1, 2, 3, 4, 5}


def test_score_replies_are_deterministic_and_match_simulated_score():
    template = load_template(SELF_CURATION)  # the project's judge prompt
    prompts = [score_prompt(i) for i in range(6)]
    prompts += [render(template, instruction=f"Name {i} rivers.", generation=f"Rivers {i}.") for i in range(6)]

    async def main(sim):
        async with client(sim) as c:
            out = []
            for p in prompts:
                r = await c.chat.completions.create(
                    model="judge",
                    messages=[
                        {"role": "system", "content": "You are a judge."},
                        *user(p),
                    ],
                    temperature=0.7,
                    seed=3,
                )
                out.append(r)
            return out

    with Simulator(SimulatorConfig(latency_ms=1)) as sim:
        first = run(main(sim))
        second = run(main(sim))
        log = sim.log()
        stats = sim.stats()
    for p, r1, r2 in zip(prompts, first, second, strict=True):
        text = r1.choices[0].message.content
        assert text == r2.choices[0].message.content
        assert text.startswith("Simulated judge (not a real model): ")
        assert text.splitlines()[-1] == f"Score: {simulated_score(p)}"
        assert text.count("Score:") == 1
        assert r1.object == "chat.completion"
        assert r1.model == "judge"
        assert r1.choices[0].finish_reason == "stop"
        assert r1.usage.total_tokens == r1.usage.prompt_tokens + r1.usage.completion_tokens
        assert r1.usage.completion_tokens == pytest.approx(len(text) / 4, abs=1)
    assert stats["by_kind"] == {"score": 24, "generate": 0, "backward": 0}
    assert stats["by_outcome"]["ok"] == 24
    assert [e["score"] for e in log[:12]] == [simulated_score(p) for p in prompts]
    assert all(e["kind"] == "score" and e["outcome"] == "ok" for e in log)
    import hashlib

    assert log[0]["prompt_sha256"] == hashlib.sha256(prompts[0].encode()).hexdigest()


def test_generation_and_backward_replies():
    backward = (
        f"{BACKWARD_PROMPT_PREFIX} Write the instruction it answers.\n\n"
        "Answer: The Eiffel Tower was completed in 1889 for the World's Fair in Paris.\n\n"
        "Instruction:"
    )

    project_backward = render(
        load_template(BACKWARD), generation="Photosynthesis turns light, water and CO2 into sugar."
    )

    async def main(sim):
        gen = await ask(sim, "Explain photosynthesis to a ten year old.", model="gen-model")
        gen2 = await ask(sim, "Explain photosynthesis to a ten year old.", model="gen-model")
        back = await ask(sim, backward)
        back2 = await ask(sim, project_backward)
        back3 = await ask(sim, render(load_template(BACKWARD), generation=gen))
        return gen, gen2, back, back2, back3

    with Simulator() as sim:
        gen, gen2, back, back2, back3 = run(main(sim))
        stats = sim.stats()
    assert (
        back2
        == "[simulated instruction] What can you tell me about Photosynthesis turns light, water and CO2 into sugar?"
    )
    assert back3 == "[simulated instruction] What can you tell me about This text comes from a simulator, not from?"
    assert gen == gen2
    assert gen.startswith("[simulated response from gen-model] ")
    assert "Explain photosynthesis" in gen
    assert 200 <= len(gen) <= 450
    assert "Score:" not in gen
    assert back == ("[simulated instruction] What can you tell me about The Eiffel Tower was completed in 1889 for?")
    assert stats["by_kind"] == {"score": 0, "generate": 2, "backward": 3}


def test_max_tokens_and_stop_truncate_like_a_real_server():
    async def main(sim):
        async with client(sim) as c:
            r1 = await c.chat.completions.create(model="m", messages=user("hello"), max_tokens=5)
            r2 = await c.chat.completions.create(model="m", messages=user("hello"), stop=["from"])
            return r1, r2

    with Simulator() as sim:
        r1, r2 = run(main(sim))
    assert r1.choices[0].finish_reason == "length"
    assert len(r1.choices[0].message.content) == 20
    assert r2.choices[0].message.content == "[simulated response "
    assert r2.choices[0].finish_reason == "stop"


def test_huggingface_async_inference_client():
    text = score_prompt(7)

    async def main(sim):
        out = []
        for base in (sim.url, sim.root_url):
            hf = AsyncInferenceClient(base_url=base, api_key="hf_unused")
            r = await hf.chat_completion(messages=user(text), model="judge", max_tokens=200)
            out.append(r)
            await hf.close()
        return out

    with Simulator() as sim:
        replies = run(main(sim))
    for r in replies:
        assert r.choices[0].message.content.endswith(f"Score: {simulated_score(text)}")
        assert r.choices[0].finish_reason == "stop"
        assert r.usage.total_tokens > 0
        assert r.model == "judge"


# --------------------------------------------------------------------------- faults


def test_injected_429_has_retry_after_and_openai_error_json():
    async def main(sim):
        with pytest.raises(openai.RateLimitError) as info:
            await ask(sim, "hi")
        return info.value

    with Simulator(SimulatorConfig(rate_429=1.0, retry_after_s=2)) as sim:
        err = run(main(sim))
        stats = sim.stats()
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "2"
    assert err.body["type"] == "rate_limit_error"
    assert stats["by_outcome"]["429"] == 1


@pytest.mark.parametrize(
    ("field", "status", "exc"),
    [
        ("rate_503", 503, openai.InternalServerError),
        ("rate_500", 500, openai.InternalServerError),
    ],
)
def test_injected_5xx(field, status, exc):
    async def main(sim):
        with pytest.raises(exc) as info:
            await ask(sim, "hi")
        return info.value

    with Simulator(SimulatorConfig(**{field: 1.0})) as sim:
        err = run(main(sim))
        stats = sim.stats()
    assert err.status_code == status
    assert err.body["type"] == "server_error"
    assert stats["by_outcome"][str(status)] == 1


def test_injected_hang_times_out_the_client_and_frees_the_slot():
    async def main(sim):
        with pytest.raises(openai.APITimeoutError):
            await ask(sim, "hi", timeout=0.3)

    with Simulator(SimulatorConfig(rate_hang=1.0, hang_s=20)) as sim:
        run(main(sim))
        wait_until(lambda: sim.stats()["in_flight"] == 0)
        stats = sim.stats()
    assert stats["by_outcome"]["hang"] == 1
    assert stats["client_disconnects"] == 1
    assert stats["by_kind_in_flight"]["generate"]["in_flight"] == 0


def test_injected_drop_closes_the_connection():
    async def main(sim):
        with pytest.raises(openai.APIConnectionError) as info:
            await ask(sim, "hi")
        assert not isinstance(info.value, openai.APITimeoutError)

    with Simulator(SimulatorConfig(rate_drop=1.0)) as sim:
        run(main(sim))
        stats = sim.stats()
    assert stats["by_outcome"]["drop"] == 1
    assert stats["in_flight"] == 0


def test_injected_garbage_is_a_200_with_a_non_json_body():
    async def main(sim):
        async with aiohttp.ClientSession() as s:
            body = {"model": "m", "messages": user("hi")}
            async with s.post(sim.url + "/chat/completions", json=body) as r:
                status, raw = r.status, await r.read()
        with pytest.raises(ValueError):  # json.JSONDecodeError from the openai client
            await ask(sim, "hi")
        return status, raw

    with Simulator(SimulatorConfig(rate_garbage=1.0)) as sim:
        status, raw = run(main(sim))
        stats = sim.stats()
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(raw)
    assert stats["by_outcome"]["garbage"] == 2


def test_injected_noscore_only_affects_scoring_requests():
    text = score_prompt(1)

    async def main(sim):
        return await ask(sim, text), await ask(sim, "write a poem")

    with Simulator(SimulatorConfig(rate_noscore=1.0)) as sim:
        judged, generated = run(main(sim))
        log = sim.log()
    assert judged.startswith("Simulated judge (not a real model)")
    assert "score" not in judged.lower()
    assert generated.startswith("[simulated response from m]")
    assert [(e["outcome"], e["score"]) for e in log] == [
        ("noscore", None),
        ("ok", None),
    ]


def test_fault_draws_are_seeded_and_retries_succeed():
    cfg = SimulatorConfig(rate_429=0.3, rate_503=0.2, seed=7, retry_after_s=0.01)

    async def outcomes(sim, n):
        async with client(sim) as c:
            for i in range(n):
                with contextlib.suppress(openai.APIStatusError):
                    await c.chat.completions.create(model="m", messages=user(f"q{i}"))

    logs = []
    for _ in range(2):
        with Simulator(cfg) as sim:
            run(outcomes(sim, 60))
            logs.append([e["outcome"] for e in sim.log()])
    assert logs[0] == logs[1]
    assert 5 <= logs[0].count("429") <= 35
    assert 2 <= logs[0].count("503") <= 25

    async def with_retries(sim):
        # 429s carry retry-after-ms=10, so the client's own retries are quick.
        async with client(sim, max_retries=20) as c:
            return [
                (await c.chat.completions.create(model="m", messages=user(f"x{i}"))).choices[0].message.content
                for i in range(15)
            ]

    with Simulator(SimulatorConfig(rate_429=0.5, seed=1, retry_after_s=0.01)) as sim:
        replies = run(with_retries(sim))
        stats = sim.stats()
    assert len(replies) == 15
    assert stats["by_outcome"]["ok"] == 15
    assert stats["by_outcome"]["429"] > 0


def test_rate_validation():
    with pytest.raises(ValueError):
        SimulatorConfig(rate_429=0.6, rate_503=0.6)
    with pytest.raises(ValueError):
        SimulatorConfig(rate_drop=-0.1)
    with Simulator() as sim, pytest.raises(ValueError):
        sim.configure(rate_500=2.0)


# --------------------------------------------------------------------------- limits


def test_rpm_limit_really_limits():
    async def main(sim):
        ok, errors = 0, []
        async with client(sim) as c:
            for i in range(8):
                try:
                    await c.chat.completions.create(model="m", messages=user(f"r{i}"))
                    ok += 1
                except openai.RateLimitError as exc:
                    errors.append(exc)
        return ok, errors

    with Simulator(SimulatorConfig(rpm_limit=5)) as sim:
        ok, errors = run(main(sim))
        stats = sim.stats()
    assert ok == 5
    assert len(errors) == 3
    for err in errors:
        assert 1 <= int(err.response.headers["retry-after"]) <= 60
        assert err.body["type"] == "rate_limit_error"
    assert stats["rpm_rejections"] == 3
    assert stats["by_outcome"]["429"] == 3

    # A short window shows the slots free up again as it slides.
    with Simulator(SimulatorConfig(rpm_limit=2, rpm_window_s=1.0)) as sim:
        ok, errors = run(main(sim))
        assert (ok, len(errors)) == (2, 6)
        time.sleep(1.05)
        ok, errors = run(main(sim))
        assert (ok, len(errors)) == (2, 6)
        assert errors[0].response.headers["retry-after"] == "1"  # at least 1


def test_unknown_model_is_404_and_models_are_listed():
    async def main(sim):
        async with client(sim) as c:
            listed = [m.id async for m in c.models.list()]
            with pytest.raises(openai.NotFoundError) as info:
                await c.chat.completions.create(model="nope", messages=user("hi"))
            r = await c.chat.completions.create(model="b", messages=user("hi"))
        return listed, info.value, r

    with Simulator(SimulatorConfig(models=["a", "b"])) as sim:
        listed, err, r = run(main(sim))
        stats = sim.stats()
    assert listed == ["a", "b"]
    assert err.status_code == 404
    assert err.body["code"] == "model_not_found"
    assert err.body["type"] == "invalid_request_error"
    assert r.model == "b"
    assert stats["by_outcome"]["404"] == 1

    async def default_list(sim):
        async with client(sim) as c:
            return [m.id async for m in c.models.list()]

    with Simulator() as sim:
        assert run(default_list(sim)) == []


def test_api_key_required():
    secret = "sk-sim-secret-123"

    async def main(sim):
        with pytest.raises(openai.AuthenticationError) as wrong:
            await ask(sim, "hi", api_key="sk-wrong")
        async with aiohttp.ClientSession() as s:
            body = {"model": "m", "messages": user("hi")}
            async with s.post(sim.url + "/chat/completions", json=body) as r:
                missing = (r.status, await r.json())
        good = await ask(sim, "hi", api_key=secret)
        return wrong.value, missing, good

    with Simulator(SimulatorConfig(api_key=secret)) as sim:
        wrong, missing, good = run(main(sim))
        stats = sim.stats()
        log = sim.log()
        assert secret not in repr(sim.config)
    assert wrong.status_code == 401
    assert wrong.body["type"] == "invalid_request_error"
    assert missing[0] == 401
    assert missing[1]["error"]["code"] == "invalid_api_key"
    assert good.startswith("[simulated response from m]")
    assert stats["authorized_requests"] == 1
    assert stats["by_outcome"]["401"] == 2
    assert stats["config"]["api_key"] == "***"
    assert secret not in json.dumps(stats) + json.dumps(log)


def test_context_length_exceeded():
    async def main(sim):
        with pytest.raises(openai.BadRequestError) as info:
            await ask(sim, "x" * 101)
        ok = await ask(sim, "x" * 100)
        return info.value, ok

    with Simulator(SimulatorConfig(max_context_chars=100)) as sim:
        err, ok = run(main(sim))
    assert err.status_code == 400
    assert err.body["code"] == "context_length_exceeded"
    assert ok


# --------------------------------------------------------------------------- stats


def test_stats_track_concurrency():
    async def main(sim):
        async with client(sim) as c:
            await asyncio.gather(*(c.chat.completions.create(model="m", messages=user(f"c{i}")) for i in range(20)))

    with Simulator(SimulatorConfig(latency_ms=250)) as sim:
        run(main(sim))
        stats = sim.stats()
        sim.reset()
        after_reset = sim.stats()
        assert sim.log() == []
    assert stats["total_requests"] == 20
    assert stats["max_in_flight"] == 20
    assert stats["in_flight"] == 0
    assert 1 < stats["mean_in_flight"] <= 20
    gen = stats["by_kind_in_flight"]["generate"]
    assert gen["max_in_flight"] == 20
    assert gen["in_flight"] == 0
    assert stats["by_kind_in_flight"]["score"]["max_in_flight"] == 0
    assert after_reset["total_requests"] == 0
    assert after_reset["max_in_flight"] == 0
    assert after_reset["by_outcome"]["ok"] == 0


def test_http_control_plane_and_keep_log_off():
    async def main(sim):
        async with aiohttp.ClientSession() as s:
            root = sim.root_url
            async with s.post(root + "/_sim/config", json={"rate_503": 1.0}) as r:
                assert r.status == 200
                assert (await r.json())["rate_503"] == 1.0
            async with s.post(root + "/_sim/config", json={"no_such_field": 1}) as r:
                assert r.status == 400
            async with s.post(root + "/_sim/config", json={"port": 1}) as r:
                assert r.status == 400
            body = {"model": "m", "messages": user("hi")}
            async with s.post(root + "/chat/completions", json=body) as r:  # no /v1
                assert r.status == 503
            async with s.get(root + "/_sim/stats") as r:
                stats = await r.json()
            async with s.get(root + "/_sim/log") as r:
                log = await r.json()
            async with s.post(root + "/_sim/reset") as r:
                assert r.status == 200
            async with s.get(root + "/_sim/stats") as r:
                after = await r.json()
        return stats, log, after

    with Simulator(SimulatorConfig(keep_log=False)) as sim:
        stats, log, after = run(main(sim))
    assert stats["by_outcome"]["503"] == 1
    assert log == []
    assert after["total_requests"] == 0


# --------------------------------------------------------------------------- process


def test_cli_flags_round_trip():
    cfg = SimulatorConfig(
        latency_ms=20,
        jitter_ms=5,
        rate_429=0.1,
        rate_noscore=0.2,
        models=["a", "b"],
        rpm_limit=100,
        keep_log=False,
        seed=3,
        max_context_chars=5000,
    )
    args = _build_parser().parse_args(config_to_argv(cfg))
    assert _config_from_args(args) == cfg
    assert "--api-key" not in config_to_argv(SimulatorConfig(api_key="k"))


def test_subprocess():
    secret = "sk-subprocess-secret"
    cfg = SimulatorConfig(latency_ms=5, api_key=secret, models=["judge"], rate_503=1.0)
    with start_subprocess(cfg) as proc:
        assert proc.url.startswith("http://127.0.0.1:")
        assert proc.url.endswith("/v1")
        assert secret not in " ".join(proc.proc.args)
        proc.configure(rate_503=0.0)
        text = score_prompt(5)

        async def main():
            async with openai.AsyncOpenAI(base_url=proc.url, api_key=secret, max_retries=0) as c:
                r = await c.chat.completions.create(model="judge", messages=user(text))
                return r.choices[0].message.content

        reply = run(main())
        stats = proc.stats()
        log = proc.log()
    assert proc.proc.returncode is not None
    assert reply.endswith(f"Score: {simulated_score(text)}")
    assert stats["total_requests"] == 1
    assert stats["authorized_requests"] == 1
    assert stats["config"]["models"] == ["judge"]
    assert log[0]["score"] == simulated_score(text)
