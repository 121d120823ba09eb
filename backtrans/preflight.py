"""Pre-flight: one cheap request to each stage's server before the corpus is read.

`GET .../v1/models` costs nothing on OpenAI, vLLM, TGI and llama.cpp alike, and tells apart the
three ways a run fails at once: nobody answers, the key is refused, the model is not served.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

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
    # The standard library's client: one GET needs no connection pool, and it honours the same
    # proxy variables (HTTPS_PROXY, NO_PROXY) as the stage clients.
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=min(stage.timeout_s, PROBE_TIMEOUT_S)) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            who = f"the key in {stage.api_key_env}" if stage.api_key_env else "a request without a key"
            raise PreflightError(f"{name}: {url} refused {who} (HTTP {error.code})") from None
        return  # a server without a model list (404) can still serve chat completions
    except (urllib.error.URLError, OSError) as error:
        raise PreflightError(f"{name}: cannot reach {url}: {one_line(error, api_key)}") from None
    served = _model_ids(body)
    if stage.backend != "hf-endpoint" and served and stage.model not in served:
        shown = ", ".join(sorted(served)[:10])
        raise PreflightError(f"{name}: model {stage.model!r} is not served by {url} (served: {shown})")


def _model_ids(body: bytes) -> set[str]:
    try:
        return {entry["id"] for entry in json.loads(body).get("data", []) if isinstance(entry, dict) and "id" in entry}
    except (ValueError, AttributeError):
        return set()
