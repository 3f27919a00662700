"""What a site tells the server about its own privacy history, and the record keys for it.

Shared by the site (``fedcare.site.site_state.SiteHistory.to_record``) and the server
(``fedcare.server.site_registry``), so neither imports the other. A report is a flat
mapping of ``str``/``int``/``float`` (it fits a Flower ``ConfigRecord``); it holds counts,
hashes and one epsilon with its delta and accountant, never a patient value.

The lifetime epsilon is the site's "lifetime at this site" figure: every spend its ledger
holds since its last budget reset, at ``delta`` with ``accountant`` (add/remove-one
adjacency; the sampling assumption is the one each ledger entry names).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fedcare.common.errors import describe_value
from fedcare.common.files import is_sha256_hex
from fedcare.common.values import is_int as _is_int
from fedcare.common.values import is_real as _is_real

__all__ = [
    "AUDIT_EXTENDS_NO",
    "AUDIT_EXTENDS_NOT_ASKED",
    "AUDIT_EXTENDS_YES",
    "REPORT_KEYS",
    "SiteReport",
]

# The site's answer (an int: ConfigRecords carry no None).
AUDIT_EXTENDS_YES = 1
AUDIT_EXTENDS_NO = 0
AUDIT_EXTENDS_NOT_ASKED = -1


@dataclass(frozen=True, kw_only=True)
class SiteReport:
    """One site's history as reported to the server (validated on construction)."""

    site: str
    lifetime_epsilon: float
    delta: float
    accountant: str
    runs: int
    entries: int
    audit_length: int
    audit_head: str
    resets: int
    last_reset_at: str = ""  # "" when the site was never reset
    last_reset_reason: str = ""
    audit_extends: int = AUDIT_EXTENDS_NOT_ASKED

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("site", "accountant"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{_key(name)} must be a non-empty string; "
                                f"got {describe_value(value)}")
        for name in ("last_reset_at", "last_reset_reason"):
            if not isinstance(getattr(self, name), str):
                problems.append(f"{_key(name)} must be a string; "
                                f"got {describe_value(getattr(self, name))}")
        eps = self.lifetime_epsilon
        if not _is_real(eps) or not math.isfinite(eps) or eps < 0:
            problems.append(f"{_key('lifetime_epsilon')} must be a finite number >= 0; "
                            f"got {describe_value(eps)}")
        if not _is_real(self.delta) or not 0 < self.delta < 1:
            problems.append(f"{_key('delta')} must be a number in (0, 1); "
                            f"got {describe_value(self.delta)}")
        for name in ("runs", "entries", "audit_length", "resets"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                problems.append(f"{_key(name)} must be an integer >= 0; "
                                f"got {describe_value(value)}")
        if not is_sha256_hex(self.audit_head):
            problems.append(f"{_key('audit_head')} must be 64 lowercase hex digits; "
                            f"got {describe_value(self.audit_head)}")
        if self.audit_extends not in (AUDIT_EXTENDS_YES, AUDIT_EXTENDS_NO,
                                      AUDIT_EXTENDS_NOT_ASKED) or isinstance(
                                          self.audit_extends, bool):
            problems.append(f"{_key('audit_extends')} must be 1, 0 or -1; "
                            f"got {describe_value(self.audit_extends)}")
        if problems:
            raise ValueError("site report: " + "; ".join(problems))
        object.__setattr__(self, "lifetime_epsilon", float(eps))
        object.__setattr__(self, "delta", float(self.delta))

    def to_record(self) -> dict[str, str | int | float]:
        """Flat kebab-case keys (see :data:`REPORT_KEYS`); a reply that mixes them with
        other keys namespaces them (the pre-flight answer's ``history.`` prefix)."""
        return {_key(f.name): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SiteReport:
        """Read the report keys of ``record`` (other keys are ignored).

        Raises:
            ValueError: a key is missing or a value is invalid (all problems listed).
        """
        missing = [key for key in REQUIRED_KEYS if key not in record]
        if missing:
            raise ValueError(f"site report: keys {', '.join(missing)} must be present; "
                             "got a record without them")
        return cls(**{f.name: record[_key(f.name)] for f in fields(cls)
                      if _key(f.name) in record})


def _key(name: str) -> str:
    return name.replace("_", "-")


#: Every key a report may carry, and those it must carry.
REPORT_KEYS = tuple(_key(f.name) for f in fields(SiteReport))
REQUIRED_KEYS = tuple(_key(f.name) for f in fields(SiteReport)
                      if f.name not in ("last_reset_at", "last_reset_reason", "audit_extends"))

