"""The simulator's HTTP server: routes, the checks a real endpoint makes, fault injection, stats.

A chat request goes through, in order: auth (401), request validity (400), model (404), context
length (400), the real requests-per-window limit (429), then one seeded draw that may inject a
fault (429, 503, 500, hang, drop, garbage, noscore), the configured latency, and the reply.
Every request is counted by kind and outcome, and logged when `keep_log` is on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import math
import random
import signal
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from backtrans.schema import STAGE_HEADER
from backtrans.simulator import replies
from backtrans.simulator.config import RATE_FIELDS, STATIC_FIELDS, SimulatorConfig

OUTCOMES = ("ok", "429", "503", "500", "hang", "drop", "garbage", "noscore", "401", "404", "400")
URL_LINE_PREFIX = "SIMULATOR_URL"  # the one line a subprocess prints on stdout once it listens

_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_MODEL_PATHS = frozenset({"/v1/models", "/models"})
_DEFAULT_MODEL = "simulated"
_GARBAGE = b"<html><body>simulated garbage: this 200 reply is not JSON (injected fault)</body></html>\n"


def _jdumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_jdumps(obj), status=status, content_type="application/json")


def _error_response(
    status: int, message: str, type_: str, code: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    """An error in OpenAI's JSON shape, so the real clients raise their usual exception for it."""
    body = _jdumps({"error": {"message": message, "type": type_, "param": None, "code": code}})
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _retry_headers(retry_after_s: int, wait_s: float) -> dict[str, str]:
    # Retry-After has whole seconds; the openai SDK reads the exact wait from retry-after-ms.
    return {"Retry-After": str(retry_after_s), "retry-after-ms": str(math.ceil(wait_s * 1000))}


# --------------------------------------------------------------------------- stats


class Gauge:
    """Requests in flight, with their max and time-weighted mean.

    The mean is taken over the active window: from the first request (since the last reset) to
    now, or to the last change if nothing is in flight, so it does not decay while the server sits
    idle after a load.
    """

    __slots__ = ("area", "cur", "last", "max", "t0")

    def __init__(self, cur: int = 0, now: float = 0.0) -> None:
        self.cur = cur  # a reset keeps the requests still in flight: they will leave
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
        return {"in_flight": self.cur, "max_in_flight": self.max, "mean_in_flight": mean}


