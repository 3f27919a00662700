"""RunConfig: one frozen config parsed once; every bad value named with its key and value."""

from __future__ import annotations

import re
import tomllib
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_defaults_equal_dataclass_defaults() -> None:
    app_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]

    parsed = RunConfig.from_mapping(app_config)

    assert parsed == RunConfig()
    assert set(app_config) == set(RunConfig().to_run_config())


def test_toml_int_is_coerced_for_float_fields() -> None:
    config = RunConfig.from_mapping({"learning-rate": 1, "target-epsilon": 2})

    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.target_epsilon == 2.0 and isinstance(config.target_epsilon, float)


def test_cli_strings_are_coerced() -> None:
    config = RunConfig.from_mapping({"num-rounds": "3", "delta": "1e-4", "secure-noise": "false"})

    assert (config.num_rounds, config.delta, config.secure_noise) == (3, 1e-4, False)


def test_unknown_key_is_rejected_with_its_name() -> None:
    with pytest.raises(ConfigError, match="unknown key 'num-round'"):
        RunConfig.from_mapping({"num-round": 3})


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("num-rounds", 0, "num-rounds must be >= 1; got 0"),
    ("batch-size", True, "batch-size must be a int; got True"),
    ("strategy", "fedfoo", "strategy must be one of"),
    ("test-fraction", 1.5, "test-fraction must be in (0, 1); got 1.5"),
    ("hidden-units", "64,x", "hidden-units must be comma-separated"),
    ("hidden-units", "0", "hidden-units must be comma-separated"),
    ("learning-rate", float("nan"), "learning-rate must be in (0, 100]"),
    ("dp-mode", "maybe", "dp-mode must be one of"),
    ("accountant", "gdp", "accountant must be one of"),
    ("secure-noise", 1, "secure-noise must be true or false; got 1"),
    ("accept-site-resets", "maybe", "accept-site-resets must be true or false; got 'maybe'"),
    ("seed", -1, "seed must be in [0, 2**32)"),
])
def test_bad_value_names_key_and_value(key: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({key: value})

    assert fragment in str(err.value)


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"num-rounds": 0, "batch-size": 0, "strategy": "x"})

    assert len(err.value.problems) == 3


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"dp-mode": "noise-multiplier", "noise-multiplier": 0.0},
     r"config: noise-multiplier must be .*> 0; got 0\.0"),
    ({"dp-mode": "noise-multiplier", "noise-multiplier": -1.0},
     r"config: noise-multiplier must be .*> 0; got -1\.0"),
    ({"target-epsilon": 0.0}, r"config: target-epsilon must be .*> 0; got 0\.0"),
    ({"delta": 1.0}, "delta"),
    ({"clip-norm": 0.0}, "config: clip-norm must be"),
])
def test_privacy_settings_are_validated_when_dp_is_on(overrides: dict[str, object],
                                                      fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        RunConfig.from_mapping(overrides)


def test_dp_off_is_explicit_and_skips_privacy_settings() -> None:
    config = RunConfig.from_mapping({"dp-mode": "off", "noise-multiplier": 0.0})

    assert config.privacy is None and not config.dp_enabled


def test_privacy_view_carries_exactly_one_noise_source() -> None:
    calibrated = RunConfig().privacy
    fixed = RunConfig(dp_mode="noise-multiplier", noise_multiplier=1.3).privacy

    assert calibrated is not None and fixed is not None
    assert (calibrated.noise_multiplier, calibrated.target_epsilon) == (None, 1.0)
    assert (fixed.noise_multiplier, fixed.target_epsilon) == (1.3, None)


def test_config_is_frozen_and_round_trips() -> None:
    config = RunConfig(num_rounds=3, hidden_units="16")

    with pytest.raises(FrozenInstanceError):
        config.num_rounds = 4  # type: ignore[misc]
    assert RunConfig.from_mapping(config.to_run_config()) == config
    assert config.hidden_layer_sizes == (16,)


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"secure-aggregation": "paillier"}, "secure-aggregation must be one of"),
    ({"secure-aggregation": "secaggplus", "min-sites": 3, "strategy": "fedmedian"},
     "strategy must be one of fedavg, fedprox with secure-aggregation=secaggplus"),
    ({"secure-aggregation": "secaggplus", "min-sites": 3, "site-dp": True},
     "site-dp must be false with secure-aggregation=secaggplus"),
    ({"secure-aggregation": "secaggplus", "min-sites": 2},
     "min-sites must be >= 3 with secure-aggregation=secaggplus"),
])
def test_secure_aggregation_rejects_settings_it_cannot_honour(changes: dict[str, object],
                                                              fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        RunConfig.from_mapping(changes)


def test_secaggplus_with_fedavg_and_three_sites_is_accepted() -> None:
    config = RunConfig.from_mapping({"secure-aggregation": "secaggplus", "min-sites": 3})
    assert config.secure_aggregation == "secaggplus"


def test_site_resets_are_refused_unless_the_run_opts_in() -> None:
    assert RunConfig().accept_site_resets is False
    assert RunConfig.from_mapping({"accept-site-resets": "true"}).accept_site_resets is True
