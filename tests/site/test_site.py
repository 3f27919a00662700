"""Site orchestration guards: nothing is overwritten, nothing is spent twice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError, RoundAlreadyRecorded
from fedcare.common.model import build_model, weights_of
from fedcare.privacy import LedgerEntry, PrivacyLedger, plan_round
from fedcare.research.run import run_simulation
from fedcare.site.site import SiteSpec, resolve_site, train_round


def test_simulation_refuses_an_existing_run_folder(tmp_path: Path) -> None:
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    config = RunConfig(output_dir=str(tmp_path / "runs"), run_name="taken")

    with pytest.raises(ConfigError, match="exists already"):
        run_simulation(config, num_sites=2)


def test_a_round_cannot_be_spent_twice(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path, site="h")
    spend = plan_round(num_examples=50, batch_size=50, local_epochs=1, noise_multiplier=3.0)
    entry = LedgerEntry.now(run_id="r", server_round=1, spend=spend, clip_norm=1.0,
                            num_examples=50)
    ledger.record(entry, delta=1e-3, budget=10.0)

    with pytest.raises(RoundAlreadyRecorded, match="round must be recorded once"):
        ledger.record(entry, delta=1e-3, budget=10.0)
    assert len(PrivacyLedger(tmp_path, site="h").entries) == 1


def test_virtual_site_state_lives_under_the_run(tmp_path: Path) -> None:
    config = RunConfig(output_dir=str(tmp_path))

    site = resolve_site(config, {"partition-id": 1, "num-partitions": 3}, run_name="r7")

    assert (site.name, site.state_dir) == ("site-1", tmp_path / "r7" / "sites" / "site-1")


def test_the_consortium_may_lower_but_not_raise_a_sites_policy_budget(tmp_path: Path) -> None:
    policy = tmp_path / "site-policy.toml"
    policy.write_text("lifetime-epsilon-budget = 3.0\n")
    base = {"data-path": "h.csv", "site-name": "h", "state-dir": str(tmp_path),
            "policy-path": str(policy)}

    lower = resolve_site(RunConfig(epsilon_budget=2.0, target_epsilon=1.0), base, run_name="r")
    higher = resolve_site(RunConfig(epsilon_budget=50.0), base, run_name="r")

    assert (lower.epsilon_budget, higher.epsilon_budget) == (2.0, 3.0)


def test_the_old_node_config_budget_is_refused_naming_its_replacement(tmp_path: Path) -> None:
    base = {"data-path": "h.csv", "site-name": "h", "state-dir": str(tmp_path),
            "epsilon-budget": 2.0}
    with pytest.raises(ConfigError, match="replaced by the site policy's "
                                          "lifetime-epsilon-budget"):
        resolve_site(RunConfig(), base, run_name="r")


def test_node_config_without_data_or_partition_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"needs data-path .* or partition-id"):
        resolve_site(RunConfig(), {}, run_name="r")


def _virtual_site(tmp_path: Path) -> tuple[RunConfig, SiteSpec]:
    config = RunConfig(output_dir=str(tmp_path), hidden_units="8", num_rounds=2,
                       secure_noise=False)
    return config, resolve_site(config, {"partition-id": 0, "num-partitions": 2}, run_name="r")


def test_incompatible_global_weights_are_refused_before_any_spend(tmp_path: Path) -> None:
    config, site = _virtual_site(tmp_path)

    with pytest.raises(ValueError, match="weights must have shapes"):
        train_round(config, site, [np.zeros((2, 2))], run_id="r", server_round=1,
                    proximal_mu=0.0)

    assert PrivacyLedger(site.state_dir, site=site.name).entries == ()


def test_each_round_is_recorded_and_reported_as_the_composed_total(tmp_path: Path) -> None:
    config, site = _virtual_site(tmp_path)
    weights = weights_of(build_model(input_dim=30, hidden_units=(8,), seed=0))

    first = train_round(config, site, weights, run_id="r", server_round=1, proximal_mu=0.0)
    second = train_round(config, site, first.weights, run_id="r", server_round=2,
                         proximal_mu=0.0)

    ledger = PrivacyLedger(site.state_dir, site=site.name)
    assert [e.server_round for e in ledger.entries] == [1, 2]
    assert first.statement is not None and second.statement is not None
    assert first.statement.epsilon < second.statement.epsilon
    assert second.statement.epsilon == pytest.approx(ledger.epsilon(delta=config.delta))
    assert second.epsilon_run == second.statement.epsilon
    assert second.statement.epsilon <= config.target_epsilon  # calibrated for 2 rounds


@pytest.mark.parametrize("partitions,has_profile", [(4, True), (100, False)])
def test_a_site_too_small_for_a_drift_profile_still_trains(tmp_path: Path, partitions: int,
                                                            has_profile: bool) -> None:
    from fedcare.site.site import PROFILE_FILENAME, load_site

    config = RunConfig(output_dir=str(tmp_path), dp_mode="off")
    site = resolve_site(config, {"partition-id": 0, "num-partitions": partitions},
                        run_name="r")

    data = load_site(config, site)  # 100 breast-cancer sites: 3-4 training rows each

    assert len(data.y_train) > 0
    assert (site.state_dir / PROFILE_FILENAME).is_file() == has_profile
    assert (site.state_dir / "preprocessor.json").is_file()
