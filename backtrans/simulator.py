"""A deterministic, OpenAI-compatible chat-completions server with fault injection.

This is an honest stand-in for a real LLM endpoint: every reply says plainly that it
is simulated.  It serves three purposes:

* the job starts it (``backend: simulated``) as a subprocess on loopback and talks to
  it with the real ``openai.AsyncOpenAI`` client;
* tests run it in a background thread (:class:`Simulator`);
* the throughput benchmark uses it as a cheap, predictable backend.

Protocol
--------
``POST /v1/chat/completions`` (also ``/chat/completions``) in OpenAI's format, ``GET
/v1/models`` (also ``/models``).  Replies are deterministic functions of the text of
the last user message:

* a *scoring* request (the user message starts with :data:`SCORE_PROMPT_PREFIX`) gets
  ``"Simulated judge (not a real model): ...\\nScore: N"`` with
  ``N = simulated_score(text)``;
* a *backward* request (the user message starts with :data:`BACKWARD_PROMPT_PREFIX`)
  gets ``"[simulated instruction] What can you tell me about ...?"``;
* anything else is a *generation* request and gets
  ``"[simulated response from MODEL] ..."``.

``max_tokens`` (or ``max_completion_tokens``) is honoured like a real server would:
a reply longer than ``4 * max_tokens`` characters is cut there and gets
``finish_reason: "length"``; ``stop`` strings cut the reply too.  ``stream: true`` is
not supported (400).

Control plane (no auth, loopback only): ``GET /_sim/stats``, ``GET /_sim/log``,
``GET|POST /_sim/config`` (POST a JSON object with the fields to change) and
``POST /_sim/reset`` (clears stats, log and the RPM window, and re-seeds the RNG).

Faults are drawn per request from a seeded ``random.Random`` (so a run with the same
request sequence is reproducible, and a retry can succeed).  See
:class:`SimulatorConfig` for the knobs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any, Self

from aiohttp import web

__all__ = [
    "BACKWARD_PROMPT_PREFIX",
    "KINDS",
    "OUTCOMES",
    "SCORE_PROMPT_PREFIX",
    "Simulator",
    "SimulatorConfig",
    "SimulatorProcess",
    "config_to_argv",
    "main",
    "simulated_score",
    "start_subprocess",
]

SCORE_PROMPT_PREFIX = "Below is an instruction from an user and a candidate answer."
BACKWARD_PROMPT_PREFIX = "Below is a candidate answer to a question or instruction from an user."

KINDS = ("score", "generate", "backward")
OUTCOMES = (
    "ok",
    "429",
    "503",
    "500",
    "hang",
    "drop",
    "garbage",
    "noscore",
    "401",
    "404",
    "400",
)
URL_LINE_PREFIX = "SIMULATOR_URL"
API_KEY_ENV = "BACKTRANS_SIMULATOR_API_KEY"

_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_MODEL_PATHS = frozenset({"/v1/models", "/models"})
_DEFAULT_MODEL = "simulated"
# Fields that can't be changed on a running server.
_STATIC_FIELDS = frozenset({"host", "port"})


def simulated_score(text: str) -> int:
    """The score (1..5) the simulated judge gives to a scoring prompt ``text``.

    ``text`` is the full text of the last user message of the request.
    """
    return 1 + int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 5


# --------------------------------------------------------------------------- config


@dataclasses.dataclass
class SimulatorConfig:
    """Everything the simulator can be told; all fields are also CLI flags.

    Rates are per-request probabilities and are mutually exclusive (their sum must be
    at most 1): one uniform draw picks at most one fault per request.
    ``rate_noscore`` only affects scoring requests (other kinds answer normally).
    """

    host: str = "127.0.0.1"
    port: int = 0
    #: Served model ids; ``None`` accepts any model and so lists none (a client cannot check it).
    models: list[str] | None = None
    #: If set, requests need ``Authorization: Bearer <api_key>`` (else 401).
    api_key: str | None = dataclasses.field(default=None, repr=False)
    #: If set, prompts longer than this many characters get 400.
    max_context_chars: int | None = None
    latency_ms: float = 0.0
    #: Extra latency drawn uniformly from [0, jitter_ms] per request.
    jitter_ms: float = 0.0
    seed: int = 0
    rate_429: float = 0.0
    rate_503: float = 0.0
    rate_500: float = 0.0
    rate_hang: float = 0.0
    rate_drop: float = 0.0
    rate_garbage: float = 0.0
    rate_noscore: float = 0.0
    #: Retry-After (seconds) sent with injected 429s.
    retry_after_s: float = 1.0
    #: How long a hanging request sleeps before answering.
    hang_s: float = 30.0
    #: Real limit on accepted requests per sliding window (``None`` = unlimited).
    rpm_limit: int | None = None
    #: Length of the RPM sliding window (60 s, like a real per-minute limit).
    rpm_window_s: float = 60.0
    #: Keep a per-request log for ``/_sim/log`` (the benchmark turns it off).
    keep_log: bool = True

    def __post_init__(self) -> None:
        if self.models is not None:
            if isinstance(self.models, str):
                self.models = [m for m in self.models.split(",") if m]
            self.models = [str(m) for m in self.models]
        for name in _RATE_FIELDS:
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
            setattr(self, name, value)
        total = sum(getattr(self, name) for name in _RATE_FIELDS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates sum to {total:.4f} > 1")
        for name in ("latency_ms", "jitter_ms", "retry_after_s", "hang_s"):
            value = float(getattr(self, name))
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
            setattr(self, name, value)
        self.rpm_window_s = float(self.rpm_window_s)
        if self.rpm_window_s <= 0:
            raise ValueError("rpm_window_s must be > 0")
        for name in ("rpm_limit", "max_context_chars"):
            value = getattr(self, name)
            if value is not None:
                value = int(value)
                if value < 1:
                    raise ValueError(f"{name} must be >= 1 or None, got {value}")
                setattr(self, name, value)
        self.port = int(self.port)
        self.seed = int(self.seed)
        self.keep_log = bool(self.keep_log)

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON-able dict, with the API key redacted."""
        data = dataclasses.asdict(self)
        data["api_key"] = "***" if self.api_key else None
        return data


