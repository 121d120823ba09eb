"""What every backend does, and the parts they share.

A `Backend` is stateless and lives in the registry (`backtrans.backends.BACKENDS`); the driver uses
it to check a stage's config, find its server and probe it before anything is spent. Each stage
actor asks it to `connect`, which builds a `Client`: the SDK's client for one stage, which sends one
chat request and classifies the SDK's own exceptions. The retry policy, pacing and failure records
stay in `backtrans.endpoints.ChatEndpoint`, which drives a `Client`.

Nothing here imports `backtrans.config` or an SDK at module level: the config's validator calls
`check_config`, and the SDKs take seconds to import.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from backtrans.endpoints import retry_after_s, retryable_status
from backtrans.errors import one_line
from backtrans.schema import BacktransError

if TYPE_CHECKING:
    from backtrans.config import StageConfig

PROBE_TIMEOUT_S = 15.0
# generation_kwargs are written with distilabel's names; these are the chat APIs' names for them.
KWARG_NAMES = {"max_new_tokens": "max_tokens"}


class PreflightError(BacktransError):
    """A stage's server would not take requests, or its key is missing: one line naming stage and URL."""


@dataclass(frozen=True)
class TokenLogprobs:
    """One token of a reply and the log-probabilities of the server's top alternatives at its place."""

    token: str
    top: Mapping[str, float]  # token -> logprob


@dataclass(frozen=True)
class RequestOptions:
    """What a scoring method asks of the server beyond the prompt; each client says it its own way."""

    top_logprobs: int | None = None  # return each token's logprobs with this many alternatives
    json_schema: Mapping[str, object] | None = None  # constrain the reply to JSON valid under this schema


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    logprobs: tuple[TokenLogprobs, ...] | None = None  # when asked for and returned


@dataclass(frozen=True)
class FailedAttempt:
    """A client's exception, classified: the failure type the records use (http_429, timeout,
    connection, malformed_body, ...), whether a retry may succeed, the server's Retry-After if it
    sent one, and a one-line message with keys masked."""

    error_type: str
    retryable: bool
    message: str
    retry_after_s: float | None = None


class MalformedReply(Exception):
    """The server answered 200 with something that is not a chat completion."""


class Client(Protocol):
    """One stage's connection to its server, built by `Backend.connect` in the stage actor."""

    async def send(self, prompt: str, options: RequestOptions | None = None) -> Reply:
        """One chat request with the prompt as the user message, and what `options` asks for; raises the
        SDK's exceptions."""

    def classify(self, error: Exception) -> FailedAttempt:
        """What an exception `send` raised means for the retry loop and the failure record."""

    async def close(self) -> None: ...


def chat_kwargs(generation_kwargs: Mapping[str, object]) -> dict:
    """`generation_kwargs` under the chat API's parameter names (the names are checked by the config)."""
    return {KWARG_NAMES.get(name, name): value for name, value in generation_kwargs.items()}


def http_failure(status: int, headers: Mapping[str, str] | None, message: str) -> FailedAttempt:
    return FailedAttempt(f"http_{status}", retryable_status(status), message, retry_after_s(headers))


def completion_reply(
    text: object, finish_reason: str | None, usage: Mapping[str, int | None], logprobs: object = None
) -> Reply:
    """`logprobs`: the choice's `logprobs.content`, a list of `{token, logprob, top_logprobs}` (dicts or
    the SDK's objects), or None."""
    if not isinstance(text, str):
        raise MalformedReply("the reply has no message content")
    tokens = None
    if logprobs is not None:
        tokens = tuple(
            TokenLogprobs(
                _get(entry, "token"), {_get(alt, "token"): _get(alt, "logprob") for alt in _get(entry, "top_logprobs")}
            )
            for entry in logprobs
        )
    return Reply(text, usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, finish_reason, tokens)


def _get(entry: object, name: str):
    return entry[name] if isinstance(entry, Mapping) else getattr(entry, name)


def other_failure(error: Exception, secret: str | None) -> FailedAttempt:
    """What is neither an HTTP status nor a transport error: a malformed body (retried), or an
    exception no backend knows, a bug or a client change (fails the row, never retried)."""
    if isinstance(error, MalformedReply):
        return FailedAttempt("malformed_body", True, one_line(error))
    return FailedAttempt(type(error).__name__.lower(), False, one_line(error, secret))


class Backend:
    """One kind of server. Subclasses set `name` and implement `connect`; the rest has defaults
    for an OpenAI-compatible server at a configured URL."""

    name: ClassVar[str]
    # True: the job starts the loopback simulator and `resolve_base_url` returns its URL.
    needs_simulator: ClassVar[bool] = False
    # Whether the pre-flight probe checks that the server lists the stage's model.
    lists_models: ClassVar[bool] = True

    def check_config(self, stage: StageConfig) -> None:
        """Raise ValueError("KEY: reason") for a stage config this backend cannot run; no network."""
        if stage.endpoint_name is not None:
            raise ValueError("endpoint_name: only for backend hf-endpoint")

    def resolve_base_url(self, stage: StageConfig, simulator_url: str | None) -> str | None:
        """The server URL; None means the SDK's default. `simulator_url` is the job's loopback simulator."""
        return stage.base_url

    def api_key(self, stage: StageConfig, stage_name: str) -> str | None:
        """The key from the environment variable the config names; None when no variable is named.
        Read on the driver only: the stage actors get it from there (`stages.StageSpec.api_key`)."""
        if stage.api_key_env is None:
            return None
        key = os.environ.get(stage.api_key_env)
        if not key:
            raise PreflightError(f"{stage_name}.api_key_env: environment variable {stage.api_key_env} is not set")
        return key

    def models_url(self, stage: StageConfig, base_url: str | None) -> str:
        return (base_url or "https://api.openai.com/v1").rstrip("/") + "/models"

    def probe(self, stage_name: str, stage: StageConfig, base_url: str | None) -> None:
        """One `GET .../models` before the corpus is read. It costs nothing on OpenAI, vLLM, TGI and
        llama.cpp alike, and tells apart the three ways a run fails at once: nobody answers, the key
        is refused, the model is not served. Raises PreflightError naming the stage and URL."""
        url = self.models_url(stage, base_url)
        api_key = self.api_key(stage, stage_name)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # The standard library's client: one GET needs no connection pool, and it honours the same
        # proxy variables (HTTPS_PROXY, NO_PROXY) as the stage clients.
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=min(stage.timeout_s, PROBE_TIMEOUT_S)) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                who = f"the key in {stage.api_key_env}" if stage.api_key_env else "a request without a key"
                raise PreflightError(f"{stage_name}: {url} refused {who} (HTTP {error.code})") from None
            return  # a server without a model list (404) can still serve chat completions
        except (urllib.error.URLError, OSError) as error:
            raise PreflightError(f"{stage_name}: cannot reach {url}: {one_line(error, api_key)}") from None
        served = _model_ids(body)
        if self.lists_models and served and stage.model not in served:
            shown = ", ".join(sorted(served)[:10])
            raise PreflightError(f"{stage_name}: model {stage.model!r} is not served by {url} (served: {shown})")

    def connect(self, stage_name: str, stage: StageConfig, base_url: str | None, api_key: str | None) -> Client:
        """The stage's client with the key `api_key` read on the driver; every request it sends names the
        stage in `schema.STAGE_HEADER`."""
        raise NotImplementedError


def _model_ids(body: bytes) -> set[str]:
    try:
        return {entry["id"] for entry in json.loads(body).get("data", []) if isinstance(entry, dict) and "id" in entry}
    except (ValueError, AttributeError):
        return set()
