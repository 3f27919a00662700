"""PrivacyConfig: one frozen object, validated once; two ways in; every problem at once."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError
from fedcare.privacy import ACCOUNTANTS, PrivacyConfig


def make_config_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "noise_multiplier": 1.1,
        "clip_norm": 1.0,
        "delta": 1e-5,
        "epsilon_budget": 8.0,
        "accountant": "rdp",
    }
    kwargs.update(overrides)
    return kwargs


def make_config(**overrides: Any) -> PrivacyConfig:
    return PrivacyConfig(**make_config_kwargs(**overrides))


def test_valid_noise_multiplier_config_keeps_values() -> None:
    config = make_config()

    assert config.noise_multiplier == 1.1
    assert config.target_epsilon is None
    assert config.calibrate is False
    assert config.accountant == "rdp"


def test_valid_target_epsilon_config_asks_for_calibration() -> None:
    config = make_config(noise_multiplier=None, target_epsilon=3.0, accountant="pld")

    assert config.calibrate is True
    assert config.target_epsilon == 3.0


def test_toml_ints_for_float_fields_are_coerced_to_float() -> None:
    config = make_config(noise_multiplier=2, clip_norm=1, epsilon_budget=10)

    assert (config.noise_multiplier, config.clip_norm, config.epsilon_budget) == (2.0, 1.0, 10.0)
    assert all(isinstance(v, float)
               for v in (config.noise_multiplier, config.clip_norm, config.epsilon_budget))


def test_config_is_frozen_and_keyword_only() -> None:
    config = make_config()

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.noise_multiplier = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        PrivacyConfig(1.0, None, 1.0, 1e-5, 8.0)  # type: ignore[misc]


BAD_VALUES: list[tuple[dict[str, Any], str, str]] = [
    ({"noise_multiplier": -1.0}, "noise_multiplier", "-1.0"),
    ({"noise_multiplier": 0.0}, "noise_multiplier", "0.0"),
    ({"noise_multiplier": 0}, "noise_multiplier", "0"),
    ({"noise_multiplier": math.nan}, "noise_multiplier", "nan"),
    ({"noise_multiplier": math.inf}, "noise_multiplier", "inf"),
    ({"noise_multiplier": True}, "noise_multiplier", "True"),
    ({"noise_multiplier": "1.0"}, "noise_multiplier", "'1.0'"),
    ({"noise_multiplier": None, "target_epsilon": 0.0}, "target_epsilon", "0.0"),
    ({"noise_multiplier": None, "target_epsilon": -2.0}, "target_epsilon", "-2.0"),
    ({"noise_multiplier": None, "target_epsilon": math.inf}, "target_epsilon", "inf"),
    ({"noise_multiplier": None, "target_epsilon": True}, "target_epsilon", "True"),
    ({"clip_norm": 0.0}, "clip_norm", "0.0"),
    ({"clip_norm": -1.0}, "clip_norm", "-1.0"),
    ({"clip_norm": math.nan}, "clip_norm", "nan"),
    ({"clip_norm": False}, "clip_norm", "False"),
    ({"delta": 0.0}, "delta", "0.0"),
    ({"delta": 1.0}, "delta", "1.0"),
    ({"delta": 1.5}, "delta", "1.5"),
    ({"delta": -1e-5}, "delta", "-1e-05"),
    ({"delta": math.nan}, "delta", "nan"),
    ({"delta": True}, "delta", "True"),
    ({"epsilon_budget": 0.0}, "epsilon_budget", "0.0"),
    ({"epsilon_budget": -1.0}, "epsilon_budget", "-1.0"),
    ({"epsilon_budget": math.inf}, "epsilon_budget", "inf"),
    ({"accountant": "RDP"}, "accountant", "'RDP'"),
    ({"accountant": "gdp"}, "accountant", "'gdp'"),
    ({"accountant": None}, "accountant", "nothing"),
]


@pytest.mark.parametrize(("overrides", "field", "shown"), BAD_VALUES,
                         ids=[f"{f}={s}" for _, f, s in BAD_VALUES])
def test_bad_value_raises_config_error_naming_field_and_value(
    overrides: dict[str, Any], field: str, shown: str
) -> None:
    kwargs = make_config_kwargs(**overrides)

    with pytest.raises(ConfigError) as caught:
        PrivacyConfig(**kwargs)

    assert len(caught.value.problems) == 1, caught.value.problems
    problem = caught.value.problems[0]
    assert problem.startswith(f"config: {field.replace('_', '-')} must be ")
    assert problem.endswith(f"; got {shown}")


def test_error_grammar_matches_house_style_exactly() -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(noise_multiplier=-1.0)

    assert str(caught.value) == "config: noise-multiplier must be a finite number > 0; got -1.0"


def test_several_problems_are_reported_together() -> None:
    kwargs = make_config_kwargs(noise_multiplier=-1.0, clip_norm=0, delta=2.0,
                                accountant="moments")

    with pytest.raises(ConfigError) as caught:
        PrivacyConfig(**kwargs)

    named = [problem.split(" must ")[0] for problem in caught.value.problems]
    assert named == ["config: noise-multiplier", "config: clip-norm", "config: delta",
                     "config: accountant"]
    assert str(caught.value).startswith("4 config problems:")


def test_neither_noise_multiplier_nor_target_epsilon_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(noise_multiplier=None, target_epsilon=None)

    assert caught.value.problems == (
        "config: exactly one of noise-multiplier or target-epsilon must be set "
        "(a partial DP config must not train without noise); got neither",)


def test_both_noise_multiplier_and_target_epsilon_are_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(noise_multiplier=1.0, target_epsilon=3.0)

    assert caught.value.problems == (
        "config: exactly one of noise-multiplier or target-epsilon must be set; "
        "got both (noise-multiplier=1.0, target-epsilon=3.0)",)


def test_target_epsilon_above_budget_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(noise_multiplier=None, target_epsilon=9.0, epsilon_budget=8.0)

    assert caught.value.problems == (
        "config: target-epsilon must be <= epsilon-budget (8, lifetime at this site); got 9",)


def test_target_epsilon_equal_to_budget_is_allowed() -> None:
    config = make_config(noise_multiplier=None, target_epsilon=8, epsilon_budget=8)

    assert config.target_epsilon == config.epsilon_budget == 8.0


def test_accountants_are_rdp_and_pld() -> None:
    assert ACCOUNTANTS == ("rdp", "pld")


def test_the_two_ways_in_build_what_the_constructor_builds() -> None:
    common = make_config_kwargs()
    del common["noise_multiplier"]

    noise = PrivacyConfig.with_noise(1.1, **common)
    target = PrivacyConfig.with_target_epsilon(3.0, **common)

    assert noise == make_config()
    assert target == make_config(noise_multiplier=None, target_epsilon=3.0)
    assert (noise.calibrate, target.calibrate) == (False, True)


def test_run_config_parses_the_privacy_keys_once_into_one_privacy_config() -> None:
    run = RunConfig.from_mapping({"dp-mode": "target-epsilon", "target-epsilon": 2,
                                  "noise-multiplier": 5.0, "clip-norm": 0.5, "delta": 1e-4,
                                  "epsilon-budget": 6, "accountant": "pld"})

    assert run.privacy == PrivacyConfig.with_target_epsilon(
        2.0, clip_norm=0.5, delta=1e-4, epsilon_budget=6.0, accountant="pld")
    assert run.privacy is run.privacy  # built once, when the config was parsed


def test_run_config_reports_privacy_problems_with_the_others_naming_each_key_once() -> None:
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_mapping({"target-epsilon": 0, "delta": 2, "accountant": "moments",
                                "batch-size": 0})

    assert sorted(caught.value.problems) == sorted([
        "config: batch-size must be >= 1; got 0",
        "config: target-epsilon must be a finite number > 0; got 0.0",
        "config: delta must be a number with 0 < delta < 1; got 2.0",
        "config: accountant must be one of rdp, pld; got 'moments'"])


def test_with_dp_off_there_is_no_privacy_config() -> None:
    assert RunConfig.from_mapping({"dp-mode": "off"}).privacy is None


def _in_fresh_python(code: str) -> object:
    """What ``code`` prints (one JSON value), run in a fresh interpreter."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return json.loads(out)


def test_reading_settings_and_the_cli_do_not_load_dp_accounting() -> None:
    # a launcher (`fedcare superlink`) reads settings only: no dp_accounting/scipy (~60 MB)
    loaded = _in_fresh_python(
        "import json, sys; import fedcare.cli.main, fedcare.common.config; "
        "before = [m for m in ('dp_accounting', 'scipy') if m in sys.modules]; "
        "from fedcare.privacy import compose_epsilon, PrivacyConfig; "
        "print(json.dumps([before, 'dp_accounting' in sys.modules, "
        "compose_epsilon.__module__, PrivacyConfig.__module__]))")

    assert loaded == [[], True, "fedcare.privacy.accounting", "fedcare.privacy.config"]


def test_an_unknown_name_of_the_privacy_package_is_an_attribute_error() -> None:
    import fedcare.privacy

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = fedcare.privacy.nope  # type: ignore[attr-defined]
