"""Real federated runs on Flower's simulation engine (slow: Ray workers import TensorFlow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from fedcare.common.config import RunConfig
from fedcare.data.datasets.heart_disease import data_available
from fedcare.privacy import LedgerEntry, PrivacyLedger, RoundSpend
from fedcare.research.run import PROJECT_ROOT, run_simulation
from fedcare.server.site_dp import site_level_epsilon
from fedcare.site.audit import AuditRecord, SiteAuditLog
from fedcare.site.site_state import check_site_state, record_spend

pytestmark = pytest.mark.slow

DELTA = 1e-3
TARGET_EPSILON = 1.0


def small_run(tmp_path: Path, **changes: object) -> RunConfig:
    return RunConfig(num_rounds=2, output_dir=str(tmp_path / "runs"), run_name="e2e",
                     delta=DELTA, target_epsilon=TARGET_EPSILON, secure_noise=False,
                     hidden_units="16").replace(**changes)


def independent_epsilon(q: float, sigma: float, total_steps: int) -> float:
    """dp-accounting used directly, not through fedcare's accounting module."""
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), total_steps)
    return float(RdpAccountant().compose(event).get_epsilon(DELTA))


def test_two_sites_two_rounds_with_dp_report_model_and_ledgers_agree(tmp_path: Path) -> None:
    # Act
    report = run_simulation(small_run(tmp_path), num_sites=2)

    # Assert: every site trained and evaluated in every round.
    run_dir = tmp_path / "runs" / "e2e"
    assert [sorted(r["train"]) for r in report["rounds"]] == [["site-0", "site-1"]] * 2
    assert [sorted(r["evaluate"]) for r in report["rounds"]] == [["site-0", "site-1"]] * 2
    assert all(not r["failures"] for r in report["rounds"])
    # The printed epsilon is the ledger's, and an independent computation's, and it is the
    # whole-run figure the noise was calibrated for (within the calibration tolerance).
    for site, row in report["sites"].items():
        # The site's hash-chained audit log verifies, and the server holds its hashes.
        audit = SiteAuditLog(run_dir / "sites" / site, site=site)
        assert audit.verify().ok
        assert [r.hash for r in audit.records() if isinstance(r, AuditRecord)] == [
            rnd["train"][site]["audit-hash"] for rnd in report["rounds"]]
        ledger = PrivacyLedger(run_dir / "sites" / site, site=site)
        assert len(ledger.entries) == 2
        spend = ledger.entries[0].spend
        assert row["epsilon"] == pytest.approx(ledger.epsilon(delta=DELTA), rel=1e-12)
        # The run reports PLD (the default); RDP, recomputed independently here, bounds it.
        rdp = ledger.epsilon(delta=DELTA, accountant="rdp")
        assert rdp == pytest.approx(
            independent_epsilon(spend.sampling_rate, spend.noise_multiplier, 2 * spend.steps),
            rel=1e-6)
        assert row["epsilon"] <= rdp
        assert 0.97 * TARGET_EPSILON <= row["epsilon"] <= TARGET_EPSILON
        assert row["delta"] == DELTA
        assert "Poisson" in report["privacy"][site]
    # Accuracy is real: the bundled data is easy, even at eps = 1.
    assert report["final"]["mean-site-accuracy"] > 0.75
    assert zipfile.is_zipfile(run_dir / "model.keras")
    assert len(list((run_dir / "checkpoints").glob("round-*.keras"))) == 2
    assert (run_dir / "global-metrics.png").stat().st_size > 0
    assert (run_dir / "site-epsilon.png").stat().st_size > 0
    assert json.loads((run_dir / "model.json").read_text())["privacy"]["site-0"]["delta"] == DELTA
    # The empirical membership audit ran at every site, next to the claimed epsilon.
    audits = report["membership-audit"]
    assert sorted(audits) == ["site-0", "site-1"]
    for site, audit in audits.items():
        assert audit["claimed_epsilon"] == report["sites"][site]["epsilon"]
        assert audit["violates_claim"] is False
        assert all(0.0 <= attack["auc"] <= 1.0 for attack in audit["attacks"])
        assert audit["epsilon_lower_bound"] <= audit["claimed_epsilon"]
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk["membership-audit"] == audits


