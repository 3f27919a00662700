"""The consortium view's data: a runs folder read into plain, display-ready records.

A run folder is read as the ServerApp leaves it at any moment: ``report.json`` once the
run has finished, else ``resume.json`` (rewritten atomically after every completed round,
holding the rounds so far), else nothing yet. Every read is strict JSON; a file that
cannot be read is reported on the page, never guessed at.

Privacy figures are per site and carry their scope: ``epsilon-run`` (this run) and
``epsilon-lifetime`` (lifetime at this site, everything its ledger holds) when the
report has them, else the round replies' ``epsilon-run`` and ``epsilon`` (the site's
ledger total, i.e. lifetime at this site). They are never averaged across sites.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcare.common.files import strict_json_loads
from fedcare.privacy.statement import format_delta, format_epsilon

REPORT_FILENAME = "report.json"  # fedcare.server.report writes it
RESUME_FILENAME = "resume.json"  # fedcare.server.resume rewrites it after every round
MANIFEST_FILENAME = "model.json"  # fedcare.server.checkpoint
MODEL_FILENAME = "model.keras"
RUN_FILES = (REPORT_FILENAME, MANIFEST_FILENAME, MODEL_FILENAME)
"""The files the console links to (served as downloads, nothing else in a run folder)."""
SITE_REFUSAL_MIN_CODE = 100
"""Error codes a site replies with on purpose (budget, ledger, replay); Flower's are below."""

RUNNING, FINISHED, STARTING, UNREADABLE = "running", "finished", "starting", "unreadable"
REFUSED = "refused"


@dataclass(frozen=True)
class RunSummary:
    name: str
    status: str
    rounds_done: int
    rounds_planned: int | None
    detail: str = ""


@dataclass(frozen=True)
class Epsilon:
    """One site's epsilon with everything needed to read it."""

    value: float | None
    scope: str  # "this run" | "lifetime at this site"
    delta: float | None
    budget: float | None

    @property
    def shown(self) -> str:
        if self.value is None or not math.isfinite(self.value):
            return "not reported"
        delta = "" if self.delta is None else f" at δ={format_delta(self.delta)}"
        return f"ε={format_epsilon(self.value)}{delta} ({self.scope})"

    @property
    def bar_percent(self) -> float | None:
        """Share of the budget used, 0..100 (None without a value or a budget)."""
        if self.value is None or not self.budget or not math.isfinite(self.value):
            return None
        return max(0.0, min(100.0, 100.0 * self.value / self.budget))


@dataclass(frozen=True)
class SiteRow:
    site: str
    status: str  # replied | dropped | refused | failed | rejected | waiting
    reason: str
    preflight: str
    epsilon_run: Epsilon
    epsilon_lifetime: Epsilon
    accuracy: float | None
    auc: float | None
    train_rows: int | None
    audit_head: str | None


@dataclass(frozen=True)
class RunView:
    name: str
    status: str
    problem: str
    config: Mapping[str, Any]
    rounds: Sequence[Mapping[str, Any]]
    rounds_planned: int | None
    sites: Sequence[SiteRow]
    rejections: Sequence[Mapping[str, Any]]
    privacy_note: str
    files: Sequence[str]

    @property
    def rounds_done(self) -> int:
        return len(self.rounds)

    @property
    def progress_percent(self) -> float:
        if not self.rounds_planned:
            return 100.0 if self.status == FINISHED else 0.0
        return min(100.0, 100.0 * self.rounds_done / self.rounds_planned)

    def series(self, key: str) -> list[tuple[int, float]]:
        """(round, value) of a global figure, finite values only."""
        out = []
        for rnd in self.rounds:
            value = (rnd.get("global") or {}).get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                out.append((int(rnd["round"]), float(value)))
        return out


def _read(path: Path) -> tuple[Any, str]:
    try:
        return strict_json_loads(path.read_text(encoding="utf-8")), ""
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return None, f"{path.name} must be complete JSON; got an unreadable file ({err})"


def is_run_name(name: str) -> bool:
    return bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name


