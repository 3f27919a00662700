"""A site's state dir checked as a whole: ledger, audit log and marker must agree.

The privacy ledger (``privacy-ledger.json``) holds every spend; the audit log
(``audit-log.jsonl``) holds, for each spend, a *spend record* carrying the ledger entry's
hash and the running lifetime epsilon, plus one record per round of what was sent; the
marker (``site-state.json``) remembers how far both reached. Deleting, emptying,
truncating or editing one of them, or both, leaves a disagreement that
:func:`check_site_state` reports, and the site refuses to spend. Starting over is
possible only through :func:`reset_site_state` (``fedcare ledger reset``), which
archives the old files and records the reset in the new ledger and chain.

Wiring (the training path, ``fedcare.site.site._train``)::

    history = check_site_state(state_dir, site=name, delta=delta, accountant=accountant)
    ...                                       # before anything is spent (replaces
    ledger.record(entry, ...)                 #   audit.require_intact())
    record_spend(state_dir, site=name, entry=entry, phase=phase, delta=delta,
                 accountant=accountant)       # right after the ledger entry is written
    ... train ..., then audit.append(...) as today (the round record)

What this cannot see: someone with write access who rewrites all three files
consistently (e.g. cuts the last spends off both files and forges the marker). That is
what the server's copy of each site's lifetime epsilon and audit head is for
(``fedcare.server.site_registry``, fed by :meth:`SiteHistory.to_record` and
:func:`audit_extends`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from fedcare.common.errors import ConfigError, LedgerCorrupted, SiteStateInconsistent
from fedcare.common.runid import run_of
from fedcare.common.site_report import (
    AUDIT_EXTENDS_NO,
    AUDIT_EXTENDS_NOT_ASKED,
    AUDIT_EXTENDS_YES,
    SiteReport,
)
from fedcare.privacy.accounting import RoundSpend, compose_epsilon
from fedcare.privacy.config import DEFAULT_ACCOUNTANT
from fedcare.privacy.ledger import (
    LEDGER_FILENAME,
    LedgerEntry,
    PrivacyLedger,
    ResetEntry,
    utc_now_iso,
)
from fedcare.privacy.statement import ADJACENCY, format_delta, format_epsilon
from fedcare.site.audit import (
    AUDIT_FILENAME,
    GENESIS_HASH,
    AnyRecord,
    AuditRecord,
    ResetRecord,
    SiteAuditLog,
    SpendRecord,
    _scan,
)
from fedcare.site.site_marker import (
    EMPTY_HASH,
    MARKER_FILENAME,
    SiteMarker,
    read_marker,
    write_marker,
)

__all__ = [
    "ARCHIVE_DIRNAME",
    "SiteHistory",
    "audit_extends",
    "check_site_state",
    "history_for_server",
    "record_spend",
    "reset_site_state",
    "site_of_state_dir",
]

logger = logging.getLogger(__name__)

ARCHIVE_DIRNAME = "archive"
#: Used to state a recovered or migrated spend's running total only when the caller
#: names no delta/accountant and nothing in the audit log does (the run config's defaults).
FALLBACK_DELTA = 1e-3
FALLBACK_ACCOUNTANT = DEFAULT_ACCOUNTANT
#: Relative tolerance when a recorded lifetime epsilon is compared with the recomputed one
#: (the same code on the same numbers gives the same float; this only absorbs JSON round trips).
EPSILON_REL_TOLERANCE = 1e-9
_MAX_LISTED = 5  # mismatching entries listed one by one before "and N more"


def _short(digest: str) -> str:
    return f"{digest[:12]}..."


def _entry_label(entry: LedgerEntry) -> str:
    return f"run {entry.run_id!r} round {entry.server_round}"


# ------------------------------------------------------------------ history


@dataclass(frozen=True, kw_only=True)
class SiteHistory:
    """A site's privacy history as its state dir shows it (after :func:`check_site_state`).

    ``spends`` are the ledger's spends since the last reset (epsilon is recomputed from
    them, never stored); ``resets`` every budget reset, oldest first.
    """

    site: str
    spends: tuple[RoundSpend, ...]
    runs: int
    entries: int
    audit_length: int
    audit_head: str
    resets: tuple[ResetEntry, ...]

    def lifetime_epsilon(self, *, delta: float, accountant: str = DEFAULT_ACCOUNTANT) -> float:
        """Lifetime epsilon at this site (since its last reset) at ``delta``."""
        return compose_epsilon(self.spends, delta=delta, accountant=accountant)

    def to_record(self, *, delta: float, accountant: str = DEFAULT_ACCOUNTANT,
                  extends: bool | None = None) -> dict[str, str | int | float]:
        """Flat report keys for the server (a Flower ConfigRecord's values;
        :class:`~fedcare.common.site_report.SiteReport`).

        ``extends`` is this site's answer to :func:`audit_extends` for the head the server
        sent (None: the server sent none).
        """
        last = self.resets[-1] if self.resets else None
        return SiteReport(
            site=self.site, lifetime_epsilon=self.lifetime_epsilon(delta=delta,
                                                                   accountant=accountant),
            delta=delta, accountant=accountant, runs=self.runs, entries=self.entries,
            audit_length=self.audit_length, audit_head=self.audit_head,
            resets=len(self.resets), last_reset_at=last.reset_at if last else "",
            last_reset_reason=last.reason if last else "",
            audit_extends=(AUDIT_EXTENDS_NOT_ASKED if extends is None else
                           AUDIT_EXTENDS_YES if extends else AUDIT_EXTENDS_NO),
        ).to_record()

    def describe(self, *, delta: float | None = None, accountant: str = DEFAULT_ACCOUNTANT) -> str:
        """One paragraph: lifetime spend (with its scope, delta and accountant), the audit
        chain, and every reset as ``budget reset on DATE: REASON``."""
        lines = [f"site {self.site}: {self.entries} ledger entries over {self.runs} run(s); "
                 f"audit log {self.audit_length} records (head {_short(self.audit_head)})"]
        if delta is not None:
            eps = self.lifetime_epsilon(delta=delta, accountant=accountant)
            runs = f"{self.runs} run{'' if self.runs == 1 else 's'}"
            lines.append(f"  eps={format_epsilon(eps)} lifetime at this site ({runs}"
                         f"{' since the last reset' if self.resets else ''}) at "
                         f"delta={format_delta(delta)} ({accountant.upper()} accountant, "
                         f"{ADJACENCY} adjacency, sampling as each ledger entry records)")
        lines.extend(f"  {reset.describe()}" for reset in self.resets)
        return "\n".join(lines)


# ------------------------------------------------------------------ checking


@dataclass(frozen=True)
class _State:
    directory: Path
    site: str
    marker: SiteMarker | None
    ledger: PrivacyLedger
    records: tuple[AnyRecord, ...]

    @property
    def spends(self) -> list[SpendRecord]:
        return [r for r in self.records if isinstance(r, SpendRecord)]

    @property
    def head(self) -> str:
        return self.records[-1].hash if self.records else GENESIS_HASH


def _read(directory: Path, site: str) -> _State:
    """Read all three files; every one that cannot be read is reported together."""
    problems: list[str] = []
    marker = ledger = None
    records: tuple[AnyRecord, ...] = ()
    try:
        marker = read_marker(directory)
    except SiteStateInconsistent as err:
        problems.append(str(err))
    try:
        ledger = PrivacyLedger(directory, site=site)
    except LedgerCorrupted as err:
        problems.append(str(err))
    try:
        records = tuple(SiteAuditLog(directory, site=site).records())
    except LedgerCorrupted as err:
        problems.append(str(err))
    if problems or ledger is None:
        raise _refusal(site, directory, problems)
    return _State(directory, site, marker, ledger, records)


def _refusal(site: str, directory: Path, problems: Sequence[str]) -> SiteStateInconsistent:
    listed = "\n  ".join(problems)
    return SiteStateInconsistent(
        f"site {site}: state dir {directory} must hold a ledger, audit log and marker that "
        f"agree; got {len(problems)} problem(s):\n  {listed}\nrefusing to spend privacy. "
        "If the history is lost for good, an operator can start over with `fedcare ledger "
        "reset --state-dir DIR --reason TEXT` (archived and reported to the server).")


def check_site_state(state_dir: str | os.PathLike[str], *, site: str,
                     delta: float | None = None, accountant: str | None = None) -> SiteHistory:
    """Cross-check the site's ledger, audit log and marker; call before anything is spent.

    Accepts: a fresh state dir (creates the marker); a state dir written before the
    marker and spend records existed, when its round records match its ledger (migrates:
    appends a ``migrated`` spend record per ledger entry and writes the marker); the
    one legitimate gap, a ledger exactly one entry ahead at its end (a crash between the
    ledger write and its audit spend record: appends the missing record as
    ``recovered``, with a warning). ``delta``/``accountant`` (the run's) state the
    running total of a recovered or migrated record; default: the last recorded ones.

    Raises:
        SiteStateInconsistent: a file is missing, emptied, truncated, edited or
            unreadable, or disagrees with another or with the marker (every problem
            listed, naming the file; counts and hashes only).
    """
    directory = Path(state_dir)
    state = _read(directory, site)
    if state.marker is None:
        state = _check_without_marker(state, delta=delta, accountant=accountant)
    else:
        state = _check_with_marker(state, state.marker, delta=delta, accountant=accountant)
    return _history(state)


def _history(state: _State) -> SiteHistory:
    entries = state.ledger.entries
    return SiteHistory(site=state.site, spends=tuple(e.spend for e in entries),
                       runs=len({run_of(e.run_id) for e in entries}), entries=len(entries),
                       audit_length=len(state.records), audit_head=state.head,
                       resets=state.ledger.resets)


def _check_without_marker(state: _State, *, delta: float | None,
                          accountant: str | None) -> _State:
    ledger, records = state.ledger, state.records
    if not ledger.entries and not ledger.resets and not records:
        _write_marker(state, created=utc_now_iso())  # a fresh site
        logger.info("site %s: new state dir %s (marker %s written)", state.site,
                    state.directory, MARKER_FILENAME)
        return state
    if state.spends or ledger.resets or any(isinstance(r, ResetRecord) for r in records):
        raise _refusal(state.site, state.directory, [
            f"site state marker {state.directory / MARKER_FILENAME}: must exist (fedcare "
            f"writes it after every spend); got no file while the audit log holds "
            f"{len(state.spends)} spend record(s) and the ledger {len(ledger.entries)} "
            f"entries (deleted?)"])
    problems = _legacy_problems(state)
    if problems:
        raise _refusal(state.site, state.directory, problems)
    return _migrate(state, delta=delta, accountant=accountant)


def _legacy_problems(state: _State) -> list[str]:
    """A state dir from before spend records: each DP round record must name a ledger
    entry (in order) and its lifetime total must be the ledger's total up to that entry."""
    ledger_path = state.directory / LEDGER_FILENAME
    audit_path = state.directory / AUDIT_FILENAME
    entries = state.ledger.entries
    dp_rounds = [r for r in state.records if isinstance(r, AuditRecord)
                 and r.epsilon_total is not None]
    if entries and not dp_rounds:
        what = "no file" if not audit_path.exists() else "no round records with DP"
        return [f"site audit log {audit_path}: must record the rounds behind the ledger's "
                f"{len(entries)} entries; got {what} (deleted or emptied?)"]
    if dp_rounds and not entries:
        what = "no file" if not ledger_path.exists() else "no entries"
        return [f"privacy ledger {ledger_path}: must hold the spends of the {len(dp_rounds)} "
                f"round(s) with DP in the audit log; got {what} (deleted or emptied?)"]
    position = {entry.key: index for index, entry in enumerate(entries)}
    problems: list[str] = []
    last = -1
    for record in dp_rounds:
        where = f"site audit log {audit_path}: line {record.index + 1}"
        index = position.get((record.run_id, record.server_round))
        if index is None:
            problems.append(f"{where} (run {record.run_id!r} round {record.server_round}) "
                            f"must have its spend in privacy ledger {ledger_path}; got no "
                            "such entry (entry removed?)")
            continue
        if index <= last:
            problems.append(f"{where}: ledger entry {index} must come after entry {last}; "
                            "got it earlier (entries moved?)")
        last = max(last, index)
        assert record.delta is not None and record.accountant is not None
        recomputed = compose_epsilon([e.spend for e in entries[:index + 1]],
                                     delta=record.delta, accountant=record.accountant)
        if not math.isclose(recomputed, record.epsilon_total or 0.0,
                            rel_tol=EPSILON_REL_TOLERANCE):
            problems.append(f"{where}: epsilon_total must equal the lifetime eps "
                            f"{recomputed:.6g} recomputed from ledger entries 0..{index} at "
                            f"delta={record.delta:g} ({record.accountant}); got "
                            f"{record.epsilon_total:.6g} (a ledger entry edited?)")
    return problems


def _migrate(state: _State, *, delta: float | None, accountant: str | None) -> _State:
    log = SiteAuditLog(state.directory, site=state.site)
    delta, accountant = _statement_basis(state.records, delta, accountant)
    entries = state.ledger.entries
    with_rounds = {(r.run_id, r.server_round) for r in state.records
                   if isinstance(r, AuditRecord)}
    for index, entry in enumerate(entries):
        log.append_spend(
            run_id=entry.run_id, server_round=entry.server_round,
            phase="round" if entry.key in with_rounds else "unknown", ledger_index=index,
            entry_hash=entry.content_hash(),
            epsilon_total=compose_epsilon([e.spend for e in entries[:index + 1]],
                                          delta=delta, accountant=accountant),
            delta=delta, accountant=accountant, origin="migrated")
    migrated = replace(state, records=tuple(log.records()))
    _write_marker(migrated, created=utc_now_iso())
    if entries:
        logger.warning("site %s: state dir %s predates spend records; its %d ledger entries "
                       "match the audit log's rounds and were added to the audit log as "
                       "migrated spend records; marker %s written", state.site,
                       state.directory, len(entries), MARKER_FILENAME)
    return migrated


def _statement_basis(records: Sequence[AnyRecord], delta: float | None,
                     accountant: str | None) -> tuple[float, str]:
    """The delta/accountant to state a running total at: given, else last recorded."""
    if delta is not None and accountant is not None:
        return delta, accountant
    for record in reversed(records):
        if isinstance(record, SpendRecord) or (isinstance(record, AuditRecord)
                                               and record.delta is not None):
            assert record.delta is not None and record.accountant is not None
            return (delta if delta is not None else record.delta,
                    accountant if accountant is not None else record.accountant)
    return (delta if delta is not None else FALLBACK_DELTA,
            accountant if accountant is not None else FALLBACK_ACCOUNTANT)


def _check_with_marker(state: _State, marker: SiteMarker, *, delta: float | None,
                       accountant: str | None) -> _State:
    problems = _marker_problems(state, marker)
    problems += _reset_problems(state, marker)
    spend_problems, gap = _spend_problems(state, marker)
    problems += spend_problems
    if problems:
        raise _refusal(state.site, state.directory, problems)
    if gap:
        state = _recover(state, delta=delta, accountant=accountant)
    if (marker.entries, marker.audit_length, marker.audit_head) != (
            len(state.ledger.entries), len(state.records), state.head):
        _write_marker(state, created=marker.created)  # catch up after a crash
    return state


def _marker_problems(state: _State, marker: SiteMarker) -> list[str]:
    """The files must reach at least as far as the marker recorded."""
    marker_path = state.directory / MARKER_FILENAME
    ledger_path = state.directory / LEDGER_FILENAME
    audit_path = state.directory / AUDIT_FILENAME
    problems: list[str] = []
    if marker.site != state.site:
        problems.append(f"site state marker {marker_path}: site must be {state.site!r}; "
                        f"got {marker.site!r}")
    records, entries = state.records, state.ledger.entries
    if len(records) < marker.audit_length:
        got = ("no file (deleted?)" if not audit_path.exists() else
               "an empty log (emptied?)" if not records else
               f"{len(records)} record(s) (truncated?)")
        problems.append(f"site audit log {audit_path}: must hold at least the "
                        f"{marker.audit_length} record(s) that {MARKER_FILENAME} recorded "
                        f"(head {_short(marker.audit_head)}); got {got}")
    elif marker.audit_length and records[marker.audit_length - 1].hash != marker.audit_head:
        problems.append(f"site audit log {audit_path}: record {marker.audit_length - 1} must "
                        f"have the hash {_short(marker.audit_head)} that {MARKER_FILENAME} "
                        "recorded; got "
                        f"{_short(records[marker.audit_length - 1].hash)} (rewritten?)")
    else:
        in_prefix = sum(isinstance(r, SpendRecord) for r in records[:marker.audit_length])
        if in_prefix != marker.entries:
            problems.append(f"site state marker {marker_path}: entries must be {in_prefix} "
                            f"(the spend records among the first {marker.audit_length} audit "
                            f"records it names); got {marker.entries} (edited?)")
    if len(entries) < marker.entries:
        got = ("no file (deleted?)" if not state.ledger.exists else
               "no entries (emptied?)" if not entries else
               f"{len(entries)} entries (truncated?)")
        problems.append(f"privacy ledger {ledger_path}: must hold at least the "
                        f"{marker.entries} entries that {MARKER_FILENAME} recorded; got {got}")
    elif marker.entries and entries[marker.entries - 1].content_hash() != marker.last_entry_hash:
        problems.append(f"privacy ledger {ledger_path}: entry {marker.entries - 1} must have "
                        f"the hash {_short(marker.last_entry_hash)} that {MARKER_FILENAME} "
                        "recorded; "
                        f"got {_short(entries[marker.entries - 1].content_hash())} (edited?)")
    elif marker.entries == 0 and marker.last_entry_hash != EMPTY_HASH:
        problems.append(f"site state marker {marker_path}: last_entry_hash must be "
                        f"{_short(EMPTY_HASH)} with 0 entries; got "
                        f"{_short(marker.last_entry_hash)} (edited?)")
    return problems


def _reset_problems(state: _State, marker: SiteMarker) -> list[str]:
    """Resets in the ledger, the first audit record and the marker must agree."""
    ledger_path = state.directory / LEDGER_FILENAME
    audit_path = state.directory / AUDIT_FILENAME
    resets = state.ledger.resets
    problems: list[str] = []
    if len(resets) != marker.resets:
        problems.append(f"privacy ledger {ledger_path}: must list the {marker.resets} budget "
                        f"reset(s) that {MARKER_FILENAME} recorded; got {len(resets)}")
    first = state.records[0] if state.records else None
    if resets and isinstance(first, ResetRecord) and first.reset != resets[-1].to_dict():
        problems.append(f"site audit log {audit_path}: line 1 must record the ledger's last "
                        f"reset ({resets[-1].date}); got a different reset ({first.entry.date})")
    elif resets and state.records and not isinstance(first, ResetRecord):
        problems.append(f"site audit log {audit_path}: line 1 must be the reset record of "
                        f"{resets[-1].date}; got another kind of record")
    elif not resets and isinstance(first, ResetRecord):
        problems.append(f"privacy ledger {ledger_path}: must list the budget reset of "
                        f"{first.entry.date} that the audit log starts with; got none")
    return problems


def _spend_problems(state: _State, marker: SiteMarker) -> tuple[list[str], bool]:
    """Spend records vs ledger entries: count, order, hashes, last lifetime total.

    Returns the problems and whether the one legitimate gap (ledger one entry ahead at
    its end, marker not yet past it) is there to repair.
    """
    ledger_path = state.directory / LEDGER_FILENAME
    audit_path = state.directory / AUDIT_FILENAME
    entries, spends = state.ledger.entries, state.spends
    problems: list[str] = []
    pairs = enumerate(zip(entries, spends, strict=False))  # the shorter one decides
    mismatched = [
        (index, entry, record) for index, (entry, record) in pairs
        if record.entry_hash != entry.content_hash() or record.ledger_index != index
        or record.key != entry.key]
    for index, entry, record in mismatched[:_MAX_LISTED]:
        problems.append(f"privacy ledger {ledger_path}: entry {index} ({_entry_label(entry)}) "
                        f"must match the spend record on line {record.index + 1} of "
                        f"{audit_path.name} (run {record.run_id!r} round {record.server_round},"
                        f" ledger entry {record.ledger_index}, hash {_short(record.entry_hash)}"
                        f"); got hash {_short(entry.content_hash())} (entry edited, removed "
                        "or moved?)")
    if len(mismatched) > _MAX_LISTED:
        problems.append(f"privacy ledger {ledger_path}: and {len(mismatched) - _MAX_LISTED} "
                        "more entries that do not match their spend records")
    if len(spends) > len(entries):
        problems.append(f"privacy ledger {ledger_path}: must hold the {len(spends)} spends "
                        f"recorded in {audit_path}; got {len(entries)} entries (entries "
                        "removed?)")
    gap = len(entries) == len(spends) + 1 and marker.entries <= len(spends)
    if len(entries) > len(spends) and not gap:
        problems.append(f"site audit log {audit_path}: must hold a spend record for each of "
                        f"the ledger's {len(entries)} entries (only the last may be missing, "
                        f"after a crash); got {len(spends)}")
    if not problems and spends:
        last = spends[-1]
        recomputed = compose_epsilon([e.spend for e in entries[:len(spends)]],
                                     delta=last.delta, accountant=last.accountant)
        if not math.isclose(recomputed, last.epsilon_total, rel_tol=EPSILON_REL_TOLERANCE):
            problems.append(f"site audit log {audit_path}: line {last.index + 1}: "
                            f"epsilon_total must equal the lifetime eps {recomputed:.6g} "
                            f"recomputed from the ledger's first {len(spends)} entries at "
                            f"delta={last.delta:g} ({last.accountant}); got "
                            f"{last.epsilon_total:.6g}")
    spent = {r.key for r in spends}
    for line in state.records:
        if isinstance(line, AuditRecord) and line.epsilon_total is not None and (
                (line.run_id, line.server_round) not in spent):
            problems.append(f"site audit log {audit_path}: line {line.index + 1} (run "
                            f"{line.run_id!r} round {line.server_round}) must have a spend "
                            "record; got none")
    return problems, gap and not problems


def _recover(state: _State, *, delta: float | None, accountant: str | None) -> _State:
    entries = state.ledger.entries
    entry = entries[-1]
    delta, accountant = _statement_basis(state.records, delta, accountant)
    log = SiteAuditLog(state.directory, site=state.site)
    log.append_spend(run_id=entry.run_id, server_round=entry.server_round, phase="unknown",
                     ledger_index=len(entries) - 1, entry_hash=entry.content_hash(),
                     epsilon_total=compose_epsilon([e.spend for e in entries], delta=delta,
                                                   accountant=accountant),
                     delta=delta, accountant=accountant, origin="recovered")
    logger.warning("site %s: ledger entry %d (%s) had no spend record in %s (a crash between "
                   "the two writes); added it as recovered: the spend counts", state.site,
                   len(entries) - 1, _entry_label(entry), AUDIT_FILENAME)
    return replace(state, records=tuple(log.records()))


def _write_marker(state: _State, *, created: str) -> None:
    entries = state.ledger.entries
    write_marker(state.directory, SiteMarker(
        site=state.site, created=created, updated=utc_now_iso(), entries=len(entries),
        last_entry_hash=entries[-1].content_hash() if entries else EMPTY_HASH,
        audit_length=len(state.records), audit_head=state.head,
        resets=len(state.ledger.resets)))


# ------------------------------------------------------------------ recording


def record_spend(state_dir: str | os.PathLike[str], *, site: str, entry: LedgerEntry,
                 phase: str, delta: float, accountant: str) -> SpendRecord:
    """Right after ``PrivacyLedger.record(entry, ...)``: write the spend record (entry hash,
    lifetime eps at ``delta``/``accountant``) to the audit log, then the marker.

    ``phase`` is ``"round"`` or ``"finetune"``.

    Raises:
        SiteStateInconsistent: ``entry`` is not the ledger's last entry.
    """
    directory = Path(state_dir)
    ledger = PrivacyLedger(directory, site=site)
    entries = ledger.entries
    if not entries or entries[-1].content_hash() != entry.content_hash():
        raise _refusal(site, directory, [
            f"privacy ledger {ledger.path}: last entry must be the one just recorded "
            f"({_entry_label(entry)}); got "
            f"{_entry_label(entries[-1]) if entries else 'no entries'}"])
    log = SiteAuditLog(directory, site=site)
    record = log.append_spend(
        run_id=entry.run_id, server_round=entry.server_round, phase=phase,
        ledger_index=len(entries) - 1, entry_hash=entry.content_hash(),
        epsilon_total=compose_epsilon(ledger.spends(), delta=delta, accountant=accountant),
        delta=delta, accountant=accountant)
    marker = read_marker(directory)
    write_marker(directory, SiteMarker(
        site=site, created=marker.created if marker else utc_now_iso(), updated=utc_now_iso(),
        entries=len(entries), last_entry_hash=entry.content_hash(),
        audit_length=record.index + 1, audit_head=record.hash, resets=len(ledger.resets)))
    return record


# ------------------------------------------------------------------ the server's question


def audit_extends(state_dir: str | os.PathLike[str], *, site: str, known_length: int,
                  known_head: str) -> bool:
    """Does this site's audit chain hold ``known_head`` at position ``known_length - 1``,
    or does a recorded reset name that chain (its archived head, or a record of the
    archived log, which must itself still end at the recorded archived head)?

    ``known_length == 0`` (the server knows nothing yet) is always extended.

    Raises:
        LedgerCorrupted: the audit log or ledger cannot be read or fails verification.
    """
    if known_length == 0:
        return True
    directory = Path(state_dir)
    records = SiteAuditLog(directory, site=site).records()
    if len(records) >= known_length and records[known_length - 1].hash == known_head:
        return True
    for reset in reversed(PrivacyLedger(directory, site=site).resets):
        if (reset.archived_audit_length, reset.archived_audit_head) == (known_length,
                                                                         known_head):
            return True
        archived = _scan(directory / reset.archive / AUDIT_FILENAME, site=site)
        chain = archived.records
        if (archived.verification.ok and len(chain) == reset.archived_audit_length
                and chain and chain[-1].hash == reset.archived_audit_head
                and len(chain) >= known_length and chain[known_length - 1].hash == known_head):
            return True
    return False


def history_for_server(state_dir: str | os.PathLike[str], *, site: str, delta: float,
                       accountant: str,
                       known: tuple[int, str] | None = None) -> dict[str, str | int | float]:
    """The history part of a pre-flight reply: the state dir checked (refuses like
    :func:`check_site_state`), the lifetime epsilon at the run's ``delta``/``accountant``,
    and the answer to :func:`audit_extends` for the ``(length, head)`` the server last saw
    (``known``; None: the server sent none for this site).

    Raises:
        SiteStateInconsistent: the state dir fails its checks (the reply is a refusal).
    """
    history = check_site_state(state_dir, site=site, delta=delta, accountant=accountant)
    extends = None if known is None else audit_extends(
        state_dir, site=site, known_length=known[0], known_head=known[1])
    return history.to_record(delta=delta, accountant=accountant, extends=extends)


# ------------------------------------------------------------------ reset


def site_of_state_dir(state_dir: str | os.PathLike[str]) -> str | None:
    """The site name the state dir's files carry (marker, else ledger, else audit log)."""
    directory = Path(state_dir)
    try:
        marker = read_marker(directory)
    except SiteStateInconsistent:
        marker = None
    if marker is not None:
        return marker.site
    for path in (directory / LEDGER_FILENAME, directory / AUDIT_FILENAME):
        try:
            first = path.read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError):
            continue
        try:
            data = json.loads("\n".join(first) if path.suffix == ".json" else first[0])
        except (ValueError, IndexError):
            continue
        if isinstance(data, dict) and isinstance(data.get("site"), str):
            return str(data["site"])
    return None


