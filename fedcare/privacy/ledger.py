"""A site's privacy ledger: every round's spend, on the site's own disk, forever.

The ledger stores *spends* (``dp_accounting`` event parameters), never a running
epsilon: epsilon is recomputed from all entries every time it is asked for, at
whatever delta and accountant the caller states. It is never reset; a new run
appends to it, so a site's budget covers all runs.

File format (``privacy-ledger.json`` in the site's state directory)::

    {"format": "fedcare-privacy-ledger", "version": 2, "site": "<site>",
     "resets": [{"reset_at": ..., "reason": ..., "archived_epsilon": ..., "delta": ...,
                 "accountant": ..., "archived_entries": ..., "archived_audit_length": ...,
                 "archived_audit_head": ..., "archive": ...}, ...],
     "entries": [{"run_id": ..., "server_round": ..., "recorded_at": ...,
                  "clip_norm": ..., "num_examples": ...,
                  "spend": {"mechanism": "poisson-gaussian", "sampling_rate": ...,
                            "noise_multiplier": ..., "steps": ...}}, ...]}

Version 1 (fedcare before the ledger/audit cross-check) has no ``resets`` key; it is
read as a ledger with no resets, and the next write stores version 2. ``resets`` lists
every time an operator started the budget over (``fedcare ledger reset``), oldest
first; only that command writes it. Each entry's :meth:`LedgerEntry.content_hash` (sha256 of its
canonical JSON) is what the site's audit log records for the spend
(``fedcare.site.site_state`` cross-checks the two).

It is read strictly (plain ``json``; no pickle, no eval): anything unexpected
raises :class:`~fedcare.common.errors.LedgerCorrupted` naming the file, because a
ledger we cannot trust must stop training rather than be guessed at.

Writes are atomic: a temporary file in the same directory is written, flushed and
fsync'ed, then ``os.replace``'d over the ledger, and the directory is fsync'ed. A
crash leaves either the old or the new ledger, plus at worst a stray temporary
file, which loading ignores.

Concurrency: one process per site is expected. Even so, :meth:`PrivacyLedger.record`
takes an exclusive advisory lock (``fcntl.flock`` on ``privacy-ledger.json.lock``,
where available) and re-reads the file before appending, so two ledger objects on
the same directory (or a restarted process) cannot overwrite each other's entries.

Duplicate rounds: recording the same ``(run_id, server_round)`` twice raises
``ValueError``. A retried fit message means training ran (or is about to run)
again with fresh noise, which is a real second spend; silently skipping it would
undercount, and silently adding it would hide a protocol fault. The client should
test :meth:`PrivacyLedger.has_round` and refuse a retried round before training,
and record the round *before* its noisy update leaves the site (recording before
training is the fail-closed choice: a crash then over-counts, never under-counts).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fedcare.common.errors import LedgerCorrupted, PrivacyBudgetExceeded, RoundAlreadyRecorded
from fedcare.common.files import (
    canonical_json,
    file_lock,
    fsync_dir,
    is_sha256_hex,
    require_exact_keys,
    sha256_hex,
    site_state_dir,
    strict_json_loads,
)
from fedcare.common.values import is_int as _is_int
from fedcare.common.values import is_real as _is_real
from fedcare.privacy.accounting import RoundSpend, compose_epsilon
from fedcare.privacy.config import ACCOUNTANTS, DEFAULT_ACCOUNTANT, describe_value
from fedcare.privacy.statement import format_delta, format_epsilon

__all__ = [
    "LEDGER_FILENAME",
    "LEDGER_FORMAT",
    "LEDGER_VERSION",
    "LEDGER_VERSIONS_READ",
    "LedgerEntry",
    "PrivacyLedger",
    "ResetEntry",
    "utc_now_iso",
]

logger = logging.getLogger(__name__)

LEDGER_FILENAME = "privacy-ledger.json"
LEDGER_FORMAT = "fedcare-privacy-ledger"
LEDGER_VERSION = 2
LEDGER_VERSIONS_READ = (1, 2)  # 1: before resets were recorded (no "resets" key)
_TEMP_PREFIX = f".{LEDGER_FILENAME}."
_TEMP_SUFFIX = ".tmp"
_ENTRY_KEYS = ("run_id", "server_round", "recorded_at", "clip_norm", "num_examples", "spend")
_TOP_KEYS_V1 = ("format", "version", "site", "entries")
_TOP_KEYS = ("format", "version", "site", "resets", "entries")
_RESET_KEYS = ("reset_at", "reason", "archived_epsilon", "delta", "accountant",
               "archived_entries", "archived_audit_length", "archived_audit_head", "archive")


def utc_now_iso() -> str:
    """The current time as UTC ISO 8601, e.g. ``2026-11-24T09:30:00.123456+00:00``."""
    return datetime.now(UTC).isoformat()


def _check_utc_iso(value: object, name: str = "recorded_at") -> str | None:
    """None if ``value`` is an ISO 8601 timestamp with a UTC offset, else the problem."""
    if not isinstance(value, str):
        return f"{name} must be a UTC ISO 8601 string; got {describe_value(value)}"
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return f"{name} must be a UTC ISO 8601 string; got {value!r}"
    if stamp.utcoffset() != timedelta(0):
        return f"{name} must be in UTC (offset +00:00); got {value!r}"
    return None


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    """One round's spend at one site.

    ``server_round`` is Flower's round number (>= 1; round 0 is the initial
    evaluation, which trains nothing). ``clip_norm`` and ``num_examples`` are kept
    for the statement and for audit; epsilon depends only on ``spend``.
    """

    run_id: str
    server_round: int
    recorded_at: str
    spend: RoundSpend
    clip_norm: float
    num_examples: int

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not isinstance(self.run_id, str) or not self.run_id.strip():
            problems.append(f"run_id must be a non-empty string; got {describe_value(self.run_id)}")
        if not _is_int(self.server_round) or self.server_round < 1:
            problems.append(f"server_round must be an integer >= 1; "
                            f"got {describe_value(self.server_round)}")
        stamp_problem = _check_utc_iso(self.recorded_at)
        if stamp_problem:
            problems.append(stamp_problem)
        if not isinstance(self.spend, RoundSpend):
            problems.append(f"spend must be a RoundSpend; got {type(self.spend).__name__}")
        clip = self.clip_norm
        if not _is_real(clip) or not math.isfinite(clip) or clip <= 0:
            problems.append(f"clip_norm must be a finite number > 0; got {describe_value(clip)}")
        else:
            object.__setattr__(self, "clip_norm", float(clip))
        if not _is_int(self.num_examples) or self.num_examples < 1:
            problems.append(f"num_examples must be an integer >= 1; "
                            f"got {describe_value(self.num_examples)}")
        if problems:
            raise ValueError("LedgerEntry: " + "; ".join(problems))

    @classmethod
    def now(
        cls, *, run_id: str, server_round: int, spend: RoundSpend, clip_norm: float,
        num_examples: int,
    ) -> LedgerEntry:
        """An entry stamped with the current UTC time."""
        return cls(run_id=run_id, server_round=server_round, recorded_at=utc_now_iso(),
                   spend=spend, clip_norm=clip_norm, num_examples=num_examples)

    @property
    def key(self) -> tuple[str, int]:
        return (self.run_id, self.server_round)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "server_round": self.server_round,
            "recorded_at": self.recorded_at,
            "clip_norm": self.clip_norm,
            "num_examples": self.num_examples,
            "spend": self.spend.to_dict(),
        }

    def content_hash(self) -> str:
        """sha256 hex of the entry's canonical JSON (what the audit log records for it)."""
        return sha256_hex(canonical_json(self.to_dict()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LedgerEntry:
        """Strict inverse of :meth:`to_dict`; ``ValueError`` on anything unexpected."""
        require_exact_keys(data, _ENTRY_KEYS, "entry")
        return cls(
            run_id=data["run_id"],
            server_round=data["server_round"],
            recorded_at=data["recorded_at"],
            spend=RoundSpend.from_dict(data["spend"]),
            clip_norm=data["clip_norm"],
            num_examples=data["num_examples"],
        )


@dataclass(frozen=True, kw_only=True)
class ResetEntry:
    """An operator started the site's budget over (``fedcare ledger reset``).

    ``archived_epsilon`` is the lifetime epsilon of the archived ledger at ``delta``
    (``accountant``); ``archive`` is the folder, relative to the state dir, holding
    the archived ledger, audit log and marker; ``archived_audit_head`` and
    ``archived_audit_length`` identify the archived audit chain (so a server that knew
    its head can see that the new chain continues from a recorded reset).
    """

    reset_at: str
    reason: str
    archived_epsilon: float
    delta: float
    accountant: str
    archived_entries: int
    archived_audit_length: int
    archived_audit_head: str
    archive: str

    def __post_init__(self) -> None:
        problems: list[str] = []
        stamp_problem = _check_utc_iso(self.reset_at, "reset_at")
        if stamp_problem:
            problems.append(stamp_problem)
        for name in ("reason", "archive"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{name} must be a non-empty string; got {describe_value(value)}")
        eps = self.archived_epsilon
        if not _is_real(eps) or not math.isfinite(eps) or eps < 0:
            problems.append(f"archived_epsilon must be a finite number >= 0; "
                            f"got {describe_value(eps)}")
        else:
            object.__setattr__(self, "archived_epsilon", float(eps))
        delta = self.delta
        if not _is_real(delta) or not 0 < delta < 1:
            problems.append(f"delta must be a number in (0, 1); got {describe_value(delta)}")
        else:
            object.__setattr__(self, "delta", float(delta))
        if self.accountant not in ACCOUNTANTS:
            problems.append(f"accountant must be one of {', '.join(ACCOUNTANTS)}; "
                            f"got {describe_value(self.accountant)}")
        for name in ("archived_entries", "archived_audit_length"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                problems.append(f"{name} must be an integer >= 0; got {describe_value(value)}")
        head = self.archived_audit_head
        if not is_sha256_hex(head):
            problems.append("archived_audit_head must be 64 lowercase hex digits (sha256); "
                            f"got {describe_value(head)}")
        if problems:
            raise ValueError("ResetEntry: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _RESET_KEYS}

    def content_hash(self) -> str:
        """sha256 hex of the reset's canonical JSON."""
        return sha256_hex(canonical_json(self.to_dict()))

    @property
    def date(self) -> str:
        """The UTC date of the reset, e.g. ``2026-11-30``."""
        return self.reset_at[:10]

    def describe(self) -> str:
        """``budget reset on DATE: REASON`` plus what was archived."""
        return (f"budget reset on {self.date}: {self.reason} (archived: eps="
                f"{format_epsilon(self.archived_epsilon)} lifetime at this site at delta="
                f"{format_delta(self.delta)} ({self.accountant.upper()}) over "
                f"{self.archived_entries} ledger entries; in {self.archive})")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResetEntry:
        """Strict inverse of :meth:`to_dict`; ``ValueError`` on anything unexpected."""
        require_exact_keys(data, _RESET_KEYS, "reset")
        return cls(**{key: data[key] for key in _RESET_KEYS})


class PrivacyLedger:
    """The append-only record of one site's privacy spend.

    Args:
        state_dir: the site's state directory (created if missing).
        site: the site's name; must match the name stored in an existing ledger.

    Raises:
        LedgerCorrupted: an existing ledger file cannot be read or fails validation.
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, site: str) -> None:
        self._dir = site_state_dir(state_dir, site=site, where="PrivacyLedger")
        self._site = site
        self._path = self._dir / LEDGER_FILENAME
        stray = sorted(p.name for p in self._dir.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"))
        if stray:
            logger.warning("privacy ledger %s: ignoring leftover temporary file(s) %s "
                           "(an interrupted write; the ledger itself is intact)",
                           self._path, ", ".join(stray))
        self._entries: tuple[LedgerEntry, ...] = ()
        self._resets: tuple[ResetEntry, ...] = ()
        self._entries, self._resets = self._load()

    # ----------------------------------------------------------------- reading

    @property
    def path(self) -> Path:
        return self._path

    @property
    def site(self) -> str:
        return self._site

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return self._entries

    @property
    def resets(self) -> tuple[ResetEntry, ...]:
        """Every budget reset of this site, oldest first (empty: never reset)."""
        return self._resets

    @property
    def exists(self) -> bool:
        """True if the ledger file is on disk (a fresh site has none)."""
        return self._path.exists()

    def spends(self) -> tuple[RoundSpend, ...]:
        return tuple(entry.spend for entry in self._entries)

    def has_round(self, run_id: str, server_round: int) -> bool:
        """True if ``(run_id, server_round)`` is already recorded."""
        return any(entry.key == (run_id, server_round) for entry in self._entries)

    def reload(self) -> None:
        """Re-read the ledger file (e.g. after another process wrote it)."""
        self._entries, self._resets = self._load()

    def epsilon(self, *, delta: float, accountant: str = DEFAULT_ACCOUNTANT) -> float:
        """Total epsilon at ``delta`` of every entry, recomputed from the spends."""
        return compose_epsilon(self.spends(), delta=delta, accountant=accountant)

    def check(
        self, spend: RoundSpend, *, delta: float, budget: float,
        accountant: str = DEFAULT_ACCOUNTANT,
    ) -> float:
        """Epsilon after ``spend`` would be added; refuse if it passes ``budget``.

        Writes nothing.

        Raises:
            PrivacyBudgetExceeded: the would-be total exceeds ``budget``.
        """
        return self._check(self._entries, spend, delta=delta, budget=budget,
                           accountant=accountant)

    # ----------------------------------------------------------------- writing

    def record(
        self, entry: LedgerEntry, *, delta: float, budget: float,
        accountant: str = DEFAULT_ACCOUNTANT,
    ) -> float:
        """Check the budget, then append ``entry`` and persist atomically.

        Returns:
            The site's new total epsilon at ``delta``.

        Raises:
            ValueError: ``(run_id, server_round)`` is already recorded.
            PrivacyBudgetExceeded: the entry would take the site past ``budget``;
                nothing is written.
        """
        if not isinstance(entry, LedgerEntry):
            raise TypeError(f"PrivacyLedger.record: entry must be a LedgerEntry; "
                            f"got {type(entry).__name__}")
        with self._locked():
            current, self._resets = self._load()  # another writer may have appended meanwhile
            self._entries = current
            if any(old.key == entry.key for old in current):
                raise RoundAlreadyRecorded(
                    f"privacy ledger {self._path}: round must be recorded once; got "
                    f"run_id={entry.run_id!r} server_round={entry.server_round} again "
                    "(a retried round trains with fresh noise and must not run twice)")
            total = self._check(current, entry.spend, delta=delta, budget=budget,
                                accountant=accountant)
            updated = (*current, entry)
            self._write(updated)
            self._entries = updated
        logger.info("privacy ledger %s: recorded run %s round %d; site %s total eps=%.4g "
                    "at delta=%g (%s, budget %g)", self._path, entry.run_id,
                    entry.server_round, self._site, total, delta, accountant, budget)
        return total

    # --------------------------------------------------------------- internals

    def _check(
        self, entries: Sequence[LedgerEntry], spend: RoundSpend, *, delta: float,
        budget: float, accountant: str,
    ) -> float:
        if not isinstance(spend, RoundSpend):
            raise TypeError(f"PrivacyLedger.check: spend must be a RoundSpend; "
                            f"got {type(spend).__name__}")
        if not _is_real(budget) or not math.isfinite(budget) or budget <= 0:
            raise ValueError(f"PrivacyLedger.check: budget must be a finite number > 0; "
                             f"got {describe_value(budget)}")
        spends = [e.spend for e in entries]
        after = compose_epsilon([*spends, spend], delta=delta, accountant=accountant)
        if after > budget:
            spent = compose_epsilon(spends, delta=delta, accountant=accountant)
            raise PrivacyBudgetExceeded(
                f"site {self._site}: privacy budget must not be exceeded; got eps={after:.4g} "
                f"after the planned round (spent so far eps={spent:.4g} over "
                f"{len(spends)} round(s), budget eps={budget:g}, delta={delta:g}, "
                f"{accountant}); refusing to train")
        return after

    def _corrupt(self, problem: str) -> LedgerCorrupted:
        return LedgerCorrupted(f"privacy ledger {self._path}: {problem}")

    @classmethod
    def start_after_reset(
        cls, state_dir: str | os.PathLike[str], *, site: str, resets: Sequence[ResetEntry]
    ) -> PrivacyLedger:
        """Write a new, empty ledger that records ``resets`` (the last one just made).

        Only ``fedcare ledger reset`` calls this, after moving the old ledger away.

        Raises:
            FileExistsError: a ledger is still there (it must be archived first).
        """
        ledger = cls(state_dir, site=site)
        if ledger.exists:
            raise FileExistsError(f"privacy ledger {ledger.path}: must be archived before a "
                                  "reset writes a new one; got an existing file")
        if not resets or not all(isinstance(r, ResetEntry) for r in resets):
            raise ValueError("PrivacyLedger.start_after_reset: resets must be a non-empty "
                             "sequence of ResetEntry")
        with ledger._locked():
            ledger._resets = tuple(resets)
            ledger._write(())
        return ledger

    def _load(self) -> tuple[tuple[LedgerEntry, ...], tuple[ResetEntry, ...]]:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return (), ()
        except OSError as err:
            raise self._corrupt(f"cannot be read ({err.strerror or err})") from None
        try:
            data = strict_json_loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
            raise self._corrupt(f"is not valid JSON (truncated or damaged?): {err}") from None
        if not isinstance(data, dict):
            raise self._corrupt(f"top level must be a JSON object; got {type(data).__name__}")
        version = data.get("version")
        if not _is_int(version) or version not in LEDGER_VERSIONS_READ:
            raise self._corrupt(f"version must be one of "
                                f"{', '.join(map(str, LEDGER_VERSIONS_READ))}; "
                                f"got {describe_value(version)}")
        top_keys = _TOP_KEYS_V1 if version == 1 else _TOP_KEYS
        unknown = sorted(str(key) for key in data if key not in top_keys)
        missing = [key for key in top_keys if key not in data]
        if unknown or missing:
            raise self._corrupt(f"keys must be {', '.join(top_keys)}; got "
                                + "; ".join(filter(None, [
                                    f"unknown {unknown}" if unknown else "",
                                    f"missing {missing}" if missing else ""])))
        if data["format"] != LEDGER_FORMAT:
            raise self._corrupt(f"format must be {LEDGER_FORMAT!r}; "
                                f"got {describe_value(data['format'])}")
        if data["site"] != self._site:
            raise self._corrupt(f"site must be {self._site!r} (this site); "
                                f"got {describe_value(data['site'])}")
        if not isinstance(data["entries"], list):
            raise self._corrupt("entries must be a list; "
                                f"got {type(data['entries']).__name__}")
        entries: list[LedgerEntry] = []
        seen: set[tuple[str, int]] = set()
        for index, item in enumerate(data["entries"]):
            try:
                entry = LedgerEntry.from_dict(item)
            except (ValueError, TypeError) as err:
                raise self._corrupt(f"entry {index} is invalid: {err}") from None
            if entry.key in seen:
                raise self._corrupt(f"entry {index} must be the only one for run_id="
                                    f"{entry.run_id!r} server_round={entry.server_round}; "
                                    "got a duplicate")
            seen.add(entry.key)
            entries.append(entry)
        resets: list[ResetEntry] = []
        raw_resets = data.get("resets", [])
        if not isinstance(raw_resets, list):
            raise self._corrupt(f"resets must be a list; got {type(raw_resets).__name__}")
        for index, item in enumerate(raw_resets):
            try:
                resets.append(ResetEntry.from_dict(item))
            except (ValueError, TypeError) as err:
                raise self._corrupt(f"reset {index} is invalid: {err}") from None
        return tuple(entries), tuple(resets)

    def _write(self, entries: Sequence[LedgerEntry]) -> None:
        document = {
            "format": LEDGER_FORMAT,
            "version": LEDGER_VERSION,
            "site": self._site,
            "resets": [reset.to_dict() for reset in self._resets],
            "entries": [entry.to_dict() for entry in entries],
        }
        payload = (json.dumps(document, indent=2, allow_nan=False) + "\n").encode("utf-8")
        fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=self._dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        fsync_dir(self._dir)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(self._dir / f"{LEDGER_FILENAME}.lock")