_RATE_FIELDS = (
    "rate_429",
    "rate_503",
    "rate_500",
    "rate_hang",
    "rate_drop",
    "rate_garbage",
    "rate_noscore",
)
_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(SimulatorConfig))
_INT_FIELDS = frozenset({"port", "seed", "rpm_limit", "max_context_chars"})
_STR_FIELDS = frozenset({"host", "api_key"})


# --------------------------------------------------------------------------- content


def _jdumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return "" if content is None else str(content)


def _classify(text: str) -> str:
    if text.startswith(SCORE_PROMPT_PREFIX):
        return "score"
    if text.startswith(BACKWARD_PROMPT_PREFIX):
        return "backward"
    return "generate"


_JUDGE_READINGS = {
    1: "the answer is treated as unrelated to or unhelpful for the instruction",
    2: "the answer is treated as touching the instruction but leaving most of it open",
    3: "the answer is treated as helpful but not written like an AI assistant",
    4: "the answer is treated as a good assistant answer with room to be more focused",
    5: "the answer is treated as a complete, expert assistant answer",
}

_ANSWER_LABEL = re.compile(r"(?im)^[ \t]*(?:candidate answer|answer|response|output|text)[ \t]*:[ \t]*")
_QUESTION_LABEL = re.compile(r"(?im)^[ \t]*(?:instruction|question)[ \t]*:")
_SIM_TAG = re.compile(r"^\s*\[simulated [^\]]*\]")


def _score_reply(digest: str, score: int) -> str:
    return (
        f"Simulated judge (not a real model): the score is derived from a hash of the "
        f"prompt (ref {digest[:8]}), and {_JUDGE_READINGS[score]}.\nScore: {score}"
    )


def _noscore_reply(digest: str) -> str:
    return (
        "Simulated judge (not a real model): this reply deliberately leaves out the "
        f"rating line (injected fault, ref {digest[:8]})."
    )


