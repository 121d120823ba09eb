"""`backend: hf-endpoint`: a TGI server or a dedicated Inference Endpoint through
`huggingface_hub.AsyncInferenceClient`."""

from __future__ import annotations

import importlib
import json
from functools import cache
from typing import TYPE_CHECKING

from backtrans.backends import base
from backtrans.errors import one_line
from backtrans.schema import STAGE_HEADER

if TYPE_CHECKING:
    from backtrans.config import StageConfig


@cache
def _transport_errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """(timeout classes, connection classes) of the HTTP library huggingface_hub runs on: httpx2
    from 2.0, httpx in 1.x, aiohttp before (which raises asyncio's TimeoutError, the builtin)."""
    from huggingface_hub.errors import InferenceTimeoutError

    timeouts, connections = [InferenceTimeoutError, TimeoutError], []
    for module, timeout, connection in (
        ("httpx2", "TimeoutException", "TransportError"),
        ("httpx", "TimeoutException", "TransportError"),
        ("aiohttp", "ServerTimeoutError", "ClientConnectionError"),
    ):
        try:
            library = importlib.import_module(module)
        except ImportError:
            continue
        timeouts.append(getattr(library, timeout))
        connections.append(getattr(library, connection))
    return tuple(timeouts), tuple(connections)


class HFEndpointClient:
    def __init__(self, stage_name: str, stage: StageConfig, base_url: str | None, api_key: str | None):
        from huggingface_hub import AsyncInferenceClient

        self.model = stage.model
        self.kwargs = base.chat_kwargs(stage.generation_kwargs)
        self._secret = api_key
        self._client = AsyncInferenceClient(
            base_url=base_url, token=api_key, timeout=stage.timeout_s, headers={STAGE_HEADER: stage_name}
        )

    async def send(self, prompt: str, options: base.RequestOptions | None = None) -> base.Reply:
        messages = [{"role": "user", "content": prompt}]
        kwargs = dict(self.kwargs)
        options = options or base.RequestOptions()
        if options.top_logprobs:
            kwargs |= {"logprobs": True, "top_logprobs": options.top_logprobs}
        if options.json_schema is not None:
            # TGI's grammar, in the form huggingface_hub 2.x types it (ChatCompletionInputResponseFormatJSONSchema)
            schema = {"name": "verdict", "strict": True, "schema": options.json_schema}
            kwargs["response_format"] = {"type": "json_schema", "json_schema": schema}
        try:
            response = await self._client.chat_completion(messages, model=self.model, **kwargs)
            choice = response.choices[0]
            text, finish_reason = choice.message.content, choice.finish_reason
            usage = vars(response.usage) if response.usage else {}
            logprobs = choice.logprobs.content if choice.logprobs else None
            return base.completion_reply(text, finish_reason, usage, logprobs)
        except (json.JSONDecodeError, AttributeError, IndexError, KeyError, TypeError):
            raise base.MalformedReply("the reply is not a chat completion") from None

    def classify(self, error: Exception) -> base.FailedAttempt:
        from huggingface_hub.errors import HfHubHTTPError

        timeouts, connections = _transport_errors()
        if isinstance(error, HfHubHTTPError) and error.response is not None:
            return base.http_failure(error.response.status_code, error.response.headers, one_line(error, self._secret))
        if isinstance(error, timeouts):  # before connections: httpx's timeouts are transport errors
            return base.FailedAttempt("timeout", True, one_line(error, self._secret))
        if isinstance(error, connections):
            return base.FailedAttempt("connection", True, one_line(error, self._secret))
        return base.other_failure(error, self._secret)

    async def close(self) -> None:
        await self._client.close()


class HFEndpointBackend(base.Backend):
    name = "hf-endpoint"
    lists_models = False  # TGI lists its one model under its own id, not the name the config sends

    def check_config(self, stage: StageConfig) -> None:
        if not (stage.base_url or stage.endpoint_name):
            raise ValueError("base_url: backend hf-endpoint needs base_url or endpoint_name")

    def resolve_base_url(self, stage: StageConfig, simulator_url: str | None) -> str | None:
        if stage.endpoint_name:
            from huggingface_hub import HfApi

            # Hub login for the lookup comes from HF_TOKEN, as huggingface_hub reads it.
            return HfApi().get_inference_endpoint(stage.endpoint_name).url
        return stage.base_url

    def models_url(self, stage: StageConfig, base_url: str | None) -> str:
        # AsyncInferenceClient takes the server root (it adds /v1/chat/completions itself).
        return base_url.rstrip("/").removesuffix("/v1") + "/v1/models"

    def connect(
        self, stage_name: str, stage: StageConfig, base_url: str | None, api_key: str | None
    ) -> HFEndpointClient:
        return HFEndpointClient(stage_name, stage, base_url, api_key)
