"""Simulated attacks and failures: hand-computed updates; impossible outside a simulation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcare.common.config import SIMULATION_ENV, RunConfig
from fedcare.common.errors import ConfigError
from fedcare.site.faults import (
    SimulatedSiteFailure,
    attack,
    maybe_attack,
    maybe_fail,
)
from fedcare.site.site import SiteSpec

GLOBAL = [np.array([1.0, 1.0], np.float32)]
SENT = [np.array([1.5, 0.5], np.float32)]  # update (+0.5, -0.5)


def _virtual(partition: int = 0) -> SiteSpec:
    return SiteSpec(name=f"site-{partition}", state_dir=Path("unused"), epsilon_budget=1.0,
                    partition_id=partition, num_partitions=3)


def _deployed() -> SiteSpec:
    return SiteSpec(name="hospital", state_dir=Path("unused"), epsilon_budget=1.0,
                    data_path="h.csv")


@pytest.mark.parametrize("kind, expected", [
    ("sign-flip", [1 - 10 * 0.5, 1 + 10 * 0.5]),  # w_g - 10 (w - w_g)
    ("scale", [1 + 10 * 0.5, 1 - 10 * 0.5]),  # w_g + 10 (w - w_g)
])
def test_attacks_are_the_documented_formulas(kind: str, expected: list[float]) -> None:
    out = attack(kind, SENT, GLOBAL, scale=10.0, seed=0)

    np.testing.assert_allclose(out[0], expected)
    assert out[0].dtype == np.float32


def test_noise_and_nan_attacks() -> None:
    noisy = attack("noise", SENT, GLOBAL, scale=10.0, seed=0)[0]
    assert np.std(noisy - SENT[0]) > 1.0
    assert np.all(np.isnan(attack("nan", SENT, GLOBAL, scale=10.0, seed=0)[0]))


def test_only_the_named_sites_attack_and_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIMULATION_ENV, "1")
    config = RunConfig(malicious_sites="1", fail_sites="2", fail_round=3)

    np.testing.assert_array_equal(maybe_attack(config, _virtual(0), SENT, GLOBAL, 1)[0], SENT[0])
    assert not np.array_equal(maybe_attack(config, _virtual(1), SENT, GLOBAL, 1)[0], SENT[0])
    maybe_fail(config, _virtual(2), 2)  # before fail-round: trains
    with pytest.raises(SimulatedSiteFailure, match="round 3"):
        maybe_fail(config, _virtual(2), 3)


def test_attack_settings_are_refused_at_a_deployed_site(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIMULATION_ENV, "1")
    config = RunConfig(malicious_sites="0")

    with pytest.raises(ConfigError, match="outside fedcare's simulation runner"):
        maybe_attack(config, _deployed(), SENT, GLOBAL, 1)


def test_attack_settings_are_refused_outside_the_simulation_runner(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SIMULATION_ENV, raising=False)

    with pytest.raises(ConfigError, match="outside fedcare's simulation runner"):
        maybe_fail(RunConfig(fail_sites="0"), _virtual(0), 1)
    # Without attack settings nothing is refused anywhere.
    maybe_fail(RunConfig(), _deployed(), 1)


@pytest.mark.parametrize("changes, message", [
    ({"malicious_sites": "0,x"}, "malicious-sites must be comma-separated partition ids"),
    ({"fail_sites": "-1"}, "fail-sites must be comma-separated partition ids"),
    ({"attack": "backdoor"}, "attack must be one of sign-flip, scale, noise, nan"),
    ({"attack_scale": 0.0}, "attack-scale must be > 0"),
    ({"max_update_norm": -1.0}, "max-update-norm must be >= 0"),
    ({"max_examples_per_site": 0}, "max-examples-per-site must be >= 1"),
    ({"round_timeout": 0.0}, "round-timeout must be > 0 seconds"),
    ({"fail_round": 0}, "fail-round must be >= 1"),
])
def test_robustness_settings_are_validated(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes)


def test_site_ids_parse() -> None:
    assert RunConfig(malicious_sites=" 0, 3 ").malicious_partitions == (0, 3)
    assert RunConfig().fail_partitions == ()
