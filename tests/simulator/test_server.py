"""The simulator's HTTP server through the real clients (openai, huggingface_hub, aiohttp), on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time

import aiohttp
import openai
import pytest
from huggingface_hub import AsyncInferenceClient

from backtrans.prompts import BACKWARD, SELF_CURATION, load_template, render
from backtrans.schema import STAGE_HEADER
from backtrans.simulator import Simulator, SimulatorConfig
from backtrans.simulator.replies import BACKWARD_PROMPT_PREFIX, prompt_digest


def run(coro):
    return asyncio.run(coro)


def score_prompt(i: int) -> str:
    """A judge prompt that is not the project's template: the stage header alone makes it a score request."""
    return (
        "Evaluate whether or not the answer is a good example.\n\n"
        f"<instruction>Question number {i}?</instruction>\n<answer>Answer number {i}.</answer>"
    )


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def client(sim: Simulator, stage: str | None = None, **kw) -> openai.AsyncOpenAI:
    kw.setdefault("api_key", "unused")
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 10)
    headers = {STAGE_HEADER: stage} if stage else None
    return openai.AsyncOpenAI(base_url=sim.url, default_headers=headers, **kw)


async def ask(sim: Simulator, text: str, model: str = "m", stage: str | None = None, **kw) -> str:
    create_kw = {k: kw.pop(k) for k in list(kw) if k in ("max_tokens", "stop")}
    async with client(sim, stage, **kw) as c:
        r = await c.chat.completions.create(model=model, messages=user(text), **create_kw)
        return r.choices[0].message.content


