"""The registry: one backend per `StageConfig.backend`, checks without network, light imports."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from backtrans.backends import BACKENDS, backend_for
from backtrans.config import StageConfig


def test_the_registry_is_what_the_config_accepts():
    assert sorted(BACKENDS) == ["hf-endpoint", "openai", "simulated"]
    for name in BACKENDS:
        assert backend_for(StageConfig(backend=name, model="m", base_url="http://h")).name == name
    with pytest.raises(ValidationError, match=r"'anthropic' is not a backend \(one of: hf-endpoint, openai, sim"):
        StageConfig(backend="anthropic", model="m")


@pytest.mark.parametrize("backend", ["openai", "simulated"])
def test_endpoint_name_is_only_for_hf_endpoint(backend):
    unchecked = StageConfig.model_construct(backend=backend, model="m", endpoint_name="e")
    with pytest.raises(ValueError, match=r"^endpoint_name: only for backend hf-endpoint$"):
        backend_for(unchecked).check_config(unchecked)
    with pytest.raises(ValidationError, match=r"endpoint_name: only for backend hf-endpoint"):
        StageConfig(backend=backend, model="m", endpoint_name="e")  # the config's validator asks the backend


def test_simulated_uses_the_jobs_simulator_and_no_key(monkeypatch):
    monkeypatch.delenv("SOME_KEY", raising=False)
    stage = StageConfig(backend="simulated", model="m", base_url="http://ignored", api_key_env="SOME_KEY")
    backend = backend_for(stage)
    assert backend.needs_simulator and not backend_for(StageConfig(backend="openai", model="m")).needs_simulator
    assert backend.resolve_base_url(stage, "http://127.0.0.1:5/v1") == "http://127.0.0.1:5/v1"
    assert backend.api_key(stage, "score") is None


def test_a_missing_key_variable_is_named(monkeypatch):
    from backtrans.backends import PreflightError

    monkeypatch.delenv("SOME_KEY", raising=False)
    stage = StageConfig(backend="openai", model="m", api_key_env="SOME_KEY")
    with pytest.raises(PreflightError, match=r"^score.api_key_env: environment variable SOME_KEY is not set$"):
        backend_for(stage).api_key(stage, "score")


def test_importing_the_registry_imports_neither_the_config_nor_an_sdk():
    # config.py's validator calls check_config: the registry must not import config (a cycle) or the SDKs (seconds).
    heavy = "{'backtrans.config', 'openai', 'huggingface_hub'}"
    code = f"import sys, backtrans.backends; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