def reset_site_state(state_dir: str | os.PathLike[str], *, reason: str,
                     site: str | None = None, delta: float | None = None,
                     accountant: str | None = None,
                     now: datetime | None = None) -> ResetEntry:
    """Start a site's budget over: the ONLY way to (``fedcare ledger reset``).

    Moves the ledger, audit log and marker into ``archive/<UTC stamp>/``, then writes a
    new ledger whose ``resets`` list ends with this reset (date, reason, the archived
    lifetime eps at ``delta``/``accountant`` (default: the last recorded ones), entry
    count and audit head) and a new audit chain whose first record is the same reset.
    Works on an inconsistent state dir too (that is when it is needed); what the check
    found is logged.

    Raises:
        ConfigError: ``reason`` is empty, the state dir does not exist, holds nothing to
            reset, or belongs to another site.
    """
    directory = Path(state_dir)
    problems: list[str] = []
    if not isinstance(reason, str) or not reason.strip():
        problems.append(f"fedcare ledger reset: --reason must be a non-empty text; got "
                        f"{reason!r}")
    if not directory.is_dir():
        problems.append(f"fedcare ledger reset: --state-dir must be an existing site state "
                        f"directory; got {str(directory)!r} (no such directory)")
        raise ConfigError(problems)
    found = site_of_state_dir(directory)
    if found is None:
        problems.append(f"fedcare ledger reset: --state-dir must hold a site's ledger, audit "
                        f"log or marker; got {str(directory)!r} with none (nothing to reset)")
    elif site is not None and site != found:
        problems.append(f"fedcare ledger reset: --site must be the state dir's site "
                        f"{found!r}; got {site!r}")
    if problems:
        raise ConfigError(problems)
    assert found is not None
    site = found
    try:
        check_site_state(directory, site=site, delta=delta, accountant=accountant)
        logger.info("site %s: state dir consistent before the reset", site)
    except LedgerCorrupted as err:
        logger.warning("site %s: resetting an inconsistent state dir: %s", site, err)
    archived = _archive_facts(directory, site, delta, accountant)
    stamp = (now or datetime.now(UTC)).astimezone(UTC)
    archive = _archive_dir(directory, stamp)
    for name in (LEDGER_FILENAME, AUDIT_FILENAME, MARKER_FILENAME):
        if (directory / name).exists():
            os.replace(directory / name, archive / name)
    reset = replace(archived, reset_at=stamp.isoformat(), reason=reason.strip(),
                    archive=str(archive.relative_to(directory)))
    ledger = PrivacyLedger.start_after_reset(directory, site=site,
                                             resets=(*archived_resets(archive, site), reset))
    first = SiteAuditLog(directory, site=site).start_after_reset(reset)
    marker = _archived_marker(archive)
    write_marker(directory, SiteMarker(
        site=site, created=marker.created if marker else reset.reset_at,
        updated=utc_now_iso(), entries=0, last_entry_hash=EMPTY_HASH, audit_length=1,
        audit_head=first.hash, resets=len(ledger.resets)))
    logger.warning("site %s: %s", site, reset.describe())
    return reset