def test_site_over_budget_refuses_in_preflight_and_the_run_goes_on(tmp_path: Path) -> None:
    # Arrange: site-0's ledger already holds more than its budget allows.
    # The spend is recorded the way the site's own training path records it (ledger entry,
    # audit spend record, marker), so the state dir passes the site's cross-check.
    state = tmp_path / "state"
    check_site_state(state / "site-0", site="site-0")
    exhausted = PrivacyLedger(state / "site-0", site="site-0")
    big = RoundSpend(sampling_rate=1.0, noise_multiplier=0.5, steps=50)
    earlier = LedgerEntry(run_id="earlier-study", server_round=1,
                          recorded_at="2026-01-01T00:00:00+00:00", spend=big,
                          clip_norm=1.0, num_examples=213)
    exhausted.record(earlier, delta=DELTA, budget=1e9)
    record_spend(state / "site-0", site="site-0", entry=earlier, phase="round", delta=DELTA,
                 accountant="rdp")
    before = (state / "site-0" / "privacy-ledger.json").read_bytes()
    config = small_run(tmp_path, state_dir=str(state), epsilon_budget=2.0, min_sites=1)

    # Act
    report = run_simulation(config, num_sites=2)

    # Assert: site-0 refused the whole run up front, with its figures; it was never asked
    # to train, and site-1 trained every round.
    refusal = report["preflight"]["sites"]["site-0"]
    assert refusal["accepted"] is False
    assert len(refusal["reasons"]) == 1
    assert refusal["reasons"][0].startswith("budget: this run needs eps 1.00 (this run, "
                                            "delta=1e-03, PLD); lifetime at this site would go")
    assert refusal["reasons"][0].endswith("above its budget 2.00 (0.00 left)")
    assert report["preflight"]["accepted"] == ["site-1"]
    for rnd in report["rounds"]:
        assert sorted(rnd["train"]) == ["site-1"] and rnd["failures"] == []
    assert (state / "site-0" / "privacy-ledger.json").read_bytes() == before
    assert report["sites"]["site-1"]["epsilon-run"] <= TARGET_EPSILON
    assert "site-0" not in report["sites"]


def test_flwr_run_dot_runs_the_same_app(tmp_path: Path) -> None:
    # The Flower App path: `flwr run .` with the pyproject federation (2 sites, 1 round).
    # `flwr run` starts `flower-simulation` from PATH (and exits 0 even when it cannot).
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_HOME": str(tmp_path / "flwr"),
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    overrides = (f"num-rounds=1 hidden-units='8' output-dir='{tmp_path / 'runs'}' "
                 "run-name='flwr-run' secure-noise=false")
    flwr = Path(bin_dir) / "flwr"

    done = subprocess.run(
        [str(flwr), "run", ".", "local-simulation", "--run-config", overrides,
         "--federation-config", "options.num-supernodes=2"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "runs" / "flwr-run" / "report.json").read_text())
    assert sorted(report["sites"]) == ["site-0", "site-1"]
    assert all(row["epsilon"] <= report["config"]["target-epsilon"]
               for row in report["sites"].values())


