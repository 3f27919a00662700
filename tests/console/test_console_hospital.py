"""The hospital view's reading of a site state dir: ledger, audit log, policy, budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcare.console.hospital import load_site
from fedcare.privacy.accounting import compose_epsilon
from fedcare.site.audit import AUDIT_FILENAME
from tests.console.factories import SPEND, make_site

DELTA = 1e-3


def test_lifetime_epsilon_is_recomputed_from_every_ledger_entry(tmp_path: Path) -> None:
    make_site(tmp_path, rounds=3)

    view = load_site(tmp_path, delta=DELTA, accountant="rdp")

    assert view.site == "north"
    assert len(view.ledger) == 3
    assert view.epsilon == pytest.approx(compose_epsilon([SPEND] * 3, delta=DELTA,
                                                         accountant="rdp"))
    assert view.epsilon_shown.endswith("(lifetime at this site, RDP)")
    assert view.problems == []


def test_what_left_the_site_lists_each_round_with_its_update_hash(tmp_path: Path) -> None:
    make_site(tmp_path, rounds=2)

    view = load_site(tmp_path, delta=DELTA, accountant="rdp")

    assert view.audit_ok is True
    assert [(r.server_round, len(r.update_sha256)) for r in view.sent] == [(1, 64), (2, 64)]


def test_a_tampered_audit_log_is_reported_not_intact(tmp_path: Path) -> None:
    make_site(tmp_path, rounds=2)
    log = tmp_path / AUDIT_FILENAME
    log.write_text(log.read_text().replace('"server_round":1', '"server_round":7'))

    view = load_site(tmp_path, delta=DELTA, accountant="rdp")

    assert view.audit_ok is False
    assert "line 1" in view.audit_reason
    assert view.sent == []


def test_the_policy_budget_is_used_and_shown_as_written(tmp_path: Path) -> None:
    make_site(tmp_path, rounds=1)
    policy = tmp_path / "site-policy.toml"
    policy.write_text('format = "fedcare-site-policy"\nversion = 1\nrequire-dp = true\n'
                      'lifetime-epsilon-budget = 4.0\nallowed-bundles = ["any"]\n')

    view = load_site(tmp_path, delta=DELTA, accountant="rdp", policy=policy,
                     epsilon_budget=9.0)

    assert view.budget == 4.0
    assert "policy file" in view.budget_source
    assert ("require-dp", "true") in view.policy
    assert ("allowed-bundles", "any") in view.policy
    assert view.budget_left == pytest.approx(4.0 - (view.epsilon or 0.0))


def test_without_a_policy_the_flag_budget_applies(tmp_path: Path) -> None:
    make_site(tmp_path, rounds=1)

    view = load_site(tmp_path, delta=DELTA, accountant="rdp", epsilon_budget=9.0)

    assert (view.budget, view.budget_source) == (9.0, "--epsilon-budget")


def test_a_broken_policy_file_is_a_listed_problem(tmp_path: Path) -> None:
    make_site(tmp_path, rounds=1)
    policy = tmp_path / "site-policy.toml"
    policy.write_text("require-dp = = true\n")

    view = load_site(tmp_path, delta=DELTA, accountant="rdp", policy=policy)

    assert any("policy must be a readable TOML file" in p for p in view.problems)


def test_an_empty_folder_is_explained(tmp_path: Path) -> None:
    view = load_site(tmp_path, delta=DELTA, accountant="rdp")

    assert view.site is None
    assert any("must hold a privacy ledger or an audit log" in p for p in view.problems)
