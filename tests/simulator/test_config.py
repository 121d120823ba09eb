"""SimulatorConfig: pydantic validation, changes on a copy, and the command-line flags both ways."""

import pytest

from backtrans.simulator.config import SimulatorConfig, build_parser, config_from_args, config_to_argv


def test_rates_are_probabilities_that_sum_to_at_most_one():
    with pytest.raises(ValueError, match="fault rates sum to 1.2000 > 1"):
        SimulatorConfig(rate_429=0.6, rate_503=0.6)
    with pytest.raises(ValueError, match="rate_drop"):
        SimulatorConfig(rate_drop=-0.1)
    with pytest.raises(ValueError, match="rate_500"):
        SimulatorConfig(rate_500=2.0)
    assert SimulatorConfig(rate_429=0.5, rate_noscore=0.5).rate_noscore == 0.5


@pytest.mark.parametrize(
    "field", [{"latency_ms": -1}, {"hang_s": -1}, {"rpm_window_s": 0}, {"rpm_limit": 0}, {"max_context_chars": 0}]
)
def test_out_of_range_values_are_errors(field):
    with pytest.raises(ValueError, match=next(iter(field))):
        SimulatorConfig(**field)


def test_unknown_fields_are_errors_and_changes_are_validated_copies():
    with pytest.raises(ValueError, match="no_such_field"):
        SimulatorConfig(no_such_field=1)
    config = SimulatorConfig(seed=3)
    changed = config.with_changes(rate_503="0.5", models="a,b")
    assert (changed.rate_503, changed.models, changed.seed) == (0.5, ["a", "b"], 3)
    assert config.rate_503 == 0.0
    with pytest.raises(ValueError, match="no_such_field"):
        config.with_changes(no_such_field=1)
    with pytest.raises(ValueError):
        config.with_changes(rate_500=2.0)


def test_the_key_is_never_shown():
    config = SimulatorConfig(api_key="sk-sim-secret-123")
    assert "sk-sim-secret-123" not in repr(config)
    assert config.public_dict()["api_key"] == "***"
    assert SimulatorConfig().public_dict()["api_key"] is None


def test_cli_flags_round_trip():
    config = SimulatorConfig(
        latency_ms=20,
        jitter_ms=5,
        rate_429=0.1,
        rate_noscore=0.2,
        models=["a", "b"],
        rpm_limit=100,
        keep_log=False,
        seed=3,
        max_context_chars=5000,
        host="::1",
    )
    argv = config_to_argv(config)
    assert argv == [
        "--host", "::1", "--models", "a", "b", "--max-context-chars", "5000", "--latency-ms", "20.0",
        "--jitter-ms", "5.0", "--seed", "3", "--rate-429", "0.1", "--rate-noscore", "0.2", "--rpm-limit", "100",
        "--no-keep-log",
    ]  # fmt: skip
    assert config_from_args(build_parser().parse_args(argv)) == config
    assert config_to_argv(SimulatorConfig()) == []
    assert "--api-key" not in config_to_argv(SimulatorConfig(api_key="k"))
    assert config_to_argv(SimulatorConfig(api_key="k"), include_api_key=True) == ["--api-key", "k"]


def test_the_key_can_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SIM_KEY", "sk-from-env")
    assert config_from_args(build_parser().parse_args(["--api-key-env", "SIM_KEY"])).api_key == "sk-from-env"
    monkeypatch.delenv("SIM_KEY")
    with pytest.raises(SystemExit, match="SIM_KEY is empty or unset"):
        config_from_args(build_parser().parse_args(["--api-key-env", "SIM_KEY"]))