class ServerState:
    """Config, counters, gauges, the request log, the RPM window and the fault RNG of one server."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.gauge = Gauge()
        self.kind_gauges = {kind: Gauge() for kind in replies.KINDS}
        self.seq = 0  # numbers the completion ids; a reset keeps counting, so ids stay unique
        self.reset()

    def _clear_counters(self) -> None:
        now = time.monotonic()
        self.gauge = Gauge(self.gauge.cur, now)
        self.kind_gauges = {kind: Gauge(gauge.cur, now) for kind, gauge in self.kind_gauges.items()}
        self.total = 0
        self.by_kind = dict.fromkeys(replies.KINDS, 0)
        self.by_outcome = dict.fromkeys(OUTCOMES, 0)
        self.authorized = 0
        self.rpm_rejections = 0
        self.client_disconnects = 0
        self.model_list_requests = 0
        self.started_wall = time.time()

    def reset(self) -> None:
        """Clear stats, log and the RPM window, and re-seed the fault RNG."""
        self._clear_counters()
        self.log: list[dict[str, Any]] = []
        self.window: collections.deque[float] = collections.deque()
        self.rng = random.Random(self.config.seed)

    def configure(self, changes: dict[str, Any]) -> SimulatorConfig:
        static = sorted(name for name in changes if name in STATIC_FIELDS)
        if static:
            raise ValueError(f"cannot change {', '.join(static)} on a running simulator")
        new = self.config.with_changes(**changes)
        if new.seed != self.config.seed:
            self.rng = random.Random(new.seed)
        if not new.keep_log:
            self.log = []
        self.config = new
        return new

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "total_requests": self.total,
            "by_kind": dict(self.by_kind),
            "by_outcome": dict(self.by_outcome),
            **self.gauge.snapshot(now),
            "by_kind_in_flight": {kind: gauge.snapshot(now) for kind, gauge in self.kind_gauges.items()},
            "authorized_requests": self.authorized,
            "rpm_rejections": self.rpm_rejections,
            "client_disconnects": self.client_disconnects,
            "model_list_requests": self.model_list_requests,
            "since": self.started_wall,
            "config": self.config.public_dict(),
        }


# --------------------------------------------------------------------------- chat requests


@dataclass(frozen=True)
class ChatRequest:
    """What the server reads of a valid chat request."""

    body: dict[str, Any]
    prompt: str  # the last user message (the last message if none is from the user)
    prompt_chars: int  # all messages: what the context limit and usage count
    model: str | None
    kind: str
    digest: str


def read_chat_request(raw: bytes, stage: str | None) -> tuple[ChatRequest | None, str | None]:
    """(request, None), or (None, why it is invalid); `stage` is the STAGE_HEADER value."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return None, "Request body is not a JSON object."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, "'messages' must be a non-empty list."
    if not all(isinstance(message, dict) for message in messages):
        return None, "Each message must be an object."
    if stage is not None and stage not in replies.STAGES:
        return None, f"{STAGE_HEADER} must be one of {', '.join(replies.STAGES)}, not {stage!r}."
    texts = [replies.message_text(message.get("content")) for message in messages]
    user_texts = [text for message, text in zip(messages, texts, strict=True) if message.get("role") == "user"]
    prompt = user_texts[-1] if user_texts else texts[-1]
    model = body.get("model")
    return ChatRequest(
        body=body,
        prompt=prompt,
        prompt_chars=sum(map(len, texts)),
        model=model if isinstance(model, str) and model else None,
        kind=replies.reply_kind(stage, prompt),
        digest=replies.prompt_digest(prompt),
    ), None


# --------------------------------------------------------------------------- the app