async def post(url: str, body: dict, headers: dict | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
        return r.status, await r.read()


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


# --------------------------------------------------------------------------- replies by stage


def test_score_replies_are_deterministic():
    template = load_template(SELF_CURATION)  # the project's judge prompt
    prompts = [score_prompt(i) for i in range(6)]
    prompts += [render(template, instruction=f"Name {i} rivers.", generation=f"Rivers {i}.") for i in range(6)]
    scores = [5, 2, 2, 4, 3, 3, 3, 3, 2, 3, 5, 5]

    async def main(sim):
        async with client(sim, "score") as c:
            return [
                await c.chat.completions.create(
                    model="judge",
                    messages=[{"role": "system", "content": "You are a judge."}, *user(p)],
                    temperature=0.7,
                    seed=3,
                )
                for p in prompts
            ]

    with Simulator(SimulatorConfig(latency_ms=1)) as sim:
        first = run(main(sim))
        second = run(main(sim))
        log = sim.log()
        stats = sim.stats()
    for r1, r2, score in zip(first, second, scores, strict=True):
        text = r1.choices[0].message.content
        assert text == r2.choices[0].message.content
        assert text.startswith("Simulated judge (not a real model): ")
        assert text.splitlines()[-1] == f"Score: {score}"
        assert text.count("Score:") == 1
        assert r1.object == "chat.completion"
        assert r1.model == "judge"
        assert r1.choices[0].finish_reason == "stop"
        assert r1.usage.total_tokens == r1.usage.prompt_tokens + r1.usage.completion_tokens
        assert r1.usage.completion_tokens == pytest.approx(len(text) / 4, abs=1)
    assert first[0].usage.prompt_tokens == 38  # all messages: (16 + 134 characters) / 4, rounded up
    assert stats["by_kind"] == {"score": 24, "generate": 0, "backward": 0}
    assert stats["by_outcome"]["ok"] == 24
    assert [e["score"] for e in log] == scores * 2
    assert all(e["kind"] == "score" and e["outcome"] == "ok" for e in log)
    assert log[0]["prompt_sha256"] == prompt_digest(prompts[0])


def test_the_stage_header_not_the_prompt_marks_a_scoring_request():
    judge_prompt = render(load_template(SELF_CURATION), instruction="Name a river.", generation="The Nile.")
    custom_judge = "Rate the pair below from 1 to 5.\nQ: Name a river.\nA: The Nile."

    async def main(sim):
        return (
            await ask(sim, custom_judge, stage="score"),
            await ask(sim, judge_prompt, stage="generate"),
            await ask(sim, judge_prompt),  # no header
            await post(sim.url + "/chat/completions", {"model": "m", "messages": user("hi")}, {STAGE_HEADER: "judge"}),
        )

    with Simulator() as sim:
        custom, generated, unmarked, (status, body) = run(main(sim))
        stats = sim.stats()
    assert custom.splitlines()[-1] == "Score: 5"
    assert generated.startswith("[simulated response from m] ") and "Score:" not in generated
    assert unmarked == generated
    assert status == 400
    assert (
        json.loads(body)["error"]["message"]
        == "X-Backtrans-Stage must be one of generate, augment, score, not 'judge'."
    )
    assert stats["by_kind"] == {"score": 1, "generate": 2, "backward": 0}
    assert stats["by_outcome"]["400"] == 1


def test_generation_and_backward_replies():
    labelled = (
        f"{BACKWARD_PROMPT_PREFIX} Write the instruction it answers.\n\n"
        "Answer: The Eiffel Tower was completed in 1889 for the World's Fair in Paris.\n\n"
        "Instruction:"
    )
    project_backward = render(
        load_template(BACKWARD), generation="Photosynthesis turns light, water and CO2 into sugar."
    )

    async def main(sim):
        gen = await ask(sim, "Explain photosynthesis to a ten year old.", model="gen-model", stage="generate")
        gen2 = await ask(sim, "Explain photosynthesis to a ten year old.", model="gen-model", stage="generate")
        back = await ask(sim, labelled, stage="augment")
        back2 = await ask(sim, project_backward, stage="augment")
        back3 = await ask(sim, render(load_template(BACKWARD), generation=gen), stage="augment")
        bare = await ask(sim, "Photosynthesis turns light into sugar.", stage="augment")
        return gen, gen2, back, back2, back3, bare

    with Simulator() as sim:
        gen, gen2, back, back2, back3, bare = run(main(sim))
        stats = sim.stats()
    assert gen == gen2
    assert gen == (
        "[simulated response from gen-model] This text comes from a simulator, not from a language model. It stands "
        'in for an answer to the request that begins "Explain photosynthesis to a ten year old.". A real model would '
        "write a helpful reply here; the simulator only echoes the opening words so the pipeline can be exercised "
        f"end to end (ref {prompt_digest('Explain photosynthesis to a ten year old.')[:12]})."
    )
    assert back == "[simulated instruction] What can you tell me about The Eiffel Tower was completed in 1889 for?"
    assert back2 == (
        "[simulated instruction] What can you tell me about Photosynthesis turns light, water and CO2 into sugar?"
    )
    assert back3 == "[simulated instruction] What can you tell me about This text comes from a simulator, not from?"
    assert bare.startswith("[simulated response from m] This text comes from a simulator, not from a language model.")
    assert stats["by_kind"] == {"score": 0, "generate": 3, "backward": 3}


def test_max_tokens_and_stop_truncate_like_a_real_server():
    async def main(sim):
        async with client(sim, "generate") as c:
            r1 = await c.chat.completions.create(model="m", messages=user("hello"), max_tokens=5)
            r2 = await c.chat.completions.create(model="m", messages=user("hello"), stop=["from"])
            return r1, r2

    with Simulator() as sim:
        r1, r2 = run(main(sim))
    assert r1.choices[0].finish_reason == "length"
    assert r1.choices[0].message.content == "[simulated response "
    assert r1.usage.completion_tokens == 5
    assert r2.choices[0].message.content == "[simulated response "
    assert r2.choices[0].finish_reason == "stop"


def test_huggingface_async_inference_client_sends_the_stage_in_its_headers():
    text = score_prompt(7)

    async def main(sim):
        out = []
        for base in (sim.url, sim.root_url):
            hf = AsyncInferenceClient(base_url=base, api_key="hf_unused", headers={STAGE_HEADER: "score"})
            out.append(await hf.chat_completion(messages=user(text), model="judge", max_tokens=200))
            await hf.close()
        return out

    with Simulator() as sim:
        replies = run(main(sim))
        stats = sim.stats()
    for r in replies:
        assert r.choices[0].message.content.endswith("Score: 2")
        assert r.choices[0].finish_reason == "stop"
        assert r.usage.total_tokens > 0
        assert r.model == "judge"
    assert stats["by_kind"]["score"] == 2


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
    assert err.response.headers["retry-after-ms"] == "2000"
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
        reply = await post(sim.url + "/chat/completions", {"model": "m", "messages": user("hi")})
        with pytest.raises(ValueError):  # json.JSONDecodeError from the openai client
            await ask(sim, "hi")
        return reply

    with Simulator(SimulatorConfig(rate_garbage=1.0)) as sim:
        status, raw = run(main(sim))
        stats = sim.stats()
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(raw)
    assert stats["by_outcome"]["garbage"] == 2


def test_injected_noscore_only_affects_scoring_requests():
    async def main(sim):
        return await ask(sim, score_prompt(1), stage="score"), await ask(sim, score_prompt(1), stage="generate")

    with Simulator(SimulatorConfig(rate_noscore=1.0)) as sim:
        judged, generated = run(main(sim))
        log = sim.log()
    assert judged.startswith("Simulated judge (not a real model)")
    assert "score" not in judged.lower()
    assert generated.startswith("[simulated response from m]")
    assert [(e["kind"], e["outcome"], e["score"]) for e in log] == [
        ("score", "noscore", None),
        ("generate", "ok", None),
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
    assert (logs[0].count("429"), logs[0].count("503"), logs[0].count("ok")) == (20, 11, 29)

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
    assert stats["by_outcome"]["429"] == 15


def test_a_running_simulator_validates_changes():
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
    assert stats["model_list_requests"] == 1

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
        missing = await post(sim.url + "/chat/completions", {"model": "m", "messages": user("hi")})
        good = await ask(sim, "hi", api_key=secret)
        return wrong.value, missing, good

    with Simulator(SimulatorConfig(api_key=secret)) as sim:
        wrong, (status, body), good = run(main(sim))
        stats = sim.stats()
        log = sim.log()
        assert secret not in repr(sim.config)
    assert wrong.status_code == 401
    assert wrong.body["type"] == "invalid_request_error"
    assert status == 401
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    assert good.startswith("[simulated response from m]")
    assert stats["authorized_requests"] == 1
    assert stats["by_outcome"]["401"] == 2
    assert stats["config"]["api_key"] == "***"
    assert secret not in json.dumps(stats) + json.dumps(log)


def test_invalid_requests_are_400():
    url_body_headers = [
        ({"model": "m", "messages": []}, "'messages' must be a non-empty list."),
        ({"model": "m", "messages": ["hi"]}, "Each message must be an object."),
        ({"model": "m", "messages": user("hi"), "stream": True}, "stream=true is not supported by the simulator."),
    ]

    async def main(sim):
        async with aiohttp.ClientSession() as s:
            async with s.post(sim.url + "/chat/completions", data=b"[1]") as r:
                not_an_object = r.status, (await r.json())["error"]["message"]
            async with s.get(sim.url + "/chat/completions") as r:
                wrong_method = r.status
        replies = [await post(sim.url + "/chat/completions", body) for body, _ in url_body_headers]
        return not_an_object, wrong_method, replies

    with Simulator() as sim:
        not_an_object, wrong_method, replies = run(main(sim))
        stats = sim.stats()
    assert not_an_object == (400, "Request body is not a JSON object.")
    assert wrong_method == 405
    assert [(status, json.loads(body)["error"]["message"]) for status, body in replies] == [
        (400, message) for _, message in url_body_headers
    ]
    assert stats["by_outcome"]["400"] == 4
    assert stats["by_kind"] == {"score": 0, "generate": 1, "backward": 0}  # only the stream request was readable


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


# --------------------------------------------------------------------------- stats and control


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
                assert (await r.json())["error"]["message"] == "cannot change port on a running simulator"
            async with s.get(root + "/_sim/config") as r:
                assert (await r.json())["rate_503"] == 1.0
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
            async with s.get(root + "/_sim/nothing") as r:
                unknown = r.status
        return stats, log, after, unknown

    with Simulator(SimulatorConfig(keep_log=False)) as sim:
        stats, log, after, unknown = run(main(sim))
    assert stats["by_outcome"]["503"] == 1
    assert log == []
    assert after["total_requests"] == 0
    assert unknown == 404


# --------------------------------------------------------------------------- scoring methods


def _score_client(sim: Simulator, backend: str):
    from backtrans.backends import backend_for
    from backtrans.config import ScoreConfig

    url = sim.url if backend == "openai" else sim.root_url
    stage = ScoreConfig(backend=backend, base_url=url, model="judge", max_retries=0)
    return backend_for(stage).connect("score", stage, url, None)


async def _send(sim: Simulator, backend: str, prompt: str, options):
    client = _score_client(sim, backend)
    try:
        return await client.send(prompt, options)
    finally:
        await client.close()


@pytest.mark.parametrize("backend", ["openai", "hf-endpoint"])
def test_logprobs_carry_the_known_distribution_at_the_score_token(backend):
    from backtrans.backends import RequestOptions
    from backtrans.simulator.replies import OTHER_TOKEN_SHARE, score_for_digest, score_probs

    prompt = score_prompt(1)
    digest = prompt_digest(prompt)
    with Simulator() as sim:
        reply = run(_send(sim, backend, prompt, RequestOptions(top_logprobs=20)))
        plain = run(_send(sim, backend, prompt, None))

    assert "".join(token.token for token in reply.logprobs) == reply.text
    assert reply.text.endswith(f"Score: {score_for_digest(digest)}") and plain.logprobs is None
    last = reply.logprobs[-1]
    assert last.token == str(score_for_digest(digest)) and set(last.top) == {"1", "2", "3", "4", "5", "N/A"}
    for k, p in enumerate(score_probs(digest)):
        assert math.exp(last.top[str(k + 1)]) == pytest.approx(p * (1 - OTHER_TOKEN_SHARE), abs=1e-12)
    assert (
        max(score_probs(digest)) == score_probs(digest)[score_for_digest(digest) - 1]
    )  # the written score is the mode


@pytest.mark.parametrize("backend", ["openai", "hf-endpoint"])
def test_a_json_schema_request_gets_a_verdict_even_from_a_weak_judge(backend):
    from backtrans.backends import RequestOptions
    from backtrans.parse import VERDICT_SCHEMA, json_verdict
    from backtrans.simulator.replies import score_for_digest, weak_judge_leaves_out_score

    prompts = [score_prompt(i) for i in range(40)]
    with Simulator(SimulatorConfig(noscore_share=0.5)) as sim:
        structured = [run(_send(sim, backend, p, RequestOptions(json_schema=VERDICT_SCHEMA))) for p in prompts]
        plain = [run(_send(sim, backend, p, None)) for p in prompts]

    weak = [weak_judge_leaves_out_score(prompt_digest(p), 0.5) for p in prompts]
    assert 10 < sum(weak) < 30
    assert [json_verdict(r.text).score for r in structured] == [score_for_digest(prompt_digest(p)) for p in prompts]
    assert [("Score:" not in r.text) for r in plain] == weak


def test_a_server_without_logprobs_answers_a_request_for_them_without():
    with Simulator(SimulatorConfig(serve_logprobs=False)) as sim:
        status, body = run(post(sim.url + "/chat/completions", {
            "model": "m", "messages": user(score_prompt(2)), "logprobs": True, "top_logprobs": 5,
        }, {STAGE_HEADER: "score"}))  # fmt: skip
    assert status == 200 and json.loads(body)["choices"][0]["logprobs"] is None
