"""A deterministic, OpenAI-compatible chat-completions server with fault injection.

An honest stand-in for a real LLM endpoint: every reply says plainly that it is simulated. The job
starts it for `backend: simulated` as a subprocess on loopback and talks to it with the real
clients; the tests run it in a background thread (`Simulator`); the benchmark uses it as a cheap,
predictable backend.

Protocol: `POST /v1/chat/completions` (also `/chat/completions`, which is where TGI-style clients
such as huggingface_hub's AsyncInferenceClient post) in OpenAI's format, `GET /v1/models` (also
`/models`). The reply depends on the stage the request names in the `X-Backtrans-Stage` header
(`backtrans.schema.STAGE_HEADER`) and on the text of its last user message; `replies.py` says how.
A request without the header is answered as a generation; an unknown stage is a 400.

`max_tokens` (or `max_completion_tokens`) is honoured like a real server would: a reply longer
than 4 * max_tokens characters is cut there and gets `finish_reason: "length"`; `stop` strings cut
the reply too. `stream: true` is not supported (400).

Control plane (no auth, loopback only): `GET /_sim/stats`, `GET /_sim/log`, `GET|POST /_sim/config`
(POST a JSON object with the fields to change) and `POST /_sim/reset` (clears stats, log and the
RPM window, and re-seeds the RNG). Faults are drawn per request from a seeded `random.Random`, so a
run with the same request sequence is reproducible and a retry can succeed; `SimulatorConfig` has
the knobs.

Modules: `config` (SimulatorConfig and its command-line flags), `replies` (reply text, scores,
tokens), `server` (the aiohttp app, checks, faults, stats), `control` (thread and subprocess).
"""

from backtrans.simulator.config import SimulatorConfig, config_to_argv
from backtrans.simulator.control import Simulator, SimulatorProcess, start_subprocess
from backtrans.simulator.replies import BACKWARD_PROMPT_PREFIX, KINDS, STAGES, simulated_score
from backtrans.simulator.server import OUTCOMES

__all__ = [
    "BACKWARD_PROMPT_PREFIX",
    "KINDS",
    "OUTCOMES",
    "STAGES",
    "Simulator",
    "SimulatorConfig",
    "SimulatorProcess",
    "config_to_argv",
    "simulated_score",
    "start_subprocess",
]
