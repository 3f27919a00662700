"""The operator's per-site summary: rows, eps (this run, lifetime), accuracy, refusals,
dropouts, and the report path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedcare.server.summary import SUMMARY_FILENAME, site_lines, status_text, write_summary


def _report() -> dict[str, Any]:
    return {
        "run": "study-7", "status": "completed", "seconds": 42.4,
        "sites": {"alpha": {"train-rows": 120, "epsilon-run": 0.5, "epsilon-lifetime": 1.25,
                            "delta": 1e-3, "accuracy": 0.75},
                  "beta": {"train-rows": 80, "epsilon-run": 0.5, "epsilon-lifetime": 0.5,
                           "delta": 1e-3, "accuracy": 0.625}},
        "preflight": {"sites": {"alpha": {"accepted": True}, "beta": {"accepted": True},
                                "gamma": {"accepted": False}}},
        "rounds": [
            {"round": 1, "failures": []},
            {"round": 2, "failures": [
                {"site": "beta", "phase": "train", "code": 103, "reason": "policy: ..."},
                {"site": "alpha", "phase": "evaluate", "code": None,
                 "reason": "no reply before the round timeout"},
                {"site": "alpha", "phase": "train", "code": 3, "reason": "Node Unavailable"}]},
        ],
    }


def test_refusals_and_dropouts_are_counted_per_site() -> None:
    lines = {line.site: line for line in site_lines(_report())}

    assert sorted(lines) == ["alpha", "beta", "gamma"]  # gamma refused in pre-flight only
    assert (lines["alpha"].refusals, lines["alpha"].dropouts) == (0, 2)
    assert (lines["beta"].refusals, lines["beta"].dropouts) == (1, 0)
    assert (lines["gamma"].refusals, lines["gamma"].dropouts) == (1, 0)
    assert lines["gamma"].rows is None and lines["gamma"].eps_run is None


def test_summary_names_scopes_and_the_report_path(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    text = write_summary(tmp_path, _report(), report_path).read_text()

    assert text.startswith("run study-7: completed, 2 round(s), 42 s\n")
    alpha = next(line for line in text.splitlines() if line.startswith("alpha"))
    assert alpha.split() == ["alpha", "120", "0.500", "1.250", "1e-03", "0.750", "0", "2"]
    assert "this run at that site" in text and "lifetime at that site" in text
    assert text.rstrip().endswith(f"report: {report_path}")


def test_status_prints_the_same_as_the_summary_file(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    report_path.write_text(json.dumps(_report()))
    write_summary(tmp_path, _report(), report_path)

    assert status_text(tmp_path) == (tmp_path / SUMMARY_FILENAME).read_text()


def test_status_of_a_folder_without_a_report_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"report\.json must exist"):
        status_text(tmp_path)
