"""`backend: simulated`: the project's loopback simulator (backtrans/simulator.py), which the job
starts for the run, spoken to through the real openai client. No key: nothing leaves the machine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backtrans.backends.openai_compatible import OpenAIBackend

if TYPE_CHECKING:
    from backtrans.config import StageConfig


class SimulatedBackend(OpenAIBackend):
    name = "simulated"
    needs_simulator = True

    def resolve_base_url(self, stage: StageConfig, simulator_url: str | None) -> str | None:
        return simulator_url

    def api_key(self, stage: StageConfig, stage_name: str) -> str | None:
        return None