def _state(run_dir: Path) -> tuple[str, dict[str, Any], str]:
    """(status, report-shaped dict, problem) from whatever the run folder holds now."""
    report, problem = _read(run_dir / REPORT_FILENAME)
    if isinstance(report, dict):
        # "refused": too few sites accepted in pre-flight, nothing trained.
        return (REFUSED if report.get("status") == REFUSED else FINISHED), report, ""
    resume, problem2 = _read(run_dir / RESUME_FILENAME)
    problem = problem or problem2
    if isinstance(resume, dict) and isinstance(resume.get("report"), dict):
        partial = dict(resume["report"])
        partial["config"] = resume.get("config") or {}
        return RUNNING, partial, problem
    return (UNREADABLE if problem else STARTING), {}, problem


def _planned(config: Mapping[str, Any]) -> int | None:
    value = config.get("num-rounds")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def list_runs(root: Path) -> list[RunSummary]:
    """Every run folder under ``root``, newest first (by folder modification time)."""
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and is_run_name(p.name)]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    out = []
    for folder in folders:
        status, data, problem = _state(folder)
        rounds = data.get("rounds") or []
        out.append(RunSummary(folder.name, status, len(rounds),
                              _planned(data.get("config") or {}), problem))
    return out


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _last_train(rounds: Sequence[Mapping[str, Any]], site: str) -> Mapping[str, Any]:
    for rnd in reversed(rounds):
        if site in (rnd.get("train") or {}):
            return dict(rnd["train"][site])
    return {}


def _last_eval(rounds: Sequence[Mapping[str, Any]], site: str) -> Mapping[str, Any]:
    for rnd in reversed(rounds):
        if site in (rnd.get("evaluate") or {}):
            return dict(rnd["evaluate"][site])
    return {}


def _latest_status(rounds: Sequence[Mapping[str, Any]], site: str) -> tuple[str, str]:
    """What the site did in the last round that mentions it."""
    for rnd in reversed(rounds):
        for rejection in rnd.get("rejected") or []:
            if rejection.get("site") == site:
                return "rejected", f"round {rnd['round']}: {rejection.get('reason', '')}"
        for failure in rnd.get("failures") or []:
            if failure.get("site") == site:
                code = failure.get("code")
                kind = ("dropped" if code is None else
                        "refused" if isinstance(code, int) and code >= SITE_REFUSAL_MIN_CODE
                        else "failed")
                return kind, (f"round {rnd['round']} {failure.get('phase', '')}: "
                              f"{failure.get('reason', '')}")
        if site in (rnd.get("train") or {}) or site in (rnd.get("evaluate") or {}):
            return "replied", f"round {rnd['round']}"
    return "waiting", ""


def _preflight_entries(report: Mapping[str, Any]) -> dict[str, Any]:
    """Per site, its pre-flight answer: ``{"preflight": {"sites": {site: {...}}}}`` as the
    ServerApp writes it (a bare ``{site: {...}}`` or a list of ``{"site": ...}`` is read too)."""
    section = report.get("preflight")
    if isinstance(section, Mapping):
        sites = section.get("sites")
        if isinstance(sites, Mapping):
            return dict(sites)
        return {k: v for k, v in section.items() if isinstance(v, Mapping | str)}
    if isinstance(section, list):
        return {e["site"]: e for e in section if isinstance(e, Mapping)
                and isinstance(e.get("site"), str)}
    return {}


def _preflight(report: Mapping[str, Any], site: str) -> str:
    """The pre-flight decision for ``site`` and its reasons, when the report has one."""
    entry = _preflight_entries(report).get(site)
    if entry is None:
        return ""
    if not isinstance(entry, Mapping):
        return str(entry)
    decision = entry.get("decision") or entry.get("result")
    if decision is None and "accepted" in entry:
        decision = "accept" if entry["accepted"] else "refuse"
    if decision is None and "accept" in entry:
        decision = "accept" if entry["accept"] else "refuse"
    reasons = entry.get("reasons") or []
    if isinstance(reasons, str):
        reasons = [reasons]
    excluded = entry.get("excluded") or []
    if excluded:
        decision = "excluded by the server"
        reasons = [*reasons, *([excluded] if isinstance(excluded, str) else excluded)]
    text = str(decision or "reported")
    return f"{text}: {'; '.join(str(r) for r in reasons)}" if reasons else text


