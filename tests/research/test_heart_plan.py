"""``fedcare plan``: budget-aware settings from the table tuned on split 43."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError
from fedcare.research.heart_plan import (
    PLAN_TABLE,
    format_plan,
    majority_prior,
    parse_variant,
    plan_for,
    plan_settings,
)


def test_the_table_covers_every_positive_budget_in_increasing_order() -> None:
    floors = [p.min_epsilon for p in PLAN_TABLE]

    assert floors[0] == 0.0 and floors == sorted(floors) and len(set(floors)) == len(floors)


@pytest.mark.parametrize("eps", [0.01, 0.1, 0.5, 1.0, 3.0, 10.0])
def test_each_plan_is_a_valid_run_config_at_its_budget(eps: float) -> None:
    config = RunConfig.from_mapping(plan_settings(plan_for("heart-disease", eps), eps))

    assert config.target_epsilon == eps
    assert config.accountant == "pld" and config.dataset == "heart-disease"


def test_a_budget_picks_the_last_row_at_or_below_it() -> None:
    for row in PLAN_TABLE:
        assert plan_for("heart-disease", max(row.min_epsilon, 1e-3)) in (row, PLAN_TABLE[0])
    assert plan_for("heart-disease", 1e6) == PLAN_TABLE[-1]


def test_a_small_budget_falls_back_and_says_which() -> None:
    text = format_plan(plan_for("heart-disease", 0.1), 0.1)

    assert "FALLBACK:" in text and "logistic regression" in text
    assert "eps = 0.1 per site, whole run, at delta = 0.001 (PLD accountant" in text
    assert "tuned on split seed 43 only" in text


@pytest.mark.parametrize(("dataset", "eps", "fragment"), [
    ("breast-cancer", 1.0, "plan: dataset must be one of heart-disease"),
    ("heart-disease", 0.0, "plan: target-epsilon must be a finite number > 0; got 0.0"),
    ("heart-disease", float("nan"), "target-epsilon must be a finite number > 0; got nan"),
])
def test_bad_requests_are_refused_naming_the_value(dataset: str, eps: float,
                                                   fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        plan_for(dataset, eps)


def test_a_variant_is_a_name_and_typed_settings() -> None:
    assert parse_variant("lr:hidden-units=none;num-rounds=3;learning-rate=2.0") == (
        "lr", {"hidden-units": "none", "num-rounds": 3, "learning-rate": 2.0})
    with pytest.raises(ConfigError, match="variant items must be key=value; got 'x'"):
        parse_variant("a:x")


def test_the_majority_prior_predicts_each_sites_training_majority() -> None:
    sites = [SimpleNamespace(name="a", y_train=np.array([1, 1, 0]), y_test=np.array([1, 0])),
             SimpleNamespace(name="b", y_train=np.array([0, 0, 1]), y_test=np.array([0, 0, 0, 1]))]

    assert majority_prior(sites) == {"a": 0.5, "b": 0.75}


def test_the_plan_command_prints_the_table_row(capsys: pytest.CaptureFixture[str]) -> None:
    from fedcare.cli import main

    code = main(["plan", "--dataset", "heart-disease", "--target-epsilon", "3"])

    out = capsys.readouterr().out
    assert code == 0
    assert f"rounds:        {PLAN_TABLE[-1].settings['num-rounds']}" in out