def _backward_reply(text: str) -> str:
    # The answer is whatever follows the prompt's own instructions: after an
    # "Answer:"-style label if there is one, else after the first blank line (as in
    # prompts/backward.txt), else after the first line.
    rest = text[len(BACKWARD_PROMPT_PREFIX) :]
    label = _ANSWER_LABEL.search(rest)
    if label is not None:
        rest = rest[label.end() :]
        question = _QUESTION_LABEL.search(rest)
        if question is not None:
            rest = rest[: question.start()]
    else:
        parts = rest.split("\n\n", 1)
        if len(parts) == 1:
            parts = rest.split("\n", 1)
        rest = parts[-1]
    rest = _SIM_TAG.sub("", rest, count=1)  # a simulated generation's "[simulated ...]" tag
    words = rest.split()[:8]
    phrase = " ".join(words).strip(" \t.,;:!?\"'`()[]{}")
    if not phrase:
        phrase = "this answer"
    return f"[simulated instruction] What can you tell me about {phrase}?"


def _generate_reply(text: str, model: str, digest: str) -> str:
    snippet = " ".join(text.split()[:12])
    if len(snippet) > 80:
        snippet = snippet[:77].rstrip() + "..."
    return (
        f"[simulated response from {model}] This text comes from a simulator, not from a "
        f'language model. It stands in for an answer to the request that begins "{snippet}". '
        "A real model would write a helpful reply here; the simulator only echoes the "
        f"opening words so the pipeline can be exercised end to end (ref {digest[:12]})."
    )


def _error_response(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = _jdumps({"error": {"message": message, "type": type_, "param": None, "code": code}})
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_jdumps(obj), status=status, content_type="application/json")


# --------------------------------------------------------------------------- stats


class _Gauge:
    """In-flight gauge with max and time-weighted mean.

    The mean is taken over the active window: from the first request (since the last
    reset) to now, or to the last change if nothing is in flight — so it does not decay
    while the server sits idle after a load.
    """

    __slots__ = ("area", "cur", "last", "max", "t0")

    def __init__(self, cur: int = 0, now: float | None = None) -> None:
        self.cur = cur
        self.max = cur
        self.area = 0.0
        self.t0 = now if cur else None
        self.last = now if cur else 0.0

    def enter(self, now: float) -> None:
        if self.t0 is None:
            self.t0 = now
        else:
            self.area += self.cur * (now - self.last)
        self.last = now
        self.cur += 1
        self.max = max(self.max, self.cur)

    def leave(self, now: float) -> None:
        self.area += self.cur * (now - self.last)
        self.last = now
        self.cur -= 1

    def snapshot(self, now: float) -> dict[str, Any]:
        if self.t0 is None:
            mean = 0.0
        elif self.cur:
            span = now - self.t0
            mean = (self.area + self.cur * (now - self.last)) / span if span > 0 else self.cur
        else:
            span = self.last - self.t0
            mean = self.area / span if span > 0 else 0.0
        return {
            "in_flight": self.cur,
            "max_in_flight": self.max,
            "mean_in_flight": mean,
        }


class _State:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.window: collections.deque[float] = collections.deque()
        self.log: list[dict[str, Any]] = []
        self.seq = 0
        self._clear(time.monotonic())

    def _clear(self, now: float) -> None:
        old = getattr(self, "gauge", None)
        self.gauge = _Gauge(old.cur if old else 0, now)
        old_kinds = getattr(self, "kind_gauges", {})
        self.kind_gauges = {k: _Gauge(old_kinds[k].cur if k in old_kinds else 0, now) for k in KINDS}
        self.total = 0
        self.by_kind = dict.fromkeys(KINDS, 0)
        self.by_outcome = dict.fromkeys(OUTCOMES, 0)
        self.authorized = 0
        self.rpm_rejections = 0
        self.client_disconnects = 0
        self.model_list_requests = 0
        self.started_wall = time.time()

    def reset(self) -> None:
        self._clear(time.monotonic())
        self.log = []
        self.window.clear()
        self.rng = random.Random(self.config.seed)

    def configure(self, changes: dict[str, Any]) -> SimulatorConfig:
        unknown = sorted(set(changes) - set(_FIELD_NAMES))
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        static = sorted(k for k in changes if k in _STATIC_FIELDS)
        if static:
            raise ValueError(f"cannot change {', '.join(static)} on a running simulator")
        new = dataclasses.replace(self.config, **changes)  # validates
        if new.seed != self.config.seed:
            self.rng = random.Random(new.seed)
        if not new.keep_log:
            self.log = []
        self.config = new
        return new

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        out: dict[str, Any] = {
            "total_requests": self.total,
            "by_kind": dict(self.by_kind),
            "by_outcome": dict(self.by_outcome),
        }
        out.update(self.gauge.snapshot(now))
        out["by_kind_in_flight"] = {k: g.snapshot(now) for k, g in self.kind_gauges.items()}
        out["authorized_requests"] = self.authorized
        out["rpm_rejections"] = self.rpm_rejections
        out["client_disconnects"] = self.client_disconnects
        out["model_list_requests"] = self.model_list_requests
        out["since"] = self.started_wall
        out["config"] = self.config.public_dict()
        return out


