"""Config loading: overrides, key-path errors, secrets only as variable names."""

import pytest

from backtrans.config import DEFAULT_COLUMNS, ConfigError, load_config

MINIMAL = """
source: {uri: data.jsonl, rename: {prompt: instruction}}
score: {backend: openai, model: gpt-4, api_key_env: OPENAI_API_KEY}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(MINIMAL)
    return path


def test_defaults_match_the_seed_pipeline(config_file):
    config = load_config(config_file)
    assert config.output.columns == DEFAULT_COLUMNS
    assert config.generate is None
    assert config.score.max_concurrency == 32 and config.score.max_retries == 6 and config.score.timeout_s == 120


def test_set_overrides_parse_yaml_values(config_file):
    config = load_config(
        config_file,
        ["score.max_concurrency=8", "source.limit=10", "output.columns=[instruction, score]", "hub.repo_id=me/x"],
    )
    assert config.score.max_concurrency == 8
    assert config.source.limit == 10
    assert config.output.columns == ["instruction", "score"]
    assert config.hub.repo_id == "me/x"


def test_set_can_add_a_whole_stage(config_file):
    config = load_config(config_file, ["generate.backend=simulated", "generate.model=m"])
    assert config.generate.backend == "simulated" and config.generate.model == "m"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("score.max_concurency=8", "config key score.max_concurency: unknown key"),
        ("score.max_concurrency=lots", "config key score.max_concurrency:"),
        ("score.backend=anthropic", "config key score.backend:"),
        ("sauce.uri=x", "config key sauce: unknown key"),
        ("source.limit=0", "config key source.limit:"),
        ("score.api_key_env=sk-live-abc123", "config key score.api_key_env: "),
        ("generate.model=m", "config key generate.backend: Field required"),
    ],
)
def test_errors_name_the_key_path(config_file, override, message):
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, [override])
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_a_pasted_key_is_not_echoed(config_file):
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, ["score.api_key_env=sk-live-abc123"])
    assert "abc123" not in str(caught.value)


def test_malformed_override_and_missing_file(config_file, tmp_path):
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(config_file, ["score.model"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
