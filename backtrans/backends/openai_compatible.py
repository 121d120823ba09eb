"""`backend: openai`: OpenAI and any OpenAI-compatible server (vLLM, llama.cpp, ...) through
`openai.AsyncOpenAI`. (Not named openai.py, which would shadow the SDK for `import openai` here.)"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from backtrans.backends.base import (
    Backend,
    FailedAttempt,
    MalformedReply,
    Reply,
    RequestOptions,
    chat_kwargs,
    completion_reply,
    http_failure,
    other_failure,
)
from backtrans.errors import one_line
from backtrans.schema import STAGE_HEADER

if TYPE_CHECKING:
    from backtrans.config import StageConfig


def _dropped(error: BaseException) -> bool:
    """Whether the connection was dropped: the SDK's aiohttp transport reports a server that hangs up
    as a ConnectTimeout, and only the aiohttp exception it wraps tells the two apart."""
    import aiohttp

    while error is not None:
        if isinstance(error, aiohttp.ClientConnectionError) and not isinstance(error, TimeoutError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _limits(stage: StageConfig):
    import openai

    # The Limits class of the HTTP library this openai release runs on (httpx, or httpx2 in 3.x),
    # taken from the SDK's own default rather than imported by a name that changes with the release.
    share = stage.max_concurrency // (stage.actors or 1)
    return type(openai.DEFAULT_CONNECTION_LIMITS)(max_connections=share, max_keepalive_connections=share)


class OpenAIClient:
    def __init__(self, stage_name: str, stage: StageConfig, base_url: str | None, api_key: str | None):
        import openai

        self.model = stage.model
        self.kwargs = chat_kwargs(stage.generation_kwargs)
        self._secret = api_key
        # A local server needs some key string; "unused" is not a secret. The SDK's aiohttp transport
        # costs half the CPU per request of its default httpx one (bench/client.py).
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "unused",
            timeout=stage.timeout_s,
            max_retries=0,
            default_headers={STAGE_HEADER: stage_name},
            # The SDK's default pool holds 1,000 connections: it would cap the actor's share of
            # max_concurrency (the Gate is what limits requests in flight).
            http_client=openai.DefaultAioHttpClient(timeout=stage.timeout_s, limits=_limits(stage)),
        )

    async def send(self, prompt: str, options: RequestOptions | None = None) -> Reply:
        # The SDK's documented request path for raw replies (`client.post`): its auth, errors,
        # timeouts and transport, without building typed request and reply models, which cost more
        # CPU than the HTTP exchange itself (bench/client.py). A chat completion is a small JSON
        # object; the fields below are all a stage reads of it.
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], **self.kwargs}
        options = options or RequestOptions()
        if options.top_logprobs:
            body |= {"logprobs": True, "top_logprobs": options.top_logprobs}
        if options.json_schema is not None:  # OpenAI's structured outputs; vLLM takes the same field
            schema = {"name": "verdict", "strict": True, "schema": options.json_schema}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        raw = await self._client.post("/chat/completions", cast_to=bytes, body=body)
        try:
            response = json.loads(raw)
            choice = response["choices"][0]
            text, finish_reason = choice["message"]["content"], choice.get("finish_reason")
            usage = response.get("usage") or {}
            return completion_reply(text, finish_reason, usage, (choice.get("logprobs") or {}).get("content"))
        except (ValueError, AttributeError, IndexError, KeyError, TypeError):
            raise MalformedReply("the reply is not a chat completion") from None

    def classify(self, error: Exception) -> FailedAttempt:
        import openai

        if isinstance(error, openai.APIStatusError):
            return http_failure(error.status_code, error.response.headers, one_line(error, self._secret))
        if isinstance(error, openai.APIConnectionError):  # APITimeoutError among them
            timed_out = isinstance(error, openai.APITimeoutError) and not _dropped(error)
            return FailedAttempt("timeout" if timed_out else "connection", True, one_line(error, self._secret))
        return other_failure(error, self._secret)

    async def close(self) -> None:
        await self._client.close()


class OpenAIBackend(Backend):
    name = "openai"

    def connect(self, stage_name: str, stage: StageConfig, base_url: str | None, api_key: str | None) -> OpenAIClient:
        return OpenAIClient(stage_name, stage, base_url, api_key)
