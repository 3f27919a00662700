"""The fedcare command: exit codes and what a person reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcare.cli import main
from fedcare.cli.args import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from fedcare.data.datasets import breast_cancer
from fedcare.privacy import LedgerEntry, PrivacyLedger, plan_round
from fedcare.site.audit import SiteAuditLog


def test_check_csv_accepts_a_valid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bc.csv"
    breast_cancer.write_csv(path)

    code = main(["check-csv", str(path), "--dataset", "breast-cancer"])

    assert code == EXIT_OK
    assert "OK" in capsys.readouterr().out


def test_check_csv_lists_every_problem_and_fails(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bc.csv"
    breast_cancer.write_csv(path)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[0] = "abc"
    row[header.index("diagnosis_malignant")] = "7"
    path.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")

    code = main(["check-csv", str(path), "--dataset", "breast-cancer"])

    out = capsys.readouterr().out
    assert code == EXIT_FAILED
    assert "row 2" in out and header[0] in out and "diagnosis_malignant" in out


def test_bad_config_is_a_usage_error_naming_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--set", "num-rounds=0"])

    assert code == EXIT_USAGE
    assert "num-rounds must be >= 1; got 0" in capsys.readouterr().err


def test_audit_log_command_reports_the_first_tampered_entry(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = SiteAuditLog(tmp_path, site="h1")
    weights = [np.zeros(3)]
    for rnd in (1, 2, 3):
        log.append(run_id="r", server_round=rnd, server="simulation", sent=[np.ones(3) * rnd],
                   received=weights, epsilon_round=0.1, epsilon_total=0.1 * rnd, delta=1e-3,
                   accountant="rdp", train_rows=10)
    assert main(["audit-log", str(tmp_path)]) == EXIT_OK
    lines = log.path.read_text().splitlines()
    lines[1] = lines[1].replace('"train_rows":10', '"train_rows":11')

    log.path.write_text("\n".join(lines) + "\n")
    code = main(["audit-log", str(tmp_path)])

    out = capsys.readouterr().out
    assert code == EXIT_FAILED
    assert "NOT intact" in out and "line 2" in out


def test_ledger_command_recomputes_epsilon(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    ledger = PrivacyLedger(tmp_path, site="h1")
    spend = plan_round(num_examples=100, batch_size=100, local_epochs=1, noise_multiplier=2.0)
    ledger.record(LedgerEntry.now(run_id="r", server_round=1, spend=spend, clip_norm=1.0,
                                  num_examples=100), delta=1e-3, budget=10.0)

    code = main(["ledger", str(tmp_path), "--site", "h1", "--delta", "1e-3"])

    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert f"epsilon = {ledger.epsilon(delta=1e-3):.4f} at delta = 0.001" in out
    assert "Poisson sampling q=1" in out and "lifetime at this site (1 run)" in out
