"""A run every site refuses in pre-flight is a result, not a crash (issue 14, D5): the
ServerApp ends normally after naming each site's reasons and the report; summary.txt
and ``fedcare status`` say "RUN REFUSED" with the reasons; ``fedcare status`` and
``fedcare submit --stream`` exit with the documented refused status."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, RecordDict

from fedcare.cli.args import EXIT_OK, EXIT_REFUSED
from fedcare.cli.consortium import cmd_status
from fedcare.common.preflight import PreflightAnswer
from fedcare.deploy.submit import relay_stream
from fedcare.server import app as server_app
from fedcare.server.summary import REFUSED_MARKER, SUMMARY_FILENAME, summary_text
from tests.server.test_server_preflight import FakeGrid, _reply

POLICY_REASON = "policy: num-rounds must be <= 2 (max-rounds = 2); got 3"


def _refuse(site: str) -> Any:
    return lambda m: _reply(m, PreflightAnswer(site=site, accepted=False,
                                               reasons=(POLICY_REASON,)).to_record())


def _context(tmp_path: Path) -> Context:
    config = {"output-dir": str(tmp_path), "run-name": "refused", "num-rounds": 3,
              "min-sites": 2, "round-timeout": 5.0, "hidden-units": "4"}
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config)


def test_the_serverapp_ends_a_refused_run_normally_naming_reasons_and_report(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    grid = FakeGrid([5, 6], {5: _refuse("alpha"), 6: _refuse("beta")})

    with caplog.at_level(logging.INFO):
        server_app.main(grid, _context(tmp_path))  # no RunRefused: Flower exits 0

    report = json.loads((tmp_path / "refused" / "report.json").read_text())
    assert report["status"] == "refused"
    assert "min-sites=2 site(s) must accept in pre-flight; got 0" in report["refusal-reason"]
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert "alpha: REFUSES" in logged and "beta: REFUSES" in logged
    assert f"report: {tmp_path / 'refused' / 'report.json'}" in logged
    assert f"{REFUSED_MARKER}: run: at least min-sites=2" in logged


def test_the_summary_of_a_refused_run_gives_every_site_reason() -> None:
    report = {"run": "r", "status": "refused", "config": {"round-timeout": 60.0},
              "refusal-reason": "run: at least min-sites=2 ...; got 0 (none)",
              "preflight": {"sites": {"alpha": {"accepted": False,
                                                "reasons": [POLICY_REASON, "budget: no"]},
                                      "beta": {"accepted": True,
                                               "excluded": ["audit chain reset"]}},
                            "silent-nodes": [9]}}

    lines = summary_text(report, Path("runs/r/report.json")).splitlines()

    start = lines.index(f"{REFUSED_MARKER}: run: at least min-sites=2 ...; got 0 (none)")
    assert lines[start + 1:start + 5] == [
        f"  alpha: {POLICY_REASON}", "  alpha: budget: no",
        "  beta: excluded by the server: audit chain reset",
        "  node 9: no pre-flight answer within round-timeout=60.0 s"]
    assert lines[-1] == "report: runs/r/report.json"


def _run_folder(tmp_path: Path, status: str) -> Path:
    report = {"run": "r", "status": status, "refusal-reason": "no site accepted",
              "preflight": {"sites": {"alpha": {"accepted": False,
                                                "reasons": [POLICY_REASON]}}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    return tmp_path


@pytest.mark.parametrize(("status", "code"), [("refused", EXIT_REFUSED),
                                              ("completed", EXIT_OK)])
def test_fedcare_status_exits_with_the_refused_status_only_for_a_refused_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], status: str, code: int) -> None:
    rc = cmd_status(argparse.Namespace(run_dir=str(_run_folder(tmp_path, status))))

    assert rc == code
    assert (f"  alpha: {POLICY_REASON}" in capsys.readouterr().out) == (status == "refused")


def _printing(lines: list[str], rc: int = 0) -> list[str]:
    script = "".join(f"print({line!r})\n" for line in lines) + f"raise SystemExit({rc})\n"
    return [sys.executable, "-c", script]


def test_submit_relays_the_stream_and_notices_a_refused_run(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    stream = ["INFO : round 1", f"{REFUSED_MARKER}: run: at least min-sites=2 ...",
              f"  alpha: {POLICY_REASON}"]

    with out.open("w") as sink:
        outcome = relay_stream(_printing(stream), env={}, out=sink)

    assert outcome.refused and outcome.returncode == 0
    assert out.read_text().splitlines() == stream


@pytest.mark.parametrize("rc", [0, 1])
def test_submit_passes_on_a_completed_or_failed_run(tmp_path: Path, rc: int) -> None:
    with (tmp_path / "out.txt").open("w") as sink:
        outcome = relay_stream(_printing(["run r: completed"], rc), env={}, out=sink)

    assert (outcome.refused, outcome.returncode) == (False, rc)


def test_summary_file_of_the_serverapp_refusal_is_what_status_prints(tmp_path: Path) -> None:
    grid = FakeGrid([5], {5: _refuse("alpha")})

    server_app.main(grid, _context(tmp_path))

    summary = (tmp_path / "refused" / SUMMARY_FILENAME).read_text()
    assert f"\n  alpha: {POLICY_REASON}\n" in summary
    assert "\n  node " not in summary  # alpha answered: no silent node invented