# --------------------------------------------------------------------------- server


class _App:
    """Request handling; one instance per server, all state lives in the event loop."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.state = _State(config)

    # -- dispatch
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path in _CHAT_PATHS:
            if request.method != "POST":
                return _error_response(405, "Use POST.", "invalid_request_error", None)
            return await self.chat(request)
        if path in _MODEL_PATHS:
            return self.models(request)
        if path.startswith("/_sim/"):
            return await self.control(request, path[6:])
        return _error_response(
            404,
            f"Unknown path {path} (simulator).",
            "invalid_request_error",
            "not_found",
        )

    def _auth_ok(self, request: web.BaseRequest) -> bool:
        key = self.state.config.api_key
        if not key:
            return True
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), key.encode())

    def models(self, request: web.BaseRequest) -> web.Response:
        st = self.state
        st.model_list_requests += 1
        if not self._auth_ok(request):
            return _error_response(
                401, "Incorrect API key provided (simulator).", "invalid_request_error",
                "invalid_api_key",
            )  # fmt: skip
        ids = st.config.models or []
        created = int(st.started_wall)
        data = [{"id": m, "object": "model", "created": created, "owned_by": "simulator"} for m in ids]
        return _json_response({"object": "list", "data": data})

    async def control(self, request: web.BaseRequest, name: str) -> web.Response:
        st = self.state
        if name == "stats" and request.method == "GET":
            return _json_response(st.stats())
        if name == "log" and request.method == "GET":
            return _json_response(st.log)
        if name == "reset" and request.method == "POST":
            st.reset()
            return _json_response({"ok": True})
        if name == "config":
            if request.method == "GET":
                return _json_response(st.config.public_dict())
            if request.method == "POST":
                try:
                    changes = json.loads(await request.read() or b"{}")
                    if not isinstance(changes, dict):
                        raise TypeError("body must be a JSON object")
                    config = st.configure(changes)
                except (ValueError, TypeError) as exc:
                    return _error_response(400, str(exc), "invalid_request_error", None)
                return _json_response(config.public_dict())
        return _error_response(404, f"Unknown control endpoint {name}.", "invalid_request_error", None)

    # -- chat completions
    async def chat(self, request: web.BaseRequest) -> web.StreamResponse:
        st = self.state
        st.total += 1
        st.gauge.enter(time.monotonic())
        entered: list[str] = []  # the request's kind, once known
        replied = False
        try:
            response = await self._chat(request, entered)
            replied = True
            if response is None:  # injected "drop": the connection is already aborted
                raise asyncio.CancelledError
            return response
        finally:
            now = time.monotonic()
            st.gauge.leave(now)
            for kind in entered:  # looked up now: a reset may have replaced the gauge
                st.kind_gauges[kind].leave(now)
            if not replied:  # cancelled: the client went away before the reply
                st.client_disconnects += 1

    def _record(
        self,
        kind: str | None,
        model: str | None,
        digest: str | None,
        outcome: str,
        score: int | None = None,
    ) -> None:
        st = self.state
        st.by_outcome[outcome] += 1
        if st.config.keep_log:
            st.log.append(
                {
                    "kind": kind,
                    "model": model,
                    "prompt_sha256": digest,
                    "outcome": outcome,
                    "score": score,
                    "ts": time.time(),
                }
            )

    async def _chat(self, request: web.BaseRequest, entered: list[str]) -> web.StreamResponse | None:
        st = self.state
        cfg = st.config
        raw = await request.read()

        body: Any = None
        error: str | None = None
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError  # noqa: TRY004 - handled right below
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                error = "'messages' must be a non-empty list."
        except ValueError:
            error = "Request body is not a JSON object."

        kind: str | None = None
        model: str | None = None
        digest: str | None = None
        text = ""
        prompt_chars = 0
        if error is None:
            last_user = None
            for msg in messages:
                if not isinstance(msg, dict):
                    error = "Each message must be an object."
                    break
                content = _message_text(msg.get("content"))
                prompt_chars += len(content)
                if msg.get("role") == "user":
                    last_user = content
            if error is None:
                if last_user is None:
                    last_user = _message_text(messages[-1].get("content"))
                text = last_user
                kind = _classify(text)
                digest = hashlib.sha256(text.encode()).hexdigest()
                model = body.get("model")
                if not isinstance(model, str) or not model:
                    model = None
                st.by_kind[kind] += 1
                st.kind_gauges[kind].enter(time.monotonic())
                entered.append(kind)

        # 1. auth
        if cfg.api_key:
            if not self._auth_ok(request):
                self._record(kind, model, digest, "401")
                return _error_response(
                    401,
                    "Incorrect API key provided (simulator). Keys are never logged.",
                    "invalid_request_error",
                    "invalid_api_key",
                )
            st.authorized += 1
        # 2. request validity
        if error is None and body.get("stream"):
            error = "stream=true is not supported by the simulator."
        if error is not None:
            self._record(kind, model, digest, "400")
            return _error_response(400, error, "invalid_request_error", None)
        # 3. model
        if cfg.models is not None and (model is None or model not in cfg.models):
            self._record(kind, model, digest, "404")
            return _error_response(
                404,
                f"The model `{model}` does not exist (simulator serves: {', '.join(cfg.models)}).",
                "invalid_request_error",
                "model_not_found",
            )
        model_name = model or _DEFAULT_MODEL
        # 4. context length
        if cfg.max_context_chars is not None and prompt_chars > cfg.max_context_chars:
            self._record(kind, model, digest, "400")
            return _error_response(
                400,
                f"This model's maximum context length is {cfg.max_context_chars} "
                f"characters; the messages have {prompt_chars} characters (simulator).",
                "invalid_request_error",
                "context_length_exceeded",
            )
        # 5. real requests-per-window limit
        if cfg.rpm_limit is not None:
            now = time.monotonic()
            window = st.window
            horizon = now - cfg.rpm_window_s
            while window and window[0] <= horizon:
                window.popleft()
            if len(window) >= cfg.rpm_limit:
                wait = window[0] + cfg.rpm_window_s - now
                retry = max(1, math.ceil(wait))
                st.rpm_rejections += 1
                self._record(kind, model, digest, "429")
                return _error_response(
                    429,
                    f"Rate limit reached: {cfg.rpm_limit} requests per "
                    f"{cfg.rpm_window_s:g} s (simulator). Retry in {retry} s.",
                    "rate_limit_error",
                    "rate_limit_exceeded",
                    headers={
                        "Retry-After": str(retry),
                        "retry-after-ms": str(math.ceil(wait * 1000)),
                    },
                )
            window.append(now)
        # 6. injected faults (one uniform draw, plus one for jitter, per request)
        u = st.rng.random()
        jitter = st.rng.random() * cfg.jitter_ms
        outcome = "ok"
        acc = 0.0
        for name in _RATE_FIELDS:
            rate = getattr(cfg, name)
            if rate:
                acc += rate
                if u < acc:
                    outcome = name[5:]
                    break
        if outcome == "noscore" and kind != "score":
            outcome = "ok"

        if outcome == "429":
            self._record(kind, model, digest, "429")
            ra = cfg.retry_after_s
            return _error_response(
                429,
                "Rate limit reached (simulated fault). Please retry after a while.",
                "rate_limit_error",
                "rate_limit_exceeded",
                headers={
                    "Retry-After": str(math.ceil(ra)),
                    "retry-after-ms": str(math.ceil(ra * 1000)),
                },
            )

        delay = (cfg.latency_ms + jitter) / 1000.0
        if outcome == "hang":
            delay = cfg.hang_s
        # Record before sleeping so the log/stats show what was decided even if the
        # client gives up (hang) or the handler is cancelled.
        score = None
        if kind == "score" and outcome in ("ok", "hang"):
            score = 1 + int(digest[:8], 16) % 5  # == simulated_score(text)
        self._record(kind, model, digest, outcome, score)
        if delay > 0:
            await asyncio.sleep(delay)

        if outcome == "503":
            return _error_response(
                503,
                "The server is overloaded (simulated fault). Please retry.",
                "server_error",
                "service_unavailable",
            )
        if outcome == "500":
            return _error_response(
                500,
                "Internal server error (simulated fault).",
                "server_error",
                "internal_error",
            )
        if outcome == "drop":
            transport = request.transport
            if transport is not None:
                transport.abort()
            return None
        if outcome == "garbage":
            return web.Response(
                body=b"<html><body>simulated garbage: this 200 reply is not JSON (injected fault)</body></html>\n",
                status=200,
                content_type="application/json",
            )

        if kind == "score":
            content = _noscore_reply(digest) if outcome == "noscore" else _score_reply(digest, score)
        elif kind == "backward":
            content = _backward_reply(text)
        else:
            content = _generate_reply(text, model_name, digest)

        finish = "stop"
        stop = body.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if isinstance(stop, list) and stop:
            cut = len(content)
            for s in stop:
                if isinstance(s, str) and s:
                    i = content.find(s)
                    if 0 <= i < cut:
                        cut = i
            content = content[:cut]
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(max_tokens, int) and max_tokens > 0 and len(content) > 4 * max_tokens:
            content = content[: 4 * max_tokens]
            finish = "length"

        n = body.get("n")
        n = n if isinstance(n, int) and 1 <= n <= 16 else 1
        prompt_tokens = (prompt_chars + 3) // 4
        completion_tokens = (len(content) + 3) // 4
        st.seq += 1
        reply = {
            "id": f"chatcmpl-sim-{st.seq}-{digest[:8]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "system_fingerprint": "simulator",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for i in range(n)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens * n,
                "total_tokens": prompt_tokens + completion_tokens * n,
            },
        }
        return _json_response(reply)


class _Server:
    """Binds the aiohttp low-level server to a socket on the current event loop."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.app = _App(config)
        self._web_server: web.Server | None = None
        self._server: asyncio.base_events.Server | None = None
        self.port: int | None = None

    async def start(self) -> None:
        cfg = self.app.state.config
        self._web_server = web.Server(self.app.handle, handler_cancellation=True, access_log=None)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._web_server, cfg.host, cfg.port, backlog=4096, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = self.app.state.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._web_server is not None:
            await self._web_server.shutdown(timeout=0.2)
        self._server = None


