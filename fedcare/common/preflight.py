"""The pre-flight exchange: before round 1 the server asks every site whether it will take
part in the run, and each site answers accept or refuse, with its reasons and its figures.

Shared format only (the server builds requests and reads answers; a site reads requests
and builds answers). A site checks the run against ITS OWN policy and ledger, using the
run config it will actually train with, not a plan the server claims.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedcare.common.values import is_int, is_real
from fedcare.privacy.statement import format_delta, format_epsilon

#: Flower message type of the pre-flight query ("<category>.<action>").
PREFLIGHT_MESSAGE = "query.preflight"
REQUEST_RECORD = "config"
KNOWN_RECORD = "known-heads"
ANSWER_RECORD = "preflight"
KIND_DEPLOYED = "deployed"
KIND_VIRTUAL = "virtual"
HISTORY_PREFIX = "history."
HEAD_SEPARATOR = ":"


def known_head(length: int, head: str) -> str:
    return f"{int(length)}{HEAD_SEPARATOR}{head}"


def parse_known_head(text: str) -> tuple[int, str] | None:
    length, sep, head = str(text).partition(HEAD_SEPARATOR)
    if not sep or not length.isdigit():
        return None
    return int(length), head


@dataclass(frozen=True, kw_only=True)
class PreflightAnswer:
    """One site's answer. Epsilons are planned figures at ``delta`` with ``accountant``:
    ``epsilon_run`` is this run's (all planned rounds and fine-tuning), the lifetime ones
    are the composition of the site's ledger before and after the planned run."""

    site: str
    accepted: bool
    reasons: tuple[str, ...] = ()
    kind: str = KIND_DEPLOYED
    rows: int = 0
    noise_multiplier: float = math.nan
    epsilon_run: float = math.nan
    epsilon_lifetime_before: float = math.nan
    epsilon_lifetime_after: float = math.nan
    lifetime_budget: float = math.nan
    delta: float = math.nan
    accountant: str = ""
    runs_at_site: int = 0
    policy: str = ""
    bundle_hash: str = ""
    history: Mapping[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "site": self.site, "accepted": self.accepted, "reasons": list(self.reasons),
            "kind": self.kind, "rows": self.rows, "noise-multiplier": self.noise_multiplier,
            "epsilon-run": self.epsilon_run,
            "epsilon-lifetime-before": self.epsilon_lifetime_before,
            "epsilon-lifetime-after": self.epsilon_lifetime_after,
            "lifetime-budget": self.lifetime_budget, "delta": self.delta,
            "accountant": self.accountant, "runs-at-site": self.runs_at_site,
            "policy": self.policy, "bundle-hash": self.bundle_hash}
        out.update({f"{HISTORY_PREFIX}{k}": v for k, v in self.history.items()})
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, fallback_site: str) -> PreflightAnswer:
        """Read a site's answer; anything malformed is read as a refusal saying so (a
        hostile or broken reply can never count as an acceptance)."""
        def real(key: str) -> float:
            value = record.get(key, math.nan)
            return float(value) if is_real(value) else math.nan

        site = record.get("site")
        accepted = record.get("accepted")
        reasons = record.get("reasons", [])
        problems = []
        if not isinstance(site, str) or not site:
            problems.append(f"pre-flight answer: site must be a non-empty string; got {site!r}")
            site = fallback_site
        if not isinstance(accepted, bool):
            problems.append(f"pre-flight answer: accepted must be true or false; "
                            f"got {accepted!r}")
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            problems.append("pre-flight answer: reasons must be a list of strings")
            reasons = []
        runs = record.get("runs-at-site", 0)
        rows = record.get("rows", 0)
        return cls(
            site=site, accepted=bool(accepted is True and not problems),
            reasons=tuple(reasons) + tuple(problems), kind=str(record.get("kind", "")),
            rows=rows if is_int(rows) else 0,
            noise_multiplier=real("noise-multiplier"), epsilon_run=real("epsilon-run"),
            epsilon_lifetime_before=real("epsilon-lifetime-before"),
            epsilon_lifetime_after=real("epsilon-lifetime-after"),
            lifetime_budget=real("lifetime-budget"), delta=real("delta"),
            accountant=str(record.get("accountant", "")),
            runs_at_site=runs if is_int(runs) else 0,
            policy=str(record.get("policy", "")), bundle_hash=str(record.get("bundle-hash", "")),
            history={k[len(HISTORY_PREFIX):]: v for k, v in record.items()
                     if k.startswith(HISTORY_PREFIX)})

    def figures(self) -> str:
        """The planned spend in words, every epsilon with its scope and delta."""
        if math.isnan(self.epsilon_run):
            return "no DP figures (not computed)"
        at = f"delta={format_delta(self.delta)}, {self.accountant.upper()}"
        return (f"needs eps {format_epsilon(self.epsilon_run)} this run ({at}); lifetime at "
                f"this site {format_epsilon(self.epsilon_lifetime_before)} -> "
                f"{format_epsilon(self.epsilon_lifetime_after)} of budget "
                f"{self.lifetime_budget:g} ({self.runs_at_site} earlier run(s))")

    def line(self) -> str:
        verdict = "accepts" if self.accepted else "REFUSES"
        text = f"{self.site}: {verdict}; {self.figures()}"
        return text + ("".join(f"\n    - {r}" for r in self.reasons) if self.reasons else "")