@pytest.mark.parametrize("strategy",
                         ["fedprox", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg", "krum"])
def test_each_selectable_strategy_completes_a_dp_round(tmp_path: Path, strategy: str) -> None:
    config = small_run(tmp_path, strategy=strategy, num_rounds=1, min_sites=3,
                       run_name=f"e2e-{strategy}")

    report = run_simulation(config, num_sites=3)

    assert report["config"]["strategy"] == strategy
    assert sorted(report["rounds"][0]["train"]) == ["site-0", "site-1", "site-2"]
    assert not report["rounds"][0]["failures"]
    assert report["final"]["sites"] == 3
    assert (tmp_path / "runs" / f"e2e-{strategy}" / "model.keras").is_file()


@pytest.mark.skipif(not data_available(), reason="heart-disease data not found beside the repo")
def test_four_hospitals_natural_split_with_a_one_class_test_set(tmp_path: Path) -> None:
    # Split seed 2 leaves Switzerland's 16 test rows all positive: its AUC is undefined, which
    # once crashed the round summary. The run must complete and say "no AUC", not guess one.
    config = small_run(tmp_path, dataset="heart-disease", partitioning="natural",
                       test_fraction=0.34, split_seed=2, num_rounds=1, batch_size=256)

    report = run_simulation(config, num_sites=4)

    assert sorted(report["sites"]) == ["cleveland", "hungary", "switzerland", "va-long-beach"]
    assert report["sites"]["switzerland"]["test-rows"] == 16
    assert report["sites"]["switzerland"]["auc"] is None
    assert report["final"]["sites-with-auc"] == 3
    assert all(row["epsilon"] <= TARGET_EPSILON for row in report["sites"].values())


def test_site_level_dp_run_reports_both_guarantees(tmp_path: Path) -> None:
    config = small_run(tmp_path, site_dp=True, min_sites=3, site_noise_multiplier=0.8,
                       site_clip_norm=0.5, run_name="e2e-site-dp")

    report = run_simulation(config, num_sites=3)

    site_level = report["site-level-privacy"]
    assert site_level["rounds"] == 2
    assert site_level["epsilon"] == pytest.approx(
        site_level_epsilon(rounds=2, noise_multiplier=0.8, delta=config.site_delta))
    assert "one whole site" in site_level["short"]
    assert all(row["epsilon"] <= TARGET_EPSILON for row in report["sites"].values())
    manifest = json.loads((tmp_path / "runs" / "e2e-site-dp" / "model.json").read_text())
    assert manifest["site-level-privacy"]["epsilon"] == site_level["epsilon"]


def test_personalised_run_finetunes_at_every_site_within_the_whole_run_budget(
        tmp_path: Path) -> None:
    from fedcare.site.personal import load_private_part

    report = run_simulation(small_run(tmp_path, personalisation="offset", finetune_epochs=1,
                                      finetune_budget_share=0.2, finetune_learning_rate=4.0,
                                      offset_averaging="tail"), num_sites=2)

    run_dir = tmp_path / "runs" / "e2e"
    section = report["personalisation"]
    assert sorted(section["sites"]) == ["site-0", "site-1"]
    assert all(row["fine-tuned"] and row["personalised"]["accuracy"] is not None
               for row in section["sites"].values())
    assert set(section["mean-over-sites"]) == {"global", "personalised"}
    for site, row in report["sites"].items():
        ledger = PrivacyLedger(run_dir / "sites" / site, site=site)
        assert [e.server_round for e in ledger.entries] == [1, 2, 3]  # 3 = fine-tuning
        # fine-tuning at its own noise multiplier, holding its share of the run's budget
        sigmas = [e.spend.noise_multiplier for e in ledger.entries]
        assert sigmas[0] == sigmas[1] != sigmas[2]
        # The reported epsilon is the whole run's, fine-tuning included, at the target.
        assert row["epsilon"] == pytest.approx(ledger.epsilon(delta=DELTA), rel=1e-9)
        assert row["epsilon"] <= TARGET_EPSILON
        assert row["epsilon"] == pytest.approx(TARGET_EPSILON, rel=1e-3)
        part = load_private_part(run_dir / "sites" / site)
        assert part is not None and (part.phase, part.global_round, part.version) == (
            "finetune", 3, 3)
    # The server holds no private part: neither the report nor the model folder names one.
    assert "offset" not in json.dumps(report["rounds"])
    assert not list((run_dir).glob("private-part*"))
