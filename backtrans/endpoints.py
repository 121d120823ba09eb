"""Talk to LLM servers: `openai.AsyncOpenAI` for OpenAI and OpenAI-compatible servers,
`huggingface_hub.AsyncInferenceClient` for TGI and Inference Endpoints.

A `ChatEndpoint` sends one prompt and returns a `Reply`, or raises `EndpointFailure` once retries
are spent. The retry loop is ours, not the SDKs': the openai SDK's own retries hide every 429 and
5xx from the caller (the failure record needs the attempt count and the last error), they skip
malformed bodies, and AsyncInferenceClient does not retry at all. So both clients run with
`max_retries=0` under one policy: retry 408/409/429/5xx, timeouts, dropped connections and
malformed bodies, with exponential backoff and full jitter, honouring `Retry-After`; never retry
another 4xx (a 400 such as a context-length error fails the row at once).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import re
import time
from dataclasses import dataclass

from backtrans.config import StageConfig
from backtrans.pacing import BudgetExhausted, Gate, StageDown
from backtrans.schema import STAGE_HEADER

RETRYABLE_STATUS = {408, 409, 429}
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 300.0
# generation_kwargs are written with distilabel's names; these are the chat APIs' names for them.
KWARG_NAMES = {"max_new_tokens": "max_tokens"}
CHAT_KWARGS = {"max_tokens", "temperature", "top_p", "stop", "seed", "frequency_penalty", "presence_penalty"}


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


class EndpointFailure(Exception):
    """A request that will not succeed: its type, a one-line message (never a key), and attempts."""

    def __init__(self, error_type: str, message: str, attempts: int):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.attempts = attempts


def chat_kwargs(stage: StageConfig) -> dict:
    """Map `generation_kwargs` onto the chat API's parameter names; unknown names are config errors."""
    mapped = {}
    for name, value in stage.generation_kwargs.items():
        api_name = KWARG_NAMES.get(name, name)
        if api_name not in CHAT_KWARGS:
            known = ", ".join(sorted(CHAT_KWARGS | set(KWARG_NAMES)))
            raise ValueError(f"generation_kwargs.{name}: not a chat-completions parameter (known: {known})")
        mapped[api_name] = value
    return mapped


def read_api_key(stage: StageConfig, stage_name: str) -> str | None:
    """The key from the environment variable the config names; None when no variable is named."""
    if stage.api_key_env is None:
        return None
    key = os.environ.get(stage.api_key_env)
    if not key:
        raise ValueError(f"{stage_name}.api_key_env: environment variable {stage.api_key_env} is not set")
    return key


def _status_of(error: BaseException) -> int | None:
    status = getattr(error, "status_code", None)
    if status is None:
        status = getattr(getattr(error, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _retry_after_s(error: BaseException) -> float | None:
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return min(float(value), RETRY_AFTER_MAX_S)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)  # the HTTP-date form
        return min(max(parsed.timestamp() - time.time(), 0.0), RETRY_AFTER_MAX_S)


def is_pushback(error: BaseException) -> bool:
    return _status_of(error) == 429


def classify(error: BaseException) -> tuple[str, bool]:
    """(error type for the failure record, whether a retry may succeed)."""
    status = _status_of(error)
    if status is not None:
        return f"http_{status}", status in RETRYABLE_STATUS or status >= 500
    name = type(error).__name__.lower()
    if isinstance(error, asyncio.TimeoutError) or "timeout" in name:
        return "timeout", True
    if "connect" in name or "transport" in name or "protocol" in name or isinstance(error, ConnectionError):
        return "connection", True
    if isinstance(error, MalformedReply) or "decode" in name or "validation" in name:
        return "malformed_body", True
    return name, False


class MalformedReply(Exception):
    """The server answered 200 with something that is not a chat completion."""


# Servers echo keys back in 401 bodies ("Incorrect API key provided: sk-...").
KEY_LIKE = re.compile(r"\b(sk|hf|api|key)[-_][A-Za-z0-9*_-]{6,}", re.IGNORECASE)


def one_line(error: BaseException, secret: str | None = None) -> str:
    """A short message safe for logs and output: first line, keys masked."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    if secret:
        text = text.replace(secret, "***")
    return KEY_LIKE.sub("***", text)[:300]


class ChatEndpoint:
    """One stage's client. `max_retries` and `timeout_s` come from the stage config; every request
    names `stage_name` in the STAGE_HEADER header."""

    def __init__(self, stage: StageConfig, base_url: str | None, api_key: str | None, gate: Gate, *, stage_name: str):
        self.stage = stage
        self.gate = gate
        self.kwargs = chat_kwargs(stage)
        self._secret = api_key
        self._client = self._make_client(stage, base_url, api_key, {STAGE_HEADER: stage_name})

    @staticmethod
    def _make_client(stage: StageConfig, base_url: str | None, api_key: str | None, headers: dict[str, str]):
        if stage.backend == "hf-endpoint":
            from huggingface_hub import AsyncInferenceClient

            return AsyncInferenceClient(base_url=base_url, token=api_key, timeout=stage.timeout_s, headers=headers)
        import openai

        # A local server needs some key string; "unused" is not a secret. The SDK's aiohttp transport
        # costs half the CPU per request of its default httpx one (bench/client.py).
        return openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "unused",
            timeout=stage.timeout_s,
            max_retries=0,
            default_headers=headers,
            http_client=openai.DefaultAioHttpClient(timeout=stage.timeout_s),
        )

    async def _send(self, prompt: str) -> Reply:
        messages = [{"role": "user", "content": prompt}]
        try:
            if self.stage.backend == "hf-endpoint":
                response = await self._client.chat_completion(messages, model=self.stage.model, **self.kwargs)
                choice = response.choices[0]
                text, finish_reason = choice.message.content, choice.finish_reason
                usage = vars(response.usage) if response.usage else {}
            else:
                # The SDK's documented request path for raw replies (`client.post`): its auth, errors,
                # timeouts and transport, without building typed request and reply models, which cost
                # more CPU than the HTTP exchange itself (bench/client.py). A chat completion is a
                # small JSON object; the fields below are all this stage reads of it.
                body = {"model": self.stage.model, "messages": messages, **self.kwargs}
                response = json.loads(await self._client.post("/chat/completions", cast_to=bytes, body=body))
                choice = response["choices"][0]
                text, finish_reason, usage = (
                    choice["message"]["content"],
                    choice.get("finish_reason"),
                    response.get("usage") or {},
                )
        except (AttributeError, IndexError, KeyError, TypeError):
            raise MalformedReply("the reply is not a chat completion") from None
        if not isinstance(text, str):
            raise MalformedReply("the reply has no message content")
        return Reply(text, usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, finish_reason)

    async def close(self) -> None:
        await self._client.close()

    async def complete(self, prompt: str) -> tuple[Reply, int]:
        """The reply and the number of attempts it took; EndpointFailure when retries are spent."""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.gate.attempt():
                    reply = await self._send(prompt)
                self.gate.spend_tokens(reply.prompt_tokens + reply.completion_tokens)
                return reply, attempt
            except (asyncio.CancelledError, StageDown, BudgetExhausted):
                raise
            except Exception as error:  # every client error is classified, none escapes unrecorded
                error_type, retryable = classify(error)
                if not retryable or attempt > self.stage.max_retries:
                    raise EndpointFailure(error_type, one_line(error, self._secret), attempt) from None
                backoff = random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
                await asyncio.sleep(max(backoff, _retry_after_s(error) or 0.0))
