"""A site's pre-flight answer: its own policy and ledger decide, before any data is read."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedcare.common.config import RunConfig
from fedcare.common.preflight import PreflightAnswer
from fedcare.flower_compat import BUNDLE_HASH_KEY, BUNDLE_PROBLEMS_KEY
from fedcare.privacy import LedgerEntry, PrivacyLedger, compose_epsilon, plan_round
from fedcare.site.preflight import DP_OFF_NOTE, answer_preflight
from fedcare.site.site import POLICY_PATH_KEY, SiteSpec, resolve_site
from fedcare.site.site_state import check_site_state, record_spend
from tests.data_factories import HEART_HEADER, csv_text, heart_rows, write_text

ROWS = 80  # the site's CSV; 60 train rows after the 25 % test split
TRAIN_ROWS = 60


def _config(**overrides: object) -> RunConfig:
    base = {"dataset": "heart-disease", "num-rounds": 2, "hidden-units": "8",
            "target-epsilon": 1.0, "delta": 1e-3}
    return RunConfig.from_mapping({**base, **overrides})


def _site(tmp_path: Path, config: RunConfig, *, policy: str | None = None,
          csv: Path | None = None, problems: str = "", verdict: bool = True) -> SiteSpec:
    if csv is None:
        csv = write_text(tmp_path, "alpha.csv", csv_text(heart_rows(ROWS, seed=3), HEART_HEADER))
    node: dict[str, object] = {"site-name": "alpha", "data-path": str(csv),
                               "state-dir": str(tmp_path / "state"), "superlink": "test"}
    if policy is not None:
        node[POLICY_PATH_KEY] = str(write_text(tmp_path, "site-policy.toml", policy))
    if verdict:
        node.update({BUNDLE_HASH_KEY: "ab" * 32, BUNDLE_PROBLEMS_KEY: problems})
    return resolve_site(config, node, run_name="r")


def test_a_run_the_policy_allows_is_accepted_with_its_planned_figures(tmp_path: Path) -> None:
    config = _config()
    answer = answer_preflight(config, _site(tmp_path, config), rounds=2, run_id="r")
    assert answer.accepted and answer.reasons == ()
    assert answer.rows == TRAIN_ROWS and answer.kind == "deployed"
    assert answer.epsilon_run == pytest.approx(1.0, abs=1e-3)  # calibrated to the target
    assert answer.epsilon_lifetime_before == 0.0
    assert answer.epsilon_lifetime_after == pytest.approx(answer.epsilon_run)
    assert answer.lifetime_budget == 5.0  # min(policy default 5, run epsilon-budget 5)
    assert answer.policy == "built-in default" and answer.bundle_hash == "ab" * 32
    assert not (tmp_path / "state" / "privacy-ledger.json").exists()  # nothing spent


def test_dp_off_is_refused_before_the_data_file_is_opened(tmp_path: Path) -> None:
    config = _config(**{"dp-mode": "off"})
    site = _site(tmp_path, config, csv=tmp_path / "no-such.csv")
    answer = answer_preflight(config, site, rounds=2, run_id="r")
    assert not answer.accepted
    assert answer.reasons == ('policy: dp-mode must not be off (require-dp = true); got "off"',)
    assert math.isnan(answer.epsilon_run)


def test_dp_off_allowed_by_the_policy_is_accepted_and_says_so(tmp_path: Path) -> None:
    config = _config(**{"dp-mode": "off"})
    answer = answer_preflight(config, _site(tmp_path, config, policy="require-dp = false\n"),
                              rounds=2, run_id="r")
    assert answer.accepted and answer.reasons == (DP_OFF_NOTE,)


def test_bundle_problems_from_the_worker_are_refusals(tmp_path: Path) -> None:
    config = _config()
    site = _site(tmp_path, config, problems="bundle: one\nbundle: two",
                 csv=tmp_path / "no-such.csv")
    answer = answer_preflight(config, site, rounds=2, run_id="r")
    assert not answer.accepted and answer.reasons == ("bundle: one", "bundle: two")


def test_a_message_that_did_not_come_through_the_site_worker_is_refused(tmp_path: Path) -> None:
    config = _config()
    site = _site(tmp_path, config, verdict=False, csv=tmp_path / "no-such.csv")
    answer = answer_preflight(config, site, rounds=2, run_id="r")
    assert not answer.accepted
    assert answer.reasons[0].startswith("bundle: messages must come through fedcare's site "
                                        "worker")


def test_the_whole_run_is_checked_against_what_the_ledger_already_holds(tmp_path: Path) -> None:
    # Arrange: one earlier round (noise 4, q = 32/60: eps 0.566 at delta 1e-3, RDP); the
    # policy allows a lifetime of 1.1; this run is calibrated to eps 1 over its 2 rounds,
    # and composed with the earlier round that is eps 1.175 (computed with dp-accounting).
    config = _config(accountant="rdp")  # the figures below are RDP's
    site = _site(tmp_path, config, policy="lifetime-epsilon-budget = 1.1\n")
    spend = plan_round(num_examples=TRAIN_ROWS, batch_size=32, local_epochs=1,
                       noise_multiplier=4.0)
    entry = LedgerEntry.now(run_id="earlier", server_round=1, spend=spend, clip_norm=1.0,
                            num_examples=TRAIN_ROWS)
    check_site_state(site.state_dir, site="alpha")  # as the site's training path does
    PrivacyLedger(site.state_dir, site="alpha").record(entry, delta=1e-3, budget=10.0,
                                                       accountant="rdp")
    record_spend(site.state_dir, site="alpha", entry=entry, phase="round", delta=1e-3,
                 accountant="rdp")
    # Act
    answer = answer_preflight(config, site, rounds=2, run_id="r")
    # Assert
    assert not answer.accepted
    assert answer.epsilon_lifetime_before == pytest.approx(
        compose_epsilon([spend], delta=1e-3, accountant="rdp"))
    assert answer.runs_at_site == 1
    assert answer.reasons == (
        "budget: this run needs eps 1.00 (this run, delta=1e-03, RDP); lifetime at this site "
        "would go from 0.57 to 1.18, above its budget 1.10 (0.53 left)",)


def test_a_resumed_run_plans_only_the_rounds_left(tmp_path: Path) -> None:
    config = _config(**{"num-rounds": 4})
    site = _site(tmp_path, config)
    whole = answer_preflight(config, site, rounds=4, run_id="r")
    rest = answer_preflight(config, site, rounds=1, run_id="r")
    assert whole.epsilon_run == pytest.approx(1.0, abs=1e-3)
    assert rest.epsilon_run < whole.epsilon_run
    assert answer_preflight(config, site, rounds=99, run_id="r").epsilon_run == \
        pytest.approx(whole.epsilon_run)  # never more than the run's own rounds


def test_virtual_sites_accept_what_the_run_asks(tmp_path: Path) -> None:
    config = _config(**{"dataset": "breast-cancer", "output-dir": str(tmp_path),
                        "dp-mode": "off"})
    site = resolve_site(config, {"partition-id": 0, "num-partitions": 2}, run_name="r")
    answer = answer_preflight(config, site, rounds=2, run_id="r")
    assert answer.accepted and answer.kind == "virtual"
    assert answer.policy == "simulation (permissive)"


def test_the_answer_survives_the_wire_and_a_malformed_one_is_a_refusal() -> None:
    answer = PreflightAnswer(site="alpha", accepted=True, rows=60, epsilon_run=1.0,
                             epsilon_lifetime_before=0.5, epsilon_lifetime_after=1.3,
                             lifetime_budget=4.0, delta=1e-3, accountant="rdp",
                             runs_at_site=2, history={"audit-length": 7})
    assert PreflightAnswer.from_record(answer.to_record(), fallback_site="x") == answer
    assert answer.figures() == ("needs eps 1.00 this run (delta=1e-03, RDP); lifetime at this "
                                "site 0.50 -> 1.30 of budget 4 (2 earlier run(s))")
    forged = PreflightAnswer.from_record({"site": "alpha", "accepted": "yes"}, fallback_site="x")
    assert not forged.accepted
    assert forged.reasons == ("pre-flight answer: accepted must be true or false; got 'yes'",)
    nameless = PreflightAnswer.from_record({"accepted": True}, fallback_site="node 9")
    assert nameless.site == "node 9" and not nameless.accepted


def test_a_tampered_state_dir_is_a_refusal_naming_the_file(tmp_path: Path) -> None:
    config = _config()
    site = _site(tmp_path, config)
    spend = plan_round(num_examples=TRAIN_ROWS, batch_size=32, local_epochs=1,
                       noise_multiplier=4.0)
    entry = LedgerEntry.now(run_id="earlier", server_round=1, spend=spend, clip_norm=1.0,
                            num_examples=TRAIN_ROWS)
    check_site_state(site.state_dir, site="alpha")
    PrivacyLedger(site.state_dir, site="alpha").record(entry, delta=1e-3, budget=10.0,
                                                       accountant="rdp")
    record_spend(site.state_dir, site="alpha", entry=entry, phase="round", delta=1e-3,
                 accountant="rdp")
    (site.state_dir / "privacy-ledger.json").unlink()  # the spend "forgotten"

    answer = answer_preflight(config, site, rounds=2, run_id="r")

    assert not answer.accepted and len(answer.reasons) == 1
    assert "privacy-ledger.json" in answer.reasons[0]
    assert "(deleted?)" in answer.reasons[0]
