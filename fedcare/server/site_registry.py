"""The server's memory of each site's privacy history: ``<output-dir>/site-history.json``.

A site can wipe or rewrite its own state dir; it cannot change what the server saw
before. Each run's pre-flight reply carries the site's reported history
(:class:`~fedcare.common.site_report.SiteReport`: lifetime epsilon at a named delta
and accountant, audit chain length and head, resets, and the site's answer to "does
your chain extend the head I last saw?"). The registry compares it with the last
report it accepted and flags:

* the lifetime epsilon went down (same delta and accountant);
* the audit chain does not extend the last head (the site says so, or its chain got
  shorter, or kept its length under another head);
* the site recorded a budget reset (``fedcare ledger reset``) since the last run;
* the resets count went down.

A flagged site is excluded from the run unless the run config says
``accept-site-resets = true``. Wiring (ServerApp pre-flight)::

    registry = SiteRegistry.in_output_dir(config.output_dir)
    known = registry.known(site)  # (length, head) to send; None for a new site
    ... the site replies with history_for_server(state_dir, ..., known=known) ...
    screening = registry.screen(site, reply, accept_site_resets=config.accept_site_resets)
    if screening.admitted:
        registry.update(site, reply, run=run_name)   # only admitted sites move forward

File format (strict JSON, written atomically)::

    {"format": "fedcare-site-registry", "version": 1,
     "sites": {"<site>": {"lifetime_epsilon": ..., "delta": ..., "accountant": ...,
                          "audit_length": ..., "audit_head": ..., "resets": ...,
                          "last_run": ..., "updated_at": ...}}}
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedcare.common.errors import SiteRegistryCorrupted
from fedcare.common.files import (
    fsync_dir,
    require_exact_keys,
    strict_json_loads,
    write_text_atomic,
)
from fedcare.common.preflight import known_head
from fedcare.common.site_report import AUDIT_EXTENDS_NO, AUDIT_EXTENDS_NOT_ASKED, SiteReport

__all__ = [
    "REGISTRY_FILENAME",
    "KnownSite",
    "SiteRegistry",
    "SiteScreening",
]

logger = logging.getLogger(__name__)

REGISTRY_FILENAME = "site-history.json"
REGISTRY_FORMAT = "fedcare-site-registry"
REGISTRY_VERSION = 1
#: A lifetime epsilon lower than the last one by more than this (relative) is "down".
EPSILON_REL_TOLERANCE = 1e-9


@dataclass(frozen=True, kw_only=True)
class KnownSite:
    """The last accepted report of one site."""

    lifetime_epsilon: float
    delta: float
    accountant: str
    audit_length: int
    audit_head: str
    resets: int
    last_run: str
    updated_at: str


_KNOWN_KEYS = tuple(KnownSite.__dataclass_fields__)


@dataclass(frozen=True)
class SiteScreening:
    """What the registry found for one site: ``flags`` (empty: nothing went back) and
    whether it may take part (``admitted``: no flags, or the run accepts resets)."""

    site: str
    flags: tuple[str, ...]
    admitted: bool


def _report(site: str, reported: SiteReport | Mapping[str, Any]) -> SiteReport:
    if isinstance(reported, SiteReport):
        return reported
    try:
        return SiteReport.from_record(reported)
    except (ValueError, TypeError) as err:
        raise ValueError(f"site {site}: {err}") from None


class SiteRegistry:
    """Each site's last accepted history, persisted in ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._sites: dict[str, KnownSite] = self._load()

    @classmethod
    def in_output_dir(cls, output_dir: str | os.PathLike[str]) -> SiteRegistry:
        """The consortium's registry: ``<output-dir>/site-history.json``."""
        return cls(Path(output_dir) / REGISTRY_FILENAME)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def sites(self) -> dict[str, KnownSite]:
        return dict(self._sites)

    def known_heads(self) -> dict[str, str]:
        """Every known site's last accepted audit ``length:head`` (the pre-flight request)."""
        return {site: known_head(entry.audit_length, entry.audit_head)
                for site, entry in sorted(self._sites.items())}

    def known(self, site: str) -> tuple[int, str] | None:
        """The audit length and head last accepted from ``site`` (to send it), or None."""
        entry = self._sites.get(site)
        return None if entry is None else (entry.audit_length, entry.audit_head)

    def check(self, site: str, reported: SiteReport | Mapping[str, Any]) -> list[str]:
        """Every way ``reported`` goes back on what ``site`` reported before ([] = none).

        Raises:
            ValueError: ``reported`` is not a valid site report (names the key and value).
        """
        report = _report(site, reported)
        flags: list[str] = []
        if report.site != site:
            flags.append(f"site {site}: reported site name must be {site!r}; got "
                         f"{report.site!r}")
        last = self._sites.get(site)
        if last is None:
            return flags
        if (report.delta, report.accountant) == (last.delta, last.accountant):
            if report.lifetime_epsilon < last.lifetime_epsilon * (1 - EPSILON_REL_TOLERANCE):
                flags.append(
                    f"site {site}: lifetime eps at this site must not go down; got "
                    f"{report.lifetime_epsilon:.4g} after {last.lifetime_epsilon:.4g} in run "
                    f"{last.last_run} (delta={report.delta:g}, {report.accountant})")
        else:
            logger.info("site %s: lifetime eps reported at delta=%g (%s), last at delta=%g "
                        "(%s): not compared", site, report.delta, report.accountant,
                        last.delta, last.accountant)
        if report.resets > last.resets:
            flags.append(f"site {site}: budget reset on {report.last_reset_at[:10] or '?'}: "
                         f"{report.last_reset_reason or '(no reason given)'} (resets "
                         f"{last.resets} -> {report.resets} since run {last.last_run})")
        elif report.resets < last.resets:
            flags.append(f"site {site}: resets must not go down; got {report.resets} after "
                         f"{last.resets}")
        flags.extend(self._chain_flags(site, report, last))
        return flags

    def _chain_flags(self, site: str, report: SiteReport, last: KnownSite) -> list[str]:
        where = (f"site {site}: audit chain must extend the head last seen "
                 f"({last.audit_head[:12]}... at length {last.audit_length}, run "
                 f"{last.last_run}); got ")
        if report.audit_extends == AUDIT_EXTENDS_NO:
            return [where + f"a chain of length {report.audit_length} that the site says "
                            "does not contain it"]
        if report.audit_extends == AUDIT_EXTENDS_NOT_ASKED:
            return [where + "no answer from the site"]
        if report.resets == last.resets and report.audit_length < last.audit_length:
            return [where + f"a shorter chain ({report.audit_length} records)"]
        if (report.resets == last.resets and report.audit_length == last.audit_length
                and report.audit_head != last.audit_head):
            return [where + f"another head at the same length ({report.audit_head[:12]}...)"]
        return []

    def screen(self, site: str, reported: SiteReport | Mapping[str, Any], *,
               accept_site_resets: bool) -> SiteScreening:
        """:meth:`check`, then admit the site unless flagged (or the run accepts resets)."""
        flags = tuple(self.check(site, reported))
        admitted = not flags or accept_site_resets
        for flag in flags:
            logger.warning("%s; %s", flag, "admitted (accept-site-resets = true)" if admitted
                           else "EXCLUDED from this run (accept-site-resets = false)")
        return SiteScreening(site, flags, admitted)

    def update(self, site: str, reported: SiteReport | Mapping[str, Any], *,
               run: str) -> None:
        """Remember ``reported`` as ``site``'s last history (written atomically)."""
        report = _report(site, reported)
        self._sites[site] = KnownSite(
            lifetime_epsilon=report.lifetime_epsilon, delta=report.delta,
            accountant=report.accountant, audit_length=report.audit_length,
            audit_head=report.audit_head, resets=report.resets, last_run=run,
            updated_at=datetime.now(UTC).isoformat())
        self._save()

    # --------------------------------------------------------------- internals

    def _corrupt(self, problem: str) -> SiteRegistryCorrupted:
        return SiteRegistryCorrupted(f"site registry {self._path}: {problem}")

    def _load(self) -> dict[str, KnownSite]:
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise self._corrupt(f"cannot be read ({err})") from None
        try:
            data = strict_json_loads(text)
            require_exact_keys(data, ("format", "version", "sites"), "registry")
        except (ValueError, RecursionError) as err:
            raise self._corrupt(f"is not a valid registry: {err}") from None
        if data["format"] != REGISTRY_FORMAT or data["version"] != REGISTRY_VERSION:
            raise self._corrupt(f"format/version must be {REGISTRY_FORMAT!r}/"
                                f"{REGISTRY_VERSION}; got {data['format']!r}/{data['version']!r}")
        if not isinstance(data["sites"], dict):
            raise self._corrupt(f"sites must be an object; got {type(data['sites']).__name__}")
        sites: dict[str, KnownSite] = {}
        for name, entry in data["sites"].items():
            try:
                require_exact_keys(entry, _KNOWN_KEYS, f"site {name!r}")
                SiteReport(site=name, lifetime_epsilon=entry["lifetime_epsilon"],
                           delta=entry["delta"], accountant=entry["accountant"], runs=0,
                           entries=0, audit_length=entry["audit_length"],
                           audit_head=entry["audit_head"], resets=entry["resets"])
                sites[name] = KnownSite(**entry)
            except (ValueError, TypeError) as err:
                raise self._corrupt(f"site {name!r} is invalid: {err}") from None
        return sites

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        document = {"format": REGISTRY_FORMAT, "version": REGISTRY_VERSION,
                    "sites": {name: asdict(known) for name, known in sorted(self._sites.items())}}
        write_text_atomic(self._path, json.dumps(document, indent=2, allow_nan=False) + "\n")
        fsync_dir(self._path.parent)
