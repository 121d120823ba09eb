"""The backends a stage can run on, by `StageConfig.backend`. A new backend is a module with a
`Backend` subclass (see base.py) and one line in `BACKENDS`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backtrans.backends.base import (
    Backend,
    Client,
    FailedAttempt,
    MalformedReply,
    PreflightError,
    Reply,
    RequestOptions,
)
from backtrans.backends.hf_endpoint import HFEndpointBackend
from backtrans.backends.openai_compatible import OpenAIBackend
from backtrans.backends.simulated import SimulatedBackend

if TYPE_CHECKING:
    from backtrans.config import StageConfig

BACKENDS: dict[str, Backend] = {
    backend.name: backend for backend in (OpenAIBackend(), HFEndpointBackend(), SimulatedBackend())
}


def backend_for(stage: StageConfig) -> Backend:
    return BACKENDS[stage.backend]


__all__ = [
    "BACKENDS",
    "Backend",
    "Client",
    "FailedAttempt",
    "MalformedReply",
    "PreflightError",
    "Reply",
    "RequestOptions",
    "backend_for",
]