class ChatApp:
    """Request handling; one instance per server, all state lives in the event loop."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.state = ServerState(config)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path in _CHAT_PATHS:
            if request.method != "POST":
                return _error_response(405, "Use POST.", "invalid_request_error", None)
            return await self.chat(request)
        if path in _MODEL_PATHS:
            return self.models(request)
        if path.startswith("/_sim/"):
            return await self.control(request, path.removeprefix("/_sim/"))
        return _error_response(404, f"Unknown path {path} (simulator).", "invalid_request_error", "not_found")

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
                401, "Incorrect API key provided (simulator).", "invalid_request_error", "invalid_api_key"
            )
        created = int(st.started_wall)
        ids = st.config.models or []
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
        if name == "config" and request.method == "GET":
            return _json_response(st.config.public_dict())
        if name == "config" and request.method == "POST":
            try:
                changes = json.loads(await request.read() or b"{}")
                if not isinstance(changes, dict):
                    raise TypeError("body must be a JSON object")
                config = st.configure(changes)
            except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
                return _error_response(400, str(exc), "invalid_request_error", None)
            return _json_response(config.public_dict())
        return _error_response(404, f"Unknown control endpoint {name}.", "invalid_request_error", None)

    async def chat(self, request: web.BaseRequest) -> web.StreamResponse:
        """Count the request and keep the gauges right however it ends (a reply, a drop, a client
        that went away), around `_answer`."""
        st = self.state
        st.total += 1
        st.gauge.enter(time.monotonic())
        kind: str | None = None
        replied = False
        try:
            chat, error = read_chat_request(await request.read(), request.headers.get(STAGE_HEADER))
            if chat is not None:
                kind = chat.kind
                st.by_kind[kind] += 1
                st.kind_gauges[kind].enter(time.monotonic())
            response = await self._answer(request, chat, error)
            replied = True
            if response is None:  # injected "drop": the connection is already aborted
                raise asyncio.CancelledError
            return response
        finally:
            now = time.monotonic()
            st.gauge.leave(now)
            if kind is not None:  # looked up now: a reset may have replaced the gauge
                st.kind_gauges[kind].leave(now)
            if not replied:  # cancelled: the client went away before the reply
                st.client_disconnects += 1

    async def _answer(
        self, request: web.BaseRequest, chat: ChatRequest | None, error: str | None
    ) -> web.StreamResponse | None:
        rejection = self._reject_unauthorized(request, chat)
        if rejection is not None:
            return rejection
        if chat is not None and chat.body.get("stream"):
            error = "stream=true is not supported by the simulator."
        if error is not None:
            self._record(chat, "400")
            return _error_response(400, error, "invalid_request_error", None)
        rejection = self._reject_unknown_model(chat) or self._reject_long_context(chat) or self._reject_over_rpm(chat)
        if rejection is not None:
            return rejection
        outcome, jitter_ms = self._draw_fault(chat.kind)
        if outcome == "429":
            self._record(chat, outcome)
            return _error_response(
                429,
                "Rate limit reached (simulated fault). Please retry after a while.",
                "rate_limit_error",
                "rate_limit_exceeded",
                headers=_retry_headers(math.ceil(self.state.config.retry_after_s), self.state.config.retry_after_s),
            )
        # Recorded before the sleep, so the log and stats show what was decided even if the client
        # gives up (hang) or the handler is cancelled.
        structured = _wants_json(chat.body.get("response_format"))
        leave_out_score = not structured and (
            outcome == "noscore" or replies.weak_judge_leaves_out_score(chat.digest, self.state.config.noscore_share)
        )
        scored = chat.kind == "score" and outcome in ("ok", "hang") and not leave_out_score
        self._record(chat, outcome, replies.score_for_digest(chat.digest) if scored else None)
        config = self.state.config
        delay_s = config.hang_s if outcome == "hang" else (config.latency_ms + jitter_ms) / 1000.0
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if outcome in ("503", "500", "garbage"):
            return _injected_failure(outcome)
        if outcome == "drop":
            if request.transport is not None:
                request.transport.abort()
            return None
        return self._completion(chat, leave_out_score=leave_out_score, structured=structured)

    def _record(self, chat: ChatRequest | None, outcome: str, score: int | None = None) -> None:
        st = self.state
        st.by_outcome[outcome] += 1
        if st.config.keep_log:
            st.log.append(
                {
                    "kind": chat.kind if chat else None,
                    "model": chat.model if chat else None,
                    "prompt_sha256": chat.digest if chat else None,
                    "outcome": outcome,
                    "score": score,
                    "ts": time.time(),
                }
            )

    def _reject_unauthorized(self, request: web.BaseRequest, chat: ChatRequest | None) -> web.Response | None:
        if not self.state.config.api_key:
            return None
        if not self._auth_ok(request):
            self._record(chat, "401")
            return _error_response(
                401,
                "Incorrect API key provided (simulator). Keys are never logged.",
                "invalid_request_error",
                "invalid_api_key",
            )
        self.state.authorized += 1
        return None

    def _reject_unknown_model(self, chat: ChatRequest) -> web.Response | None:
        served = self.state.config.models
        if served is None or chat.model in served:
            return None
        self._record(chat, "404")
        return _error_response(
            404,
            f"The model `{chat.model}` does not exist (simulator serves: {', '.join(served)}).",
            "invalid_request_error",
            "model_not_found",
        )

    def _reject_long_context(self, chat: ChatRequest) -> web.Response | None:
        limit = self.state.config.max_context_chars
        if limit is None or chat.prompt_chars <= limit:
            return None
        self._record(chat, "400")
        return _error_response(
            400,
            f"This model's maximum context length is {limit} characters; "
            f"the messages have {chat.prompt_chars} characters (simulator).",
            "invalid_request_error",
            "context_length_exceeded",
        )

    def _reject_over_rpm(self, chat: ChatRequest) -> web.Response | None:
        """The real limit: at most `rpm_limit` accepted requests in any sliding `rpm_window_s`."""
        st, config = self.state, self.state.config
        if config.rpm_limit is None:
            return None
        now = time.monotonic()
        while st.window and st.window[0] <= now - config.rpm_window_s:
            st.window.popleft()
        if len(st.window) < config.rpm_limit:
            st.window.append(now)
            return None
        wait_s = st.window[0] + config.rpm_window_s - now
        retry_after_s = max(1, math.ceil(wait_s))
        st.rpm_rejections += 1
        self._record(chat, "429")
        return _error_response(
            429,
            f"Rate limit reached: {config.rpm_limit} requests per {config.rpm_window_s:g} s (simulator). "
            f"Retry in {retry_after_s} s.",
            "rate_limit_error",
            "rate_limit_exceeded",
            headers=_retry_headers(retry_after_s, wait_s),
        )

    def _draw_fault(self, kind: str) -> tuple[str, float]:
        """(outcome, extra latency in ms): one uniform draw picks at most one fault, one more the jitter."""
        config = self.state.config
        u = self.state.rng.random()
        jitter_ms = self.state.rng.random() * config.jitter_ms
        if config.latency_sigma:  # drawn only when set, so runs without it keep their seeded sequence
            jitter_ms += config.latency_ms * (math.exp(config.latency_sigma * self.state.rng.gauss()) - 1)
        threshold = 0.0
        for name in RATE_FIELDS:
            threshold += getattr(config, name)
            if u < threshold:
                outcome = name.removeprefix("rate_")
                # noscore only changes a judge's reply; any other request answers normally
                return ("ok" if outcome == "noscore" and kind != "score" else outcome), jitter_ms
        return "ok", jitter_ms

    def _completion(self, chat: ChatRequest, *, leave_out_score: bool, structured: bool) -> web.Response:
        body = chat.body
        model = chat.model or _DEFAULT_MODEL
        text = replies.reply_text(
            chat.kind, chat.prompt, model, chat.digest, leave_out_score=leave_out_score, as_json=structured
        )
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        content, finish = replies.cut(text, body.get("stop"), max_tokens)
        logprobs = None
        if body.get("logprobs") is True and self.state.config.serve_logprobs:
            top_n = body.get("top_logprobs")
            top_n = top_n if isinstance(top_n, int) and 0 <= top_n <= 20 else 0
            logprobs = {"content": replies.token_logprobs(content, chat.kind, chat.digest, top_n)}
        n = body.get("n")
        n = n if isinstance(n, int) and 1 <= n <= 16 else 1
        prompt_tokens = replies.token_count(chat.prompt_chars)
        completion_tokens = replies.token_count(len(content)) * n
        self.state.seq += 1
        return _json_response(
            {
                "id": f"chatcmpl-sim-{self.state.seq}-{chat.digest[:8]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "simulator",
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": logprobs,
                        "finish_reason": finish,
                    }
                    for i in range(n)
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )


def _wants_json(response_format: Any) -> bool:
    """A request for JSON: OpenAI's `json_schema` / `json_object`, or TGI's grammar (`json`)."""
    return isinstance(response_format, dict) and response_format.get("type") in ("json_schema", "json_object", "json")


def _injected_failure(outcome: str) -> web.Response:
    if outcome == "503":
        return _error_response(
            503, "The server is overloaded (simulated fault). Please retry.", "server_error", "service_unavailable"
        )
    if outcome == "500":
        return _error_response(500, "Internal server error (simulated fault).", "server_error", "internal_error")
    return web.Response(body=_GARBAGE, status=200, content_type="application/json")


# --------------------------------------------------------------------------- the socket


class SimulatorServer:
    """Binds the aiohttp low-level server to a socket on the current event loop."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.app = ChatApp(config)
        self._web_server: web.Server | None = None
        self._server: asyncio.base_events.Server | None = None
        self.port: int | None = None

    async def start(self) -> None:
        config = self.app.state.config
        self._web_server = web.Server(self.app.handle, handler_cancellation=True, access_log=None)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._web_server, config.host, config.port, backlog=4096, reuse_address=True
        )
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


async def serve(config: SimulatorConfig) -> None:
    """Serve until SIGTERM or SIGINT, after printing `SIMULATOR_URL <url>` on stdout."""
    server = SimulatorServer(config)
    await server.start()
    print(f"{URL_LINE_PREFIX} {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # non-POSIX
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