# --------------------------------------------------------------------------- in-process


class Simulator:
    """The simulator in a background thread with its own event loop.

    >>> with Simulator(SimulatorConfig(latency_ms=5)) as sim:
    ...     client = openai.AsyncOpenAI(base_url=sim.url, api_key="x")
    """

    def __init__(self, config: SimulatorConfig | None = None, **overrides: Any) -> None:
        config = config or SimulatorConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        self._server = _Server(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> Simulator:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._server.start())
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._server.close())
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="backtrans-simulator", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise RuntimeError("simulator failed to start") from failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses
    @property
    def port(self) -> int:
        assert self._server.port is not None, "simulator not started"
        return self._server.port

    @property
    def url(self) -> str:
        """Base URL for the OpenAI client: ``http://127.0.0.1:PORT/v1``."""
        return self._server.url

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (for clients that append ``/v1`` themselves)."""
        return self._server.url[: -len("/v1")]

    # -- control (run inside the server loop, so no locking is needed)
    def _call(self, fn: Any, *args: Any) -> Any:
        if self._loop is None:
            raise RuntimeError("simulator not started")

        async def call() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    def stats(self) -> dict[str, Any]:
        return self._call(self._server.app.state.stats)

    def log(self) -> list[dict[str, Any]]:
        return self._call(lambda: list(self._server.app.state.log))

    def reset(self) -> None:
        self._call(self._server.app.state.reset)

    def configure(self, **changes: Any) -> SimulatorConfig:
        self.config = self._call(self._server.app.state.configure, changes)
        return self.config


# --------------------------------------------------------------------------- subprocess


def config_to_argv(config: SimulatorConfig, *, include_api_key: bool = False) -> list[str]:
    """Command-line flags reproducing ``config`` (non-default fields only).

    The API key is left out unless ``include_api_key`` (command lines are visible to
    other processes); :func:`start_subprocess` passes it through the environment.
    """
    default = SimulatorConfig()
    argv: list[str] = []
    for name in _FIELD_NAMES:
        value = getattr(config, name)
        if value == getattr(default, name):
            continue
        if name == "api_key" and not include_api_key:
            continue
        flag = "--" + name.replace("_", "-")
        if name == "keep_log":
            argv.append(flag if value else "--no-keep-log")
        elif name == "models":
            argv += [flag, *value]
        elif value is None:
            continue
        else:
            argv += [flag, str(value)]
    return argv


class SimulatorProcess:
    """A simulator running as ``python -m backtrans.simulator`` (see :func:`start_subprocess`)."""

    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url
        self.root_url = url.removesuffix("/v1")
        self.port = int(self.root_url.rsplit(":", 1)[1])
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _request(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            self.root_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with self._opener.open(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/_sim/stats")

    def log(self) -> list[dict[str, Any]]:
        return self._request("GET", "/_sim/log")

    def reset(self) -> None:
        self._request("POST", "/_sim/reset", {})

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self._request("POST", "/_sim/config", changes)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_subprocess(
    config: SimulatorConfig | None = None,
    *,
    python: str | None = None,
    startup_timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> SimulatorProcess:
    """Launch ``python -m backtrans.simulator`` with ``config`` and wait for its URL.

    The child inherits stderr; its stdout carries only the ``SIMULATOR_URL ...`` line.
    """
    config = config or SimulatorConfig()
    child_env = dict(os.environ if env is None else env)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, child_env.get("PYTHONPATH", "")) if p)
    argv = [
        python or sys.executable,
        "-m",
        "backtrans.simulator",
        *config_to_argv(config),
    ]
    if config.api_key:
        child_env[API_KEY_ENV] = config.api_key
        argv += ["--api-key-env", API_KEY_ENV]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=child_env)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(startup_timeout)
    text = line[0].strip() if line else ""
    if not text.startswith(URL_LINE_PREFIX + " "):
        proc.kill()
        proc.wait()
        raise RuntimeError(
            f"simulator subprocess did not report its URL (exit code {proc.returncode}, first line {text!r})"
        )
    return SimulatorProcess(proc, text.split(None, 1)[1])


# --------------------------------------------------------------------------- CLI


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backtrans.simulator",
        description="Deterministic OpenAI-compatible chat server with fault injection "
        "(simulated replies, never a real model).",
    )
    default = SimulatorConfig()
    for f in dataclasses.fields(SimulatorConfig):
        flag = "--" + f.name.replace("_", "-")
        dflt = getattr(default, f.name)
        if f.name == "keep_log":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=dflt)
        elif f.name == "models":
            parser.add_argument(flag, nargs="*", default=dflt, help="served model ids")
        elif f.name in _INT_FIELDS:
            parser.add_argument(flag, type=int, default=dflt)
        elif f.name in _STR_FIELDS:
            helptext = "visible in process listings; prefer --api-key-env" if f.name == "api_key" else None
            parser.add_argument(flag, type=str, default=dflt, help=helptext)
        else:
            parser.add_argument(flag, type=float, default=dflt)
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        default=None,
        help="read the required API key from this environment variable",
    )
    return parser


def _config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    values = {name: getattr(args, name) for name in _FIELD_NAMES}
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise SystemExit(f"environment variable {args.api_key_env} is empty or unset")
        values["api_key"] = key
    return SimulatorConfig(**values)


async def _serve(config: SimulatorConfig) -> None:
    server = _Server(config)
    await server.start()
    print(f"{URL_LINE_PREFIX} {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # non-POSIX
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()


def main(argv: list[str] | None = None) -> None:
    args = _build_parser().parse_args(argv)
    try:
        config = _config_from_args(args)
    except ValueError as exc:
        raise SystemExit(f"invalid simulator config: {exc}") from None
    asyncio.run(_serve(config))


if __name__ == "__main__":
    main()
