"""backend: openai against a recording server and the simulator's faults, through the real SDK."""

import pytest

from backtrans.schema import STAGE_HEADER
from tests.backends.faults import FAULTS, Recorder, fault, send, stage


@pytest.fixture
def recorder():
    server = Recorder()
    yield server
    server.close()


def test_reply_headers_and_renamed_kwargs(recorder, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test-123456789")
    config = stage("openai", api_key_env="JUDGE_KEY", generation_kwargs={"max_new_tokens": 64, "temperature": 0.5})
    reply, failed = send(config, recorder.url)

    assert failed is None
    assert (reply.text, reply.prompt_tokens, reply.completion_tokens, reply.finish_reason) == (
        "Hello there.", 7, 3, "length",
    )  # fmt: skip
    [(path, headers, body)] = recorder.requests
    assert path == "/v1/chat/completions"
    assert headers[STAGE_HEADER.lower()] == "score" and headers["authorization"] == "Bearer sk-test-123456789"
    assert body == {"model": "m-1", "messages": [{"role": "user", "content": "Hi?"}], "max_tokens": 64,
                    "temperature": 0.5}  # fmt: skip


@pytest.mark.parametrize("rate", sorted(FAULTS))
def test_faults_are_classified_by_the_sdk_exception(rate):
    failed = fault("openai", rate)
    assert (failed.error_type, failed.retryable) == FAULTS[rate]
    assert "\n" not in failed.message
    if rate == "rate_429":
        assert failed.retry_after_s == 2.0


def test_a_400_is_not_retried():
    from backtrans.simulator import Simulator, SimulatorConfig

    with Simulator(SimulatorConfig(max_context_chars=10)) as sim:
        reply, failed = send(stage("openai", base_url=sim.url), sim.url, prompt="x" * 100)
    assert reply is None and (failed.error_type, failed.retryable) == ("http_400", False)
