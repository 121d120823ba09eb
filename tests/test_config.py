"""Config loading: overrides, key-path errors, secrets only as variable names."""

from pathlib import Path

import pytest

from backtrans.config import DEFAULT_COLUMNS, ConfigError, config_reference, load_config

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


def test_every_problem_is_reported_on_its_own_line(config_file):
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, ["score.max_concurency=8", "score.timeout_s=-1", "source.limit=0"])
    assert str(caught.value).splitlines() == [
        "config key source.limit: Input should be greater than or equal to 1",
        "config key score.timeout_s: Input should be greater than 0",
        "config key score.max_concurency: unknown key",
    ]


def test_a_yaml_syntax_error_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source:\n  uri: a.jsonl\nscore: {backend: openai, model: [x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    message = str(caught.value)
    assert message.startswith(f"config file {bad} is not valid YAML at line 4, column 1: ")
    assert "\n" not in message


def test_a_folder_given_as_the_config_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert str(caught.value) == f"config file {tmp_path} is a folder; give the path of a YAML file in it"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("score.generation_kwargs={max_new_tokens: 8, beams: 2}", "config key score.generation_kwargs: 'beams' is not"),
        ("score.template=/no/such/template.txt", "config key score.template: file not found: /no/such/template.txt"),
        ("score.endpoint_name=my-endpoint", "config key score.endpoint_name: only for backend hf-endpoint"),
        ("score.backend=hf-endpoint", "config key score.base_url: backend hf-endpoint needs base_url or endpoint_name"),
    ],
)
def test_checks_that_need_no_network_are_config_errors(config_file, override, message):
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, [override])
    assert str(caught.value).startswith(message)


def test_a_template_with_an_unknown_placeholder_is_a_config_error(config_file, tmp_path):
    template = tmp_path / "judge.txt"
    template.write_text("Rate {instruction} / {answer}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, [f"score.template={template}"])
    assert str(caught.value) == f"config key score.template: template {template}: unknown placeholder {{answer}}"


def test_readme_config_table_is_made_from_the_field_descriptions():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("<!-- config table: begin -->\n", 1)[1].split("\n<!-- config table: end -->", 1)[0]
    assert table == config_reference(), "README's config table is stale: python -m backtrans.config > the table"


def test_score_method_and_subsets_by_expected_score(config_file):
    assert load_config(config_file).score.method == "parse"
    config = load_config(config_file, ["score.method=logprobs", "curation.subsets={a4: 4, a5: {min_expected: 4.5}}"])
    assert config.output.columns == [*DEFAULT_COLUMNS, "score_expected", "score_probs"]  # the default columns
    assert config.curation.subsets["a4"] == 4 and config.curation.subsets["a5"].min_expected == 4.5
    own = load_config(config_file, ["score.method=logprobs", "output.columns=[instruction, score]"])
    assert own.output.columns == ["instruction", "score"]  # columns the user chose are left as they are


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["score.method=votes"], "config key score.method: Input should be 'parse', 'logprobs' or 'json'"),
        (["curation.subsets={a5: {}}"],
         "config key curation.subsets.a5: a subset rule needs min_score or min_expected"),
        (["curation.subsets={a5: {min_expected: 6}}"],
         "config key curation.subsets.a5.min_expected: Input should be less than or equal to 5"),
        (["curation.subsets={a5: {min_expected: 4.5}}"],
         "config key curation.subsets.a5: min_expected reads score_expected, which needs score.method "
         "logprobs and score_expected in output.columns"),
    ],
)  # fmt: skip
def test_score_method_and_subset_rules_are_checked(config_file, overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, overrides)
    assert message in str(caught.value)
