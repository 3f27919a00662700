"""The hospital view's data: one site's state dir read into display-ready records.

Everything is recomputed from the site's own files, with the same code the CLI uses:
the lifetime epsilon from the ledger's spends (``fedcare ledger``), the audit-log check
(``fedcare audit-log``), the per-round records of what left the site. Nothing here
holds a patient value: the ledger and the audit log hold spends, hashes and norms.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcare.common.errors import FedcareError
from fedcare.common.files import strict_json_loads
from fedcare.privacy import LEDGER_FILENAME, PrivacyLedger, statement_from_entries
from fedcare.privacy.statement import format_delta, format_epsilon
from fedcare.site.audit import AUDIT_FILENAME, AuditRecord, SiteAuditLog, verify_log

VALIDATION_REPORT_FILENAME = "validation-report.json"  # fedcare.hospital.validation_report
POLICY_BUDGET_KEY = "lifetime-epsilon-budget"  # site-policy.toml (fedcare.site.policy)


@dataclass(frozen=True)
class LedgerRow:
    run: str
    server_round: int
    recorded_at: str
    sampling_rate: float
    noise_multiplier: float
    steps: int


@dataclass(frozen=True)
class SiteView:
    state_dir: Path
    site: str | None
    problems: Sequence[str]
    delta: float
    accountant: str
    epsilon: float | None  # lifetime at this site, all ledger entries
    statement: str
    budget: float | None
    budget_source: str
    ledger: Sequence[LedgerRow]
    audit_ok: bool | None
    audit_reason: str
    sent: Sequence[AuditRecord]
    policy_source: str
    policy: Sequence[tuple[str, str]]
    validation: Mapping[str, Any] | None

    @property
    def epsilon_shown(self) -> str:
        if self.epsilon is None:
            return "no spend recorded"
        return (f"ε={format_epsilon(self.epsilon, 4)} at δ={format_delta(self.delta)} "
                f"(lifetime at this site, {self.accountant.upper()})")

    @property
    def budget_left(self) -> float | None:
        if self.budget is None:
            return None
        return max(0.0, self.budget - (self.epsilon or 0.0))

    @property
    def bar_percent(self) -> float | None:
        if not self.budget:
            return None
        return max(0.0, min(100.0, 100.0 * (self.epsilon or 0.0) / self.budget))


def _first_line(path: Path) -> str:
    with path.open(encoding="utf-8") as handle:
        return handle.readline()


def _site_name(state_dir: Path) -> tuple[str | None, str]:
    """The site name stored in the ledger (else in the audit log's first record), or why
    there is none."""
    sources = ((state_dir / LEDGER_FILENAME, "a readable ledger",
                lambda p: p.read_text(encoding="utf-8")),
               (state_dir / AUDIT_FILENAME, "a readable audit log", _first_line))
    for path, what, read in sources:
        try:
            text = read(path)
            data = strict_json_loads(text) if text.strip() else None
        except FileNotFoundError:
            continue
        except (OSError, ValueError, UnicodeDecodeError) as err:
            return None, f"{path} must be {what}; got {err}"
        if isinstance(data, dict) and isinstance(data.get("site"), str):
            return data["site"], ""
    return None, f"{state_dir}: must hold a privacy ledger or an audit log; got neither"


def _policy(path: Path | None) -> tuple[str, list[tuple[str, str]], dict[str, Any], str]:
    """(source, rows, raw, problem) of a site-policy TOML file, shown as it is written."""
    if path is None:
        return "no policy file given (--policy)", [], {}, ""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        return str(path), [], {}, (f"console: policy must be a readable TOML file; "
                                   f"got {path} ({err})")
    rows = [(key, _toml_value(value)) for key, value in raw.items()]
    return str(path), rows, raw, ""


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_toml_value(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
    return str(value)


def _budget(policy: Mapping[str, Any], flag: float | None) -> tuple[float | None, str]:
    value = policy.get(POLICY_BUDGET_KEY)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value), f"{POLICY_BUDGET_KEY} in the policy file"
    if flag is not None:
        return flag, "--epsilon-budget"
    return None, "no budget given (--policy or --epsilon-budget)"


def _validation(state_dir: Path, folder: Path | None) -> tuple[dict[str, Any] | None, str]:
    path = (folder or state_dir) / VALIDATION_REPORT_FILENAME
    try:
        data = strict_json_loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return None, f"{path} must be complete JSON; got {err}"
    return (data, "") if isinstance(data, dict) else (None, f"{path} must hold a JSON object")


def load_site(state_dir: Path, *, delta: float, accountant: str, policy: Path | None = None,
              epsilon_budget: float | None = None,
              validation_dir: Path | None = None) -> SiteView:
    """Read the site's state dir; every problem is listed in ``problems``, none raised."""
    problems: list[str] = []
    site, problem = _site_name(state_dir)
    if problem:
        problems.append(problem)
    policy_source, policy_rows, policy_raw, problem = _policy(policy)
    if problem:
        problems.append(problem)
    budget, budget_source = _budget(policy_raw, epsilon_budget)
    rows: list[LedgerRow] = []
    epsilon: float | None = None
    statement = ""
    sent: list[AuditRecord] = []
    if site is not None:
        try:
            ledger = PrivacyLedger(state_dir, site=site)
            rows = [LedgerRow(e.run_id, e.server_round, e.recorded_at, e.spend.sampling_rate,
                              e.spend.noise_multiplier, e.spend.steps) for e in ledger.entries]
            if ledger.entries:
                epsilon = ledger.epsilon(delta=delta, accountant=accountant)
                statement = statement_from_entries(ledger.entries, delta=delta,
                                                   accountant=accountant).short()
        except (FedcareError, ValueError, OSError) as err:
            problems.append(f"{state_dir / LEDGER_FILENAME}: {err}")
    verification = verify_log(state_dir)
    if site is not None and verification.ok:
        try:
            # updates sent (the log may also hold other kinds of record)
            sent = [r for r in SiteAuditLog(state_dir, site=site).records()
                    if isinstance(r, AuditRecord)]
        except (FedcareError, ValueError, OSError) as err:
            problems.append(f"{state_dir / AUDIT_FILENAME}: {err}")
    validation, problem = _validation(state_dir, validation_dir)
    if problem:
        problems.append(problem)
    return SiteView(state_dir=state_dir, site=site, problems=problems, delta=delta,
                    accountant=accountant, epsilon=epsilon, statement=statement,
                    budget=budget, budget_source=budget_source, ledger=rows,
                    audit_ok=verification.ok, audit_reason=verification.reason, sent=sent,
                    policy_source=policy_source, policy=policy_rows, validation=validation)


@dataclass(frozen=True)
class DriftView:
    """A new batch against the site's training profile (what ``fedcare drift`` prints)."""

    source: str
    summary: str
    features: Sequence[tuple[str, float, float, bool]]  # feature, PSI, mean shift (SD), flagged
    problem: str = ""


def drift_view(bundle: Any, state_dir: Path, csv: Path) -> DriftView:
    """Check ``csv`` (new patients) against ``training-profile.json`` with the model's
    encoding. Only per-feature figures are shown (PSI, mean shift), no patient value."""
    from fedcare.data.validate import load_features_csv
    from fedcare.hospital.drift import check_drift
    from fedcare.site.site import PROFILE_FILENAME

    try:
        profile = strict_json_loads((state_dir / PROFILE_FILENAME).read_text(encoding="utf-8"))
        batch = load_features_csv(csv, bundle.schema)
        report = check_drift(profile, bundle.encode(batch.features),
                             feature_names=bundle.feature_names)
    except (FedcareError, OSError, ValueError) as err:
        return DriftView(str(csv), "", [], f"drift: {err}")
    rows = [(f.feature, f.psi, f.mean_shift_sd, f.flagged) for f in report.features]
    return DriftView(str(csv), report.summary(), rows)
