"""Issue 16, end to end on Flower's simulation engine (slow): a DP run every site refuses is
reported as refused, leaves no model, and `fedcare audit` of a run uses the run's own
sites and skips a site that did not train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError
from fedcare.research.audit import audit_run
from fedcare.research.run import run_simulation

pytestmark = pytest.mark.slow


def test_a_dp_run_every_site_refuses_is_refused_and_writes_no_model(tmp_path: Path) -> None:
    # The probe: dp-mode=noise-multiplier, noise-multiplier=0.01 (over every site's budget).
    config = RunConfig(num_rounds=1, output_dir=str(tmp_path), run_name="refused",
                       dp_mode="noise-multiplier", noise_multiplier=0.01, hidden_units="8",
                       secure_noise=False)

    report = run_simulation(config, num_sites=2)

    run_dir = tmp_path / "refused"
    # Refused in pre-flight (each site's own budget check) or, failing that, in the rounds.
    assert report["status"] == "refused"
    assert not (run_dir / "model.keras").exists() and not (run_dir / "model.json").exists()
    assert json.loads((run_dir / "report.json").read_text())["status"] == "refused"
    with pytest.raises(ConfigError):
        audit_run(run_dir)


def test_a_trained_run_records_its_sites_for_a_later_audit(tmp_path: Path) -> None:
    config = RunConfig(num_rounds=1, output_dir=str(tmp_path), run_name="ok", dp_mode="off",
                       hidden_units="8")

    report = run_simulation(config, num_sites=3, audit=False)

    assert report["status"] == "completed" and report["simulated-sites"] == 3
    with pytest.raises(ConfigError):
        audit_run(tmp_path / "ok", num_sites=8)
    audited = audit_run(tmp_path / "ok")["membership-audit"]
    assert sorted(audited) == ["site-0", "site-1", "site-2"]
