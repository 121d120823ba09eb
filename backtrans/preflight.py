"""Pre-flight: one cheap request to each stage's server before the corpus is read.

`GET .../v1/models` costs nothing on OpenAI, vLLM, TGI and llama.cpp alike, and tells apart the
three ways a run fails at once: nobody answers, the key is refused, the model is not served.
"""

from __future__ import annotations

import httpx

from backtrans.config import StageConfig
from backtrans.endpoints import one_line

OPENAI_BASE_URL = "https://api.openai.com/v1"
PROBE_TIMEOUT_S = 15.0


class PreflightError(RuntimeError):
    pass


def models_url(stage: StageConfig, base_url: str | None) -> str:
    if stage.backend == "hf-endpoint":
        # AsyncInferenceClient takes the server root (it adds /v1/chat/completions itself).
        return base_url.rstrip("/").removesuffix("/v1") + "/v1/models"
    return (base_url or OPENAI_BASE_URL).rstrip("/") + "/models"


def probe(name: str, stage: StageConfig, base_url: str | None, api_key: str | None) -> None:
    """Raise PreflightError, one line naming the stage and URL, unless the server would take requests."""
    url = models_url(stage, base_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=min(stage.timeout_s, PROBE_TIMEOUT_S))
    except httpx.HTTPError as error:
        raise PreflightError(f"{name}: cannot reach {url}: {one_line(error, api_key)}") from None
    if response.status_code in (401, 403):
        who = f"the key in {stage.api_key_env}" if stage.api_key_env else "a request without a key"
        raise PreflightError(f"{name}: {url} refused {who} (HTTP {response.status_code})")
    if response.status_code >= 400:
        return  # a server without a model list (404) can still serve chat completions
    served = _model_ids(response)
    if stage.backend != "hf-endpoint" and served and stage.model not in served:
        shown = ", ".join(sorted(served)[:10])
        raise PreflightError(f"{name}: model {stage.model!r} is not served by {url} (served: {shown})")


def _model_ids(response: httpx.Response) -> set[str]:
    try:
        return {entry["id"] for entry in response.json().get("data", []) if isinstance(entry, dict) and "id" in entry}
    except (ValueError, AttributeError):
        return set()