def _site_names(report: Mapping[str, Any], rounds: Sequence[Mapping[str, Any]]) -> list[str]:
    names = set(report.get("sites") or {})
    for rnd in rounds:
        names.update(rnd.get("train") or {})
        names.update(rnd.get("evaluate") or {})
        names.update(f.get("site") for f in rnd.get("failures") or [] if f.get("site"))
    names.update(_preflight_entries(report))
    return sorted(n for n in names if isinstance(n, str))


def _site_rows(report: Mapping[str, Any], rounds: Sequence[Mapping[str, Any]],
               config: Mapping[str, Any]) -> list[SiteRow]:
    budget = _number(config.get("epsilon-budget"))
    table = report.get("sites") or {}
    rows = []
    for site in _site_names(report, rounds):
        row = table.get(site) or {}
        train = _last_train(rounds, site)
        evaluation = _last_eval(rounds, site)
        delta = _number(row.get("delta", train.get("delta")))
        run_eps = _number(row.get("epsilon-run", train.get("epsilon-run")))
        life_eps = _number(row.get("epsilon-lifetime", train.get("epsilon")))
        status, reason = _latest_status(rounds, site)
        answer = _preflight_entries(report).get(site)
        # The site's own lifetime budget (its policy) when pre-flight reported it.
        own = _number(answer.get("lifetime-budget")) if isinstance(answer, Mapping) else None
        life_budget = own if own is not None and math.isfinite(own) and own > 0 else budget
        if status == "waiting" and isinstance(answer, Mapping) and answer.get("accepted") is False:
            status = "refused"
        rows.append(SiteRow(
            site=site, status=status, reason=reason, preflight=_preflight(report, site),
            epsilon_run=Epsilon(run_eps, "this run", delta, budget),
            epsilon_lifetime=Epsilon(life_eps, "lifetime at this site", delta, life_budget),
            accuracy=_number(row.get("accuracy", evaluation.get("accuracy"))),
            auc=_number(row.get("auc", evaluation.get("auc"))),
            train_rows=(lambda v: int(v) if v is not None else None)(
                _number(row.get("train-rows", train.get("num-examples")))),
            audit_head=train.get("audit-hash") if isinstance(train.get("audit-hash"), str)
            else None))
    return rows


def _privacy_note(config: Mapping[str, Any]) -> str:
    if config.get("dp-mode") == "off":
        return "DP was OFF for this run: no privacy guarantee."
    accountant = str(config.get("accountant", "rdp")).upper()
    sampling = ("Poisson sampling as implemented" if config.get("sampling", "poisson") == "poisson"
                else "shuffled batches, no amplification by sampling claimed")
    return (f"Each ε is one site's own figure ({accountant} accountant, add/remove-one "
            f"adjacency, {sampling}), at the δ shown; never averaged across sites. Bars are "
            f"against the per-site budget ε={config.get('epsilon-budget', 'n/a')}.")


def load_run(root: Path, name: str) -> RunView | None:
    """The run ``name`` under ``root`` as the console shows it; None if there is no such run."""
    if not is_run_name(name):
        return None
    run_dir = root / name
    if not run_dir.is_dir():
        return None
    status, report, problem = _state(run_dir)
    rounds = [r for r in report.get("rounds") or [] if isinstance(r, Mapping) and "round" in r]
    config = report.get("config") or {}
    rejections = [{"round": r["round"], **rej} for r in rounds for rej in r.get("rejected") or []]
    return RunView(name=name, status=status, problem=problem, config=config, rounds=rounds,
                   rounds_planned=_planned(config), sites=_site_rows(report, rounds, config),
                   rejections=rejections, privacy_note=_privacy_note(config) if config else "",
                   files=[f for f in RUN_FILES if (run_dir / f).is_file()])
