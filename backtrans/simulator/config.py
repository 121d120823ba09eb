"""The simulator's knobs, validated by pydantic like the job's config, and their command-line form.

Every field is also a flag of `python -m backtrans.simulator` (`rate_429` is `--rate-429`);
`config_to_argv` and `build_parser` / `config_from_args` are the two directions of that mapping.
"""

from __future__ import annotations

import argparse
import os
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# In the order one uniform draw tests them (see server.py): the order is part of what a seed reproduces.
RATE_FIELDS = ("rate_429", "rate_503", "rate_500", "rate_hang", "rate_drop", "rate_garbage", "rate_noscore")
# Fields a running server cannot change: its socket is bound.
STATIC_FIELDS = frozenset({"host", "port"})

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]


class SimulatorConfig(BaseModel):
    """Everything the simulator can be told.

    Rates are per-request probabilities and are mutually exclusive (their sum must be at most 1):
    one uniform draw picks at most one fault per request. `rate_noscore` only affects scoring
    requests (other kinds answer normally).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = 0
    # Served model ids; None accepts any model and so lists none (a client cannot check it).
    models: list[str] | None = None
    # If set, requests need `Authorization: Bearer <api_key>` (else 401).
    api_key: str | None = Field(default=None, repr=False)
    # If set, prompts longer than this many characters get 400.
    max_context_chars: int | None = Field(default=None, ge=1)
    latency_ms: NonNegative = 0.0
    # Extra latency drawn uniformly from [0, jitter_ms] per request.
    jitter_ms: NonNegative = 0.0
    # Log-normal latencies, as real APIs have: latency_ms is the median, each request's latency is
    # latency_ms x exp(latency_sigma x a standard normal draw) (0: every request takes latency_ms).
    # sigma 0.57 with a 4 s median gives a p99 of about 15 s.
    latency_sigma: NonNegative = 0.0
    seed: int = 0  # of the fault draws and the jitter
    # The faults, each a share of requests:
    rate_429: Rate = 0.0  # 429 Too Many Requests, with Retry-After: retry_after_s
    rate_503: Rate = 0.0  # 503 Service Unavailable
    rate_500: Rate = 0.0  # 500 Internal Server Error
    # The request sleeps hang_s before it is answered (longer than a client's timeout).
    rate_hang: Rate = 0.0
    rate_drop: Rate = 0.0  # the connection is closed with no answer
    # 200 with a body that is not a chat completion.
    rate_garbage: Rate = 0.0
    rate_noscore: Rate = 0.0  # a scoring request answered without a score line
    # A weak judge: this share of prompts (the same ones every time) get plain replies without a score line.
    noscore_share: Rate = 0.0
    # Answer `logprobs: true` with logprobs; false: a server that never returns them.
    serve_logprobs: bool = True
    # Retry-After (seconds) sent with injected 429s.
    retry_after_s: NonNegative = 1.0
    # How long a hanging request sleeps before answering.
    hang_s: NonNegative = 30.0
    # A real limit on accepted requests per sliding window (None: unlimited).
    rpm_limit: int | None = Field(default=None, ge=1)
    # Length of the RPM sliding window (60 s, like a real per-minute limit).
    rpm_window_s: float = Field(default=60.0, gt=0.0)
    # Keep a per-request log for /_sim/log (the benchmark turns it off).
    keep_log: bool = True

    @field_validator("models", mode="before")
    @classmethod
    def _model_ids(cls, value: Any) -> Any:
        # A comma-separated string, as one `--set`-style value, or ids of any scalar type.
        if isinstance(value, str):
            return [m for m in value.split(",") if m]
        if isinstance(value, list):
            return [str(m) for m in value]
        return value

    @model_validator(mode="after")
    def _one_fault_per_draw(self) -> SimulatorConfig:
        total = sum(getattr(self, name) for name in RATE_FIELDS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates sum to {total:.4f} > 1")
        return self

    def with_changes(self, **changes: Any) -> SimulatorConfig:
        """A validated copy with `changes` applied (an unknown field is an error)."""
        return type(self).model_validate({**self.model_dump(), **changes})

    def public_dict(self) -> dict[str, Any]:
        """The config as a JSON-able dict, with the API key redacted."""
        return {**self.model_dump(), "api_key": "***" if self.api_key else None}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_to_argv(config: SimulatorConfig, *, include_api_key: bool = False) -> list[str]:
    """Command-line flags reproducing `config` (non-default fields only).

    The API key is left out unless `include_api_key` (command lines are visible to other
    processes); `start_subprocess` passes it through the environment instead.
    """
    default = SimulatorConfig()
    argv: list[str] = []
    for name in SimulatorConfig.model_fields:
        value = getattr(config, name)
        if value == getattr(default, name) or value is None or (name == "api_key" and not include_api_key):
            continue
        if isinstance(value, bool):
            argv.append(_flag(name) if value else "--no-" + _flag(name).removeprefix("--"))
        elif name == "models":
            argv += [_flag(name), *value]
        else:
            argv += [_flag(name), str(value)]
    return argv


def _scalar_type(name: str) -> type:
    """str, int or float: the field's type without its `| None`."""
    annotation = SimulatorConfig.model_fields[name].annotation
    return next((t for t in typing.get_args(annotation) if t is not type(None)), annotation)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backtrans.simulator",
        description="Deterministic OpenAI-compatible chat server with fault injection "
        "(simulated replies, never a real model).",
    )
    default = SimulatorConfig()
    for name in SimulatorConfig.model_fields:
        value = getattr(default, name)
        if isinstance(value, bool):
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, default=value)
        elif name == "models":
            parser.add_argument(_flag(name), nargs="*", default=value, help="served model ids")
        elif name == "api_key":
            parser.add_argument(_flag(name), default=value, help="visible in process listings; prefer --api-key-env")
        else:
            parser.add_argument(_flag(name), type=_scalar_type(name), default=value)
    parser.add_argument(
        "--api-key-env", metavar="VAR", default=None, help="read the required API key from this environment variable"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    values = {name: getattr(args, name) for name in SimulatorConfig.model_fields}
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise SystemExit(f"environment variable {args.api_key_env} is empty or unset")
        values["api_key"] = key
    return SimulatorConfig(**values)
