"""A site's refusals are written to its own hash-chained audit log, with their reasons,
and a log holding refusals still checks out against the ledger and marker."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcare.privacy import LedgerEntry, PrivacyLedger, plan_round
from fedcare.site.audit import RefusalRecord, SiteAuditLog, verify_log
from fedcare.site.site import SiteSpec, record_refusal
from fedcare.site.site_state import check_site_state, record_spend


def _deployed(tmp_path: Path) -> SiteSpec:
    return SiteSpec(name="alpha", state_dir=tmp_path / "alpha", epsilon_budget=4.0,
                    data_path=str(tmp_path / "alpha.csv"))


def test_a_refusal_is_chained_into_the_audit_log_with_its_reasons(tmp_path: Path) -> None:
    site = _deployed(tmp_path)

    record_refusal(site, run_id="run-7", phase="preflight",
                   reasons=["policy: dp-mode must not be off", "budget: no"])

    records = SiteAuditLog(site.state_dir, site="alpha").records()
    assert len(records) == 1 and isinstance(records[0], RefusalRecord)
    assert (records[0].run_id, records[0].phase) == ("run-7", "preflight")
    assert records[0].reasons == ["policy: dp-mode must not be off", "budget: no"]
    assert verify_log(site.state_dir / "audit-log.jsonl").ok


def test_virtual_sites_write_no_refusal_records(tmp_path: Path) -> None:
    site = SiteSpec(name="site-0", state_dir=tmp_path / "site-0", epsilon_budget=4.0,
                    partition_id=0, num_partitions=2)
    record_refusal(site, run_id="r", phase="round", reasons=["budget"])
    assert not (tmp_path / "site-0" / "audit-log.jsonl").exists()


def test_refusals_before_and_between_spends_keep_the_state_consistent(tmp_path: Path) -> None:
    # Arrange: refusals first (a fresh site refusing hostile runs), then a real spend, then
    # another refusal: the cross-check of ledger, audit log and marker still passes.
    site = _deployed(tmp_path)
    record_refusal(site, run_id="hostile", phase="preflight", reasons=["bundle: foreign"])
    check_site_state(site.state_dir, site="alpha")
    spend = plan_round(num_examples=60, batch_size=32, local_epochs=1, noise_multiplier=4.0)
    entry = LedgerEntry.now(run_id="honest", server_round=1, spend=spend, clip_norm=1.0,
                            num_examples=60)
    PrivacyLedger(site.state_dir, site="alpha").record(entry, delta=1e-3, budget=10.0,
                                                       accountant="rdp")
    record_spend(site.state_dir, site="alpha", entry=entry, phase="round", delta=1e-3,
                 accountant="rdp")
    record_refusal(site, run_id="honest-2", phase="round", reasons=["budget: no"])

    # Act
    history = check_site_state(site.state_dir, site="alpha")

    # Assert
    assert history.entries == 1 and history.audit_length == 3
    kinds = [type(r).__name__ for r in SiteAuditLog(site.state_dir, site="alpha").records()]
    assert kinds == ["RefusalRecord", "SpendRecord", "RefusalRecord"]


@pytest.mark.parametrize("reasons", [[], [""], ["x" * 5000]])
def test_reasons_are_trimmed_to_what_a_record_may_hold(tmp_path: Path,
                                                        reasons: list[str]) -> None:
    log = SiteAuditLog(tmp_path / "s", site="alpha")
    record = log.append_refusal(run_id="r", phase="evaluate", reasons=reasons)
    assert len(record.reasons) >= 1 and all(0 < len(r) <= 2000 for r in record.reasons)


def test_an_edited_refusal_breaks_the_chain(tmp_path: Path) -> None:
    site = _deployed(tmp_path)
    record_refusal(site, run_id="r", phase="preflight", reasons=["budget: no"])
    record_refusal(site, run_id="r2", phase="preflight", reasons=["budget: no"])
    path = site.state_dir / "audit-log.jsonl"
    path.write_text(path.read_text().replace('"budget: no"', '"accepted"', 1))
    assert not verify_log(path).ok
