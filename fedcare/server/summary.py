"""The operator's view of a finished (or refused) run: one row per site, and where the
report is. Written to ``runs/NAME/summary.txt`` beside ``report.json``, shown at the end
of ``flwr run --stream`` and by ``fedcare status RUN_DIR`` at any time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcare.common.files import strict_json_loads, write_text_atomic

SUMMARY_FILENAME = "summary.txt"
#: Opens the lines that say a run was refused and why, per site (summary.txt, the
#: ServerApp's log, ``fedcare status``); ``fedcare submit --stream`` looks for it.
REFUSED_MARKER = "RUN REFUSED"
#: ``report["status"]`` of a refused run (``fedcare.server.report.STATUS_REFUSED``).
REFUSED = "refused"
#: Error codes at or above this are a site's own refusals (budget, ledger, policy);
#: below it, Flower's (the site crashed, vanished, or its reply was lost).
FIRST_SITE_CODE = 100
COLUMNS = (("site", "<16"), ("rows", ">6"), ("eps run", ">9"), ("eps life", ">9"),
           ("delta", ">8"), ("acc", ">7"), ("refusals", ">9"), ("dropouts", ">9"))


@dataclass(frozen=True)
class SiteLine:
    site: str
    rows: object = None
    eps_run: float | None = None
    eps_life: float | None = None
    delta: float | None = None
    accuracy: float | None = None
    refusals: int = 0
    dropouts: int = 0

    def cells(self) -> tuple[str, ...]:
        def num(value: float | None, digits: int) -> str:
            return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"

        return (self.site, "-" if self.rows is None else str(self.rows),
                num(self.eps_run, 3), num(self.eps_life, 3),
                "no DP" if not self.delta else f"{self.delta:.0e}", num(self.accuracy, 3),
                str(self.refusals), str(self.dropouts))


def site_lines(report: Mapping[str, Any]) -> list[SiteLine]:
    """Every site the run heard of: those that trained, refused or dropped out."""
    refusals: dict[str, int] = {}
    dropouts: dict[str, int] = {}
    for site, answer in report.get("preflight", {}).get("sites", {}).items():
        if not answer.get("accepted", True):
            refusals[site] = refusals.get(site, 0) + 1
    for rnd in report.get("rounds", []):
        for failure in rnd.get("failures", []):
            code = failure.get("code")
            tally = refusals if code is not None and code >= FIRST_SITE_CODE else dropouts
            tally[failure["site"]] = tally.get(failure["site"], 0) + 1
    rows = report.get("sites", {})
    names = sorted(set(rows) | set(refusals) | set(dropouts))
    return [SiteLine(site=name, rows=rows.get(name, {}).get("train-rows"),
                     eps_run=rows.get(name, {}).get("epsilon-run"),
                     eps_life=rows.get(name, {}).get("epsilon-lifetime"),
                     delta=rows.get(name, {}).get("delta"),
                     accuracy=rows.get(name, {}).get("accuracy"),
                     refusals=refusals.get(name, 0), dropouts=dropouts.get(name, 0))
            for name in names]


def silent_node_label(node: int, history: str | None) -> str:
    """``node N``, with the site it answered as before (``history``) when that is known."""
    return f"node {node}" + (f" ({history})" if history else "")


def refusal_lines(report: Mapping[str, Any]) -> list[str]:
    """For a refused run: the verdict, then every reason of every site that refused, was
    excluded or did not answer in pre-flight, or refused or failed in the rounds."""
    if report.get("status") != REFUSED:
        return []
    reasons: dict[str, list[str]] = {}
    preflight = report.get("preflight", {})
    for site, answer in sorted(preflight.get("sites", {}).items()):
        if not answer.get("accepted", True):
            reasons.setdefault(site, []).extend(answer.get("reasons") or ["refused"])
        reasons.setdefault(site, []).extend(f"excluded by the server: {why}"
                                            for why in answer.get("excluded", []))
    timeout = report.get("config", {}).get("round-timeout")
    history = preflight.get("silent-node-history", {})
    for node in preflight.get("silent-nodes", []):
        reasons[silent_node_label(node, history.get(str(node)))] = [
            f"no pre-flight answer within round-timeout={timeout} s"]
    for site, why in (report.get("refusals") or {}).items():
        reasons.setdefault(site, []).extend(why)
    verdict = report.get("refusal-reason") or "no site trained"
    return [f"{REFUSED_MARKER}: {verdict}"] + [f"  {site}: {why}" for site, whys in
                                               reasons.items() for why in whys]


def summary_text(report: Mapping[str, Any], report_path: Path) -> str:
    rounds = report.get("rounds", [])
    seconds = report.get("seconds")
    took = f", {seconds:.0f} s" if isinstance(seconds, int | float) else ""
    head = "".join(f"{name:{fmt}}" for name, fmt in COLUMNS)
    lines = [f"run {report.get('run')}: {report.get('status')}, {len(rounds)} round(s){took}",
             head, "-" * len(head)]
    lines += ["".join(f"{cell:{fmt}}" for cell, (_, fmt) in zip(line.cells(), COLUMNS,
                                                                strict=True))
              for line in site_lines(report)]
    lines += ["eps run = this run at that site; eps life = lifetime at that site (all runs); "
              "both at the delta shown, per site, never averaged (statements: report.json "
              "'privacy')",
              "refusals = the site's own refusals (pre-flight, budget, policy); dropouts = no "
              "usable reply (crashed, disconnected, lost)",
              *refusal_lines(report), f"report: {report_path}"]
    return "\n".join(lines) + "\n"


def write_summary(run_dir: Path, report: Mapping[str, Any], report_path: Path) -> Path:
    path = run_dir / SUMMARY_FILENAME
    write_text_atomic(path, summary_text(report, report_path))
    return path


def status_text(run_dir: Path) -> str:
    """``fedcare status RUN_DIR``: the summary of the run's current report, if any."""
    from fedcare.server.report import REPORT_FILENAME

    path = run_dir / REPORT_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"status: {path} must exist (a run folder written by the "
                                f"ServerApp); got no such file")
    return summary_text(strict_json_loads(path.read_text()), path)
