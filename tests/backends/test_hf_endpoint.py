"""backend: hf-endpoint against a recording server and the simulator's faults, through AsyncInferenceClient."""

import pytest
from pydantic import ValidationError

from backtrans.backends import backend_for
from backtrans.config import StageConfig
from backtrans.schema import STAGE_HEADER
from tests.backends.faults import FAULTS, Recorder, fault, send, stage


@pytest.fixture
def recorder():
    server = Recorder()
    yield server
    server.close()


def _root(url: str) -> str:
    return url.removesuffix("/v1")  # AsyncInferenceClient takes the server root


def test_reply_and_stage_header(recorder):
    reply, failed = send(stage("hf-endpoint", base_url=_root(recorder.url), generation_kwargs={"max_new_tokens": 8}),
                         _root(recorder.url))  # fmt: skip

    assert failed is None
    assert (reply.text, reply.prompt_tokens, reply.completion_tokens, reply.finish_reason) == (
        "Hello there.", 7, 3, "length",
    )  # fmt: skip
    [(path, headers, body)] = recorder.requests
    assert path == "/v1/chat/completions" and headers[STAGE_HEADER.lower()] == "score"
    assert body["max_tokens"] == 8 and body["messages"] == [{"role": "user", "content": "Hi?"}]


@pytest.mark.parametrize("rate", sorted(FAULTS))
def test_faults_are_classified_by_the_client_exception(rate):
    failed = fault("hf-endpoint", rate, base_url_of=lambda sim: sim.root_url)
    assert (failed.error_type, failed.retryable) == FAULTS[rate]
    if rate == "rate_429":
        assert failed.retry_after_s == 2.0


def test_config_needs_a_url_or_an_endpoint_name_and_probes_the_root():
    backend = backend_for(stage("hf-endpoint", base_url="http://h"))
    unchecked = StageConfig.model_construct(backend="hf-endpoint", model="m")
    with pytest.raises(ValueError, match=r"^base_url: backend hf-endpoint needs base_url or endpoint_name$"):
        backend.check_config(unchecked)
    with pytest.raises(ValidationError, match=r"base_url: backend hf-endpoint needs base_url or endpoint_name"):
        stage("hf-endpoint")  # the config's validator asks the backend
    backend.check_config(stage("hf-endpoint", endpoint_name="my-notus"))
    assert backend.models_url(unchecked, "http://h:8080/v1/") == "http://h:8080/v1/models"
    assert backend.models_url(unchecked, "http://h:8080") == "http://h:8080/v1/models"