def _archive_dir(directory: Path, stamp: datetime) -> Path:
    base = directory / ARCHIVE_DIRNAME / stamp.strftime("%Y%m%dT%H%M%SZ")
    candidate, counter = base, 1
    while candidate.exists():
        candidate = base.with_name(f"{base.name}-{counter}")
        counter += 1
    candidate.mkdir(parents=True)
    return candidate


def _archived_marker(archive: Path) -> SiteMarker | None:
    try:
        return read_marker(archive)
    except SiteStateInconsistent:
        return None


def archived_resets(archive: Path, site: str) -> tuple[ResetEntry, ...]:
    """The resets the archived ledger listed (kept in the new one; none if unreadable)."""
    try:
        return PrivacyLedger(archive, site=site).resets
    except LedgerCorrupted:
        return ()


def _archive_facts(directory: Path, site: str, delta: float | None,
                   accountant: str | None) -> ResetEntry:
    """What is being archived: lifetime eps (from the ledger if readable, else the last
    total the audit log recorded), entry count and audit chain head."""
    scan = _scan(directory / AUDIT_FILENAME, site=site)
    records = scan.records
    state_delta, state_accountant = _statement_basis(records, delta, accountant)
    try:
        ledger: PrivacyLedger | None = PrivacyLedger(directory, site=site)
    except LedgerCorrupted:
        ledger = None
    if ledger is not None:
        entries = len(ledger.entries)
        eps = ledger.epsilon(delta=state_delta, accountant=state_accountant)
    else:
        entries = 0
        totals = [r.epsilon_total for r in records
                  if isinstance(r, (SpendRecord, AuditRecord)) and r.epsilon_total is not None]
        eps = max(totals, default=0.0)
    return ResetEntry(reset_at=utc_now_iso(), reason="-", archived_epsilon=eps,
                      delta=state_delta, accountant=state_accountant, archived_entries=entries,
                      archived_audit_length=len(records),
                      archived_audit_head=records[-1].hash if records else GENESIS_HASH,
                      archive="-")
