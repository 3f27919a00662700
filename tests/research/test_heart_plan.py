"""``fedcare plan``: budget-aware settings from the table tuned on split 43."""

from __future__ import annotations

import re
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
    with_plan_defaults,
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


# --- fedcare simulate's defaults from the plan ---------------------------------------------


def _simulate_config(explicit: dict[str, object]) -> RunConfig:
    settings, _ = with_plan_defaults(explicit)
    return RunConfig.from_mapping(settings)


def test_heart_disease_takes_the_plans_settings_where_the_user_set_none() -> None:
    # eps 0.1 -> the first row: logistic regression, 3 rounds, learning rate 2, batch 256
    config = _simulate_config({"dataset": "heart-disease", "target-epsilon": 0.1})

    assert (config.num_rounds, config.hidden_units, config.learning_rate,
            config.batch_size) == (3, "none", 2.0, 256)
    assert (config.plan, config.target_epsilon, config.test_fraction) == ("auto", 0.1, 0.34)


def test_without_a_target_the_run_configs_default_eps_1_picks_the_row() -> None:
    config = _simulate_config({"dataset": "heart-disease"})  # target-epsilon default 1.0

    assert (config.target_epsilon, config.num_rounds, config.hidden_units) == (1.0, 10, "none")


def test_an_explicit_value_wins_over_the_plan_and_is_named() -> None:
    settings, planned = with_plan_defaults({"dataset": "heart-disease", "target-epsilon": 1.0,
                                            "num-rounds": 7, "hidden-units": "16"})
    config = RunConfig.from_mapping(settings)

    assert (config.num_rounds, config.hidden_units, config.learning_rate) == (7, "16", 2.0)
    assert planned is not None
    assert dict(planned.kept) == {"hidden-units": "16", "num-rounds": 7}
    assert "num-rounds" not in planned.taken and planned.taken["learning-rate"] == 2.0
    assert "yours (explicit values win over the plan's): hidden-units=16, num-rounds=7" \
        in planned.describe()


def test_the_message_names_the_row_and_its_fallback() -> None:
    _, small = with_plan_defaults({"dataset": "heart-disease", "target-epsilon": 0.1})
    _, large = with_plan_defaults({"dataset": "heart-disease", "target-epsilon": 3})

    assert small is not None and large is not None
    text = small.describe()
    assert text.startswith("plan: row 1 of 3 of `fedcare plan --dataset heart-disease` "
                           "(0 < eps < 0.5) for target eps = 0.1 (this run, at each site; at the "
                           "run's delta): logistic regression")
    assert "FALLBACK: logistic regression, 3 rounds, instead of Dense 64-32, 40 rounds" in text
    assert "num-rounds=3" in text and "tuned on split seed 43 only: at eps 0.1: 0.703" in text
    assert large.describe().splitlines()[:2] == [
        "plan: row 3 of 3 of `fedcare plan --dataset heart-disease` (eps >= 2) for target "
        "eps = 3 (this run, at each site; at the run's delta): Dense 64-32",
        "  fallback: none (the full model)"]


@pytest.mark.parametrize("explicit", [
    {"dataset": "heart-disease", "plan": "off"},  # the user said no
    {"dataset": "heart-disease", "dp-mode": "off"},  # no budget to plan for
    {"dataset": "heart-disease", "dp-mode": "noise-multiplier"},
    {},  # breast-cancer: no plan table
])
def test_no_plan_leaves_the_run_configs_defaults(explicit: dict[str, object]) -> None:
    settings, planned = with_plan_defaults(explicit)
    config = RunConfig.from_mapping(settings)

    assert planned is None and config.plan == "off"
    assert (config.num_rounds, config.hidden_units, config.learning_rate) == (10, "64,32", 0.1)


@pytest.mark.parametrize(("explicit", "fragment"), [
    ({"dataset": "heart-disease", "plan": "sometimes"},
     "config: plan must be one of auto, off; got 'sometimes'"),
    ({"plan": "auto"}, "config: plan must be off unless dataset is one of heart-disease and "
                       "dp-mode is target-epsilon (the plan is chosen by the target budget); "
                       "got 'auto'"),
    ({"dataset": "heart-disease", "target-epsilon": -1},
     "target-epsilon must be"),
])
def test_a_bad_plan_request_is_named_by_the_one_parse(explicit: dict[str, object],
                                                      fragment: str) -> None:
    settings, planned = with_plan_defaults(explicit)

    assert planned is None
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        RunConfig.from_mapping(settings)


def test_simulate_prints_the_plan_and_runs_its_settings(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from fedcare.cli import main
    from fedcare.research import run

    seen: list[RunConfig] = []

    def fake_run(config: RunConfig, **_: object) -> dict[str, object]:
        seen.append(config)
        raise ConfigError(["stopped by the test before the engine starts"])

    monkeypatch.setattr(run, "run_simulation", fake_run)

    code = main(["simulate", "--dataset", "heart-disease", "--target-epsilon", "0.1",
                 "--set", "learning-rate=0.5"])

    assert code == 2 and len(seen) == 1
    assert (seen[0].num_rounds, seen[0].learning_rate, seen[0].plan) == (3, 0.5, "auto")
    out = capsys.readouterr().out
    assert "FALLBACK: logistic regression, 3 rounds" in out
    assert "yours (explicit values win over the plan's): learning-rate=0.5" in out
