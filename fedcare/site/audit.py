"""A site's audit log: hash-chained lines for every spend and round, append-only, on its own disk.

Every round a site takes part in, it appends one :class:`AuditRecord` to
``audit-log.jsonl`` in its state directory: who asked (server, run, round), what
left the site (the digest and L2 norm of the update), what it cost (this round's
epsilon and the site's total, at a named delta and accountant) and how many rows
were used. Counts only: no patient data, no weights.

File format: JSON Lines, UTF-8, one record per line, each line the canonical JSON of
the record (keys sorted, separators ``(",", ":")``, ASCII, no NaN/Infinity) followed
by ``"\\n"``. Each record holds ``prev_hash`` (the previous record's ``hash``, or
:data:`GENESIS_HASH` for the first) and ``hash`` = sha256 hex of the canonical JSON of
every field except ``hash``. So a record cannot be edited, deleted, moved or inserted
without breaking the chain at (or right after) that place, and :meth:`SiteAuditLog.verify`
names the FIRST line where it breaks.

Record kinds (all in the same chain). A *round* record (the fields above, no ``kind``
key: the only kind fedcare wrote before spend records, so such logs read unchanged). A
*spend* record (``"kind": "spend"``: :class:`SpendRecord`), appended right after a
ledger entry is written and before training, with the entry's position and sha256
(``LedgerEntry.content_hash``) and the site's lifetime epsilon after it, at a named
delta and accountant; fine-tuning spends get one too, though nothing is sent. A *reset*
record (``"kind": "reset"``: :class:`ResetRecord`), only as the first line of the chain
that ``fedcare ledger reset`` starts. ``fedcare.site.site_state`` cross-checks spend
records against the ledger; a fedcare older than spend records refuses such a log.

What a hash chain cannot show on its own: an attacker with write access who rewrites
the whole chain from some point on, or cuts whole entries off the end. Detecting that
needs the head kept somewhere else: the state dir's marker (``site-state.json``, moved
forward after every append by :func:`~fedcare.site.site_marker.note_audit_append`) and
the server's registry of each site's last head (``fedcare.server.site_registry``).

Writes: the existing chain is verified first (under an exclusive ``fcntl.flock`` on
``audit-log.jsonl.lock`` where available); a broken chain is never extended. Then the
new line is written with the file opened in append mode, flushed and fsync'ed;
earlier lines are never rewritten. A crash mid-write leaves a last line without its
newline: verification reports it and appending refuses until an operator has looked
at the file (fail closed; the log is never repaired silently).

Reading is strict: plain ``json`` (no eval, no pickle), exact keys, checked types.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from fedcare.common.errors import LedgerCorrupted, RoundAlreadyRecorded
from fedcare.common.errors import describe_value as _describe
from fedcare.common.files import (
    canonical_json,
    file_lock,
    fsync_dir,
    require_exact_keys,
    sha256_hex,
    site_state_dir,
    strict_json_loads,
)
from fedcare.common.values import is_int as _is_int
from fedcare.common.values import is_real as _is_real
from fedcare.privacy.ledger import ResetEntry
from fedcare.site.site_marker import note_audit_append

__all__ = [
    "AUDIT_FILENAME",
    "GENESIS_HASH",
    "REFUSAL_KIND",
    "RESET_KIND",
    "SPEND_KIND",
    "AnyRecord",
    "AuditRecord",
    "RefusalRecord",
    "ResetRecord",
    "SiteAuditLog",
    "SpendRecord",
    "Verification",
    "canonical_json",
    "parse_record",
    "update_digest",
    "update_norm",
    "verify_log",
]

logger = logging.getLogger(__name__)

AUDIT_FILENAME = "audit-log.jsonl"
GENESIS_HASH = "0" * 64
_DIGEST_DOMAIN = b"fedcare-update-digest-v1\x00"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DP_FIELDS = ("epsilon_round", "epsilon_total", "delta", "accountant")


# ------------------------------------------------------------------ helpers


def _is_finite(value: object) -> bool:
    """A real number (not bool) that is finite as a float (huge ints are not)."""
    if not _is_real(value):
        return False
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except OverflowError:
        return False


def _utc_now_iso() -> str:
    return datetime.now(UTC).isoformat()


# ------------------------------------------------------------- update facts


def _as_arrays(arrays: Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray):
        raise TypeError(f"{name} must be a sequence of arrays (one per layer tensor); "
                        f"got a single array of shape {arrays.shape}")
    out: list[np.ndarray] = []
    for position, item in enumerate(arrays):
        array = np.asarray(item)
        if array.dtype.hasobject:
            raise ValueError(f"{name}[{position}] must have a numeric dtype; got {array.dtype}")
        out.append(array)
    return out


def update_digest(arrays: Sequence[np.ndarray]) -> str:
    """sha256 hex of the arrays, framed so that no two different updates collide by layout.

    Hashed, in order: a domain tag, the number of arrays, then per array its dtype string
    (e.g. ``<f4``, length-prefixed), its rank and each dimension, its byte count and its
    C-contiguous bytes. Equal values in a different memory order hash the same; a changed
    value, dtype, shape or split into arrays does not.
    """
    checked = _as_arrays(arrays, "update_digest: arrays")
    digest = hashlib.sha256(_DIGEST_DOMAIN)
    digest.update(len(checked).to_bytes(8, "little"))
    for array in checked:
        dtype = array.dtype.str.encode("ascii")
        digest.update(len(dtype).to_bytes(8, "little") + dtype)
        digest.update(array.ndim.to_bytes(8, "little"))
        for dim in array.shape:
            digest.update(int(dim).to_bytes(8, "little"))
        data = np.ascontiguousarray(array).tobytes(order="C")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def update_norm(sent: Sequence[np.ndarray], received: Sequence[np.ndarray]) -> float:
    """L2 norm of ``sent - received`` over all arrays together, computed in float64.

    Raises:
        ValueError: different numbers of arrays, or an array pair of different shapes.
    """
    sent_arrays = _as_arrays(sent, "update_norm: sent")
    received_arrays = _as_arrays(received, "update_norm: received")
    if len(sent_arrays) != len(received_arrays):
        raise ValueError(f"update_norm: sent must have as many arrays as received "
                         f"({len(received_arrays)}); got {len(sent_arrays)}")
    diffs: list[np.ndarray] = []
    for position, (new, old) in enumerate(zip(sent_arrays, received_arrays, strict=True)):
        if new.shape != old.shape:
            raise ValueError(f"update_norm: sent[{position}] must have the shape of "
                             f"received[{position}] {old.shape}; got {new.shape}")
        diffs.append(new.astype(np.float64).ravel() - old.astype(np.float64).ravel())
    if not diffs:
        return 0.0
    flat = np.concatenate(diffs)
    if flat.size == 0:
        return 0.0
    scale = float(np.max(np.abs(flat)))
    if not math.isfinite(scale):
        return math.nan if math.isnan(scale) else math.inf
    if scale == 0.0:
        return 0.0
    scaled = flat / scale  # scaling avoids overflow of the squares for huge values
    return scale * math.sqrt(float(np.dot(scaled, scaled)))


# ------------------------------------------------------------------ records


class _Checker:
    """Collects every problem with a record's field values (all of them, not the first)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values
        self.problems: list[str] = []

    def text(self, name: str) -> None:
        value = self.values[name]
        if not isinstance(value, str) or not value.strip():
            self.problems.append(f"{name} must be a non-empty string; got {_describe(value)}")

    def hex64(self, name: str) -> None:
        value = self.values[name]
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            self.problems.append(f"{name} must be 64 lowercase hex digits (sha256); "
                                 f"got {_describe(value)}")

    def integer(self, name: str, minimum: int) -> None:
        value = self.values[name]
        if not _is_int(value) or value < minimum:
            self.problems.append(f"{name} must be an integer >= {minimum}; "
                                 f"got {_describe(value)}")

    def real(self, name: str) -> None:
        value = self.values[name]
        if not _is_finite(value) or value < 0:
            self.problems.append(f"{name} must be a finite number >= 0; got {_describe(value)}")

    def delta(self, name: str = "delta") -> None:
        value = self.values[name]
        if value is not None and (not _is_finite(value) or not 0 < value < 1):
            self.problems.append(f"{name} must be a number in (0, 1); got {_describe(value)}")

    def choice(self, name: str, allowed: tuple[str, ...]) -> None:
        value = self.values[name]
        if value not in allowed:
            self.problems.append(f"{name} must be one of {', '.join(allowed)}; "
                                 f"got {_describe(value)}")

    def header(self, kind: str | None) -> None:
        """The fields every record has: position, time, site, chain links (and kind)."""
        self.integer("index", 0)
        stamp = self.values["recorded_at"]
        if not isinstance(stamp, str):
            self.problems.append(f"recorded_at must be a UTC ISO 8601 string; "
                                 f"got {_describe(stamp)}")
        else:
            try:
                parsed: datetime | None = datetime.fromisoformat(stamp)
            except ValueError:
                parsed = None
            if (parsed is None or parsed.utcoffset() != timedelta(0)
                    or not stamp.endswith("+00:00")):
                self.problems.append(f"recorded_at must be a UTC ISO 8601 string ending in "
                                     f"+00:00; got {stamp!r}")
        self.text("site")
        if kind is not None:
            self.choice("kind", (kind,))
        self.hex64("prev_hash")
        self.hex64("hash")


def _check_fields(values: Mapping[str, Any]) -> list[str]:
    """Every problem with a round record's field values (all of them, not just the first)."""
    check = _Checker(values)
    check.header(None)
    for name in ("run_id", "server"):
        check.text(name)
    check.integer("server_round", 1)
    check.hex64("update_sha256")
    check.real("update_norm")
    dp_values = [values[name] for name in _DP_FIELDS]
    if any(v is None for v in dp_values) and not all(v is None for v in dp_values):
        given = ", ".join(f"{name}={_describe(values[name])}" for name in _DP_FIELDS)
        check.problems.append("epsilon_round, epsilon_total, delta and accountant must be all "
                              f"set (DP on) or all None (DP off); got {given}")
    if values["epsilon_round"] is not None:
        check.real("epsilon_round")
    if values["epsilon_total"] is not None:
        check.real("epsilon_total")
    check.delta()
    if values["accountant"] is not None:
        check.text("accountant")
    check.integer("train_rows", 0)
    return check.problems


class _Line:
    """What every kind of record does: serialise, hash, parse strictly."""

    def to_dict(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in fields(self)}  # type: ignore[arg-type]

    def content_hash(self) -> str:
        """sha256 hex of the canonical JSON of every field except ``hash``."""
        return record_hash(self.to_dict())

    def to_line(self) -> str:
        """The exact line written to the log (with its trailing newline)."""
        return canonical_json(self.to_dict()) + "\n"

    @classmethod
    def _from(cls, data: Mapping[str, Any], what: str) -> Any:
        keys = tuple(field.name for field in fields(cls))  # type: ignore[arg-type]
        require_exact_keys(data, keys, what)
        return cls(**{key: data[key] for key in keys})


@dataclass(frozen=True, kw_only=True)
class AuditRecord(_Line):
    """One line of a site's audit log: one round the site took part in.

    Field values are validated on construction (``ValueError`` listing every
    problem). Whether ``hash`` matches the content and whether ``index`` and
    ``prev_hash`` fit the chain is for :meth:`SiteAuditLog.verify`, not for the record.
    """

    index: int
    recorded_at: str
    site: str
    run_id: str
    server_round: int
    server: str
    update_sha256: str
    update_norm: float
    epsilon_round: float | None
    epsilon_total: float | None
    delta: float | None
    accountant: str | None
    train_rows: int
    prev_hash: str
    hash: str

    def __post_init__(self) -> None:
        problems = _check_fields(self.__dict__)
        if problems:
            raise ValueError("AuditRecord: " + "; ".join(problems))
        for name in ("update_norm", "epsilon_round", "epsilon_total", "delta"):
            value = getattr(self, name)
            if value is not None:  # 1 and 1.0 must serialise (and hash) the same
                object.__setattr__(self, name, float(value))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        """Strict inverse of :meth:`to_dict`; ``ValueError`` on anything unexpected."""
        return cls._from(data, "record")


#: ``kind`` of a spend record: a privacy spend, written right after its ledger entry.
SPEND_KIND = "spend"
#: ``kind`` of a reset record: the first record of the chain after ``fedcare ledger reset``.
RESET_KIND = "reset"
#: Where a spend record came from: written by the training path, repaired after a crash
#: between the ledger write and the audit write, or added when an older state dir was
#: migrated (its ledger entries predate spend records).
SPEND_ORIGINS = ("recorded", "recovered", "migrated")
SPEND_PHASES = ("round", "finetune", "unknown")


@dataclass(frozen=True, kw_only=True)
class SpendRecord(_Line):
    """One line of a site's audit log: a privacy spend, recorded before training.

    ``ledger_index`` is the entry's 0-based position in the privacy ledger and
    ``entry_hash`` its :meth:`~fedcare.privacy.LedgerEntry.content_hash`;
    ``epsilon_total`` is the site's lifetime epsilon (since its last reset) after this
    spend, at ``delta`` with ``accountant``.
    """

    index: int
    recorded_at: str
    site: str
    kind: str
    run_id: str
    server_round: int
    phase: str
    ledger_index: int
    entry_hash: str
    epsilon_total: float
    delta: float
    accountant: str
    origin: str
    prev_hash: str
    hash: str

    def __post_init__(self) -> None:
        check = _Checker(self.__dict__)
        check.header(SPEND_KIND)
        check.text("run_id")
        check.integer("server_round", 1)
        check.choice("phase", SPEND_PHASES)
        check.integer("ledger_index", 0)
        check.hex64("entry_hash")
        check.real("epsilon_total")
        if self.delta is None:
            check.problems.append("delta must be a number in (0, 1); got nothing")
        check.delta()
        check.text("accountant")
        check.choice("origin", SPEND_ORIGINS)
        if check.problems:
            raise ValueError("SpendRecord: " + "; ".join(check.problems))
        for name in ("epsilon_total", "delta"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def key(self) -> tuple[str, int]:
        return (self.run_id, self.server_round)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpendRecord:
        return cls._from(data, "spend record")


@dataclass(frozen=True, kw_only=True)
class ResetRecord(_Line):
    """The first line of a site's audit log after ``fedcare ledger reset``.

    ``reset`` is the reset entry exactly as the new ledger's ``resets`` list ends with
    (:meth:`~fedcare.privacy.ResetEntry.to_dict`).
    """

    index: int
    recorded_at: str
    site: str
    kind: str
    reset: dict[str, Any]
    prev_hash: str
    hash: str

    def __post_init__(self) -> None:
        check = _Checker(self.__dict__)
        check.header(RESET_KIND)
        if not check.problems:
            try:
                ResetEntry.from_dict(self.reset)
            except (ValueError, TypeError) as err:
                check.problems.append(f"reset is invalid: {err}")
        if check.problems:
            raise ValueError("ResetRecord: " + "; ".join(check.problems))

    @property
    def entry(self) -> ResetEntry:
        return ResetEntry.from_dict(self.reset)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResetRecord:
        return cls._from(data, "reset record")


#: ``kind`` of a refusal record: the site said no (pre-flight or a request), with reasons.
REFUSAL_KIND = "refusal"
REFUSAL_PHASES = ("preflight", "round", "finetune", "evaluate")
MAX_REFUSAL_REASONS = 50
MAX_REASON_CHARS = 2000


@dataclass(frozen=True, kw_only=True)
class RefusalRecord(_Line):
    """One line of a site's audit log: the site refused what the server asked, and why.

    Nothing was trained or spent for it; ``reasons`` are the site's own words (policy,
    budget, bundle or state checks: counts, keys and hashes, never a patient value).
    """

    index: int
    recorded_at: str
    site: str
    kind: str
    run_id: str
    phase: str
    reasons: list[str]
    prev_hash: str
    hash: str

    def __post_init__(self) -> None:
        check = _Checker(self.__dict__)
        check.header(REFUSAL_KIND)
        check.text("run_id")
        check.choice("phase", REFUSAL_PHASES)
        reasons = self.reasons
        if (not isinstance(reasons, list) or not 1 <= len(reasons) <= MAX_REFUSAL_REASONS
                or not all(isinstance(r, str) and 0 < len(r) <= MAX_REASON_CHARS
                           for r in reasons)):
            check.problems.append(f"reasons must be 1 to {MAX_REFUSAL_REASONS} non-empty "
                                  f"strings of at most {MAX_REASON_CHARS} characters; "
                                  f"got {_describe(reasons)}")
        if check.problems:
            raise ValueError("RefusalRecord: " + "; ".join(check.problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RefusalRecord:
        return cls._from(data, "refusal record")


#: Any line of the log. Round records keep the format of fedcare before spend records
#: (no ``kind`` key), so logs written then read unchanged.
AnyRecord = AuditRecord | SpendRecord | ResetRecord | RefusalRecord
_R = TypeVar("_R", AuditRecord, SpendRecord, ResetRecord, RefusalRecord)


def parse_record(data: Any) -> AnyRecord:
    """The record a decoded line holds, by its ``kind`` (none: a round record)."""
    if isinstance(data, dict) and "kind" in data:
        kind = data["kind"]
        if kind == SPEND_KIND:
            return SpendRecord.from_dict(data)
        if kind == RESET_KIND:
            return ResetRecord.from_dict(data)
        if kind == REFUSAL_KIND:
            return RefusalRecord.from_dict(data)
        raise ValueError(f"kind must be one of {SPEND_KIND}, {RESET_KIND}, {REFUSAL_KIND} (or "
                         f"absent for a round record); got {_describe(kind)}")
    return AuditRecord.from_dict(data)


def record_hash(values: Mapping[str, Any]) -> str:
    """The chain hash of a record's values: sha256 of canonical JSON without ``hash``."""
    return sha256_hex(canonical_json({k: v for k, v in values.items() if k != "hash"}))


# ------------------------------------------------------------- verification


@dataclass(frozen=True)
class Verification:
    """The outcome of checking a log.

    ``entries`` counts the lines in the file (a partial last line included);
    ``first_bad_index`` is the 0-based position of the first bad line (its line number
    minus one), None when the chain is intact or the file could not be read at all;
    ``reason`` names the file, the line number and what is wrong (or summarises an
    intact log).
    """

    ok: bool
    entries: int
    first_bad_index: int | None
    reason: str


@dataclass(frozen=True)
class _Scan:
    records: tuple[AnyRecord, ...]
    verification: Verification


def _record_key(record: AnyRecord) -> tuple[str, str, str, int] | None:
    """What must be unique in a chain: a round per server/run/round, a spend per run/round."""
    if isinstance(record, AuditRecord):
        return ("round", record.server, record.run_id, record.server_round)
    if isinstance(record, SpendRecord):
        return ("spend", "", record.run_id, record.server_round)
    return None


def _short(digest: object) -> str:
    return f"{digest[:12]}..." if isinstance(digest, str) and len(digest) > 12 else repr(digest)


def _scan(path: Path, *, site: str | None) -> _Scan:
    """Read and check every line; stop at the first bad one. ``site=None``: the first's."""
    where = f"site audit log {path}"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _Scan((), Verification(True, 0, None, f"{where}: no entries yet (no file)"))
    except OSError as err:
        return _Scan((), Verification(False, 0, None,
                                      f"{where}: cannot be read ({err.strerror or err})"))
    pieces = raw.split(b"\n")
    complete = pieces[:-1]  # the piece after the last newline is b"" unless a write broke off
    partial = pieces[-1]
    total = len(complete) + (1 if partial else 0)
    records: list[AnyRecord] = []
    seen: dict[tuple[str, str, str, int], int] = {}
    expected_site = site

    def bad(position: int, problem: str) -> _Scan:
        return _Scan(tuple(records), Verification(
            False, total, position, f"{where}: line {position + 1} (entry {position}): {problem}"))

    for position, line in enumerate(complete):
        if not line.strip():
            return bad(position, "is empty; every line must hold one record")
        try:
            text = line.decode("utf-8")
            data = strict_json_loads(text)
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
            return bad(position, f"must be one JSON record; got invalid JSON ({err})")
        try:
            record = parse_record(data)
        except (ValueError, TypeError) as err:
            return bad(position, f"is not a valid record: {err}")
        problems: list[str] = []
        if expected_site is None:
            expected_site = record.site
        if record.site != expected_site:
            problems.append(f"site must be {expected_site!r}; got {record.site!r} "
                            "(another site's entry)")
        computed = record.content_hash()
        if record.hash != computed:
            problems.append(f"hash must match the entry's content (sha256 of its canonical "
                            f"JSON, {_short(computed)}); got {_short(record.hash)} "
                            "(entry edited?)")
        if record.index != position:
            problems.append(f"index must be {position}; got {record.index} "
                            "(entry deleted, inserted or moved?)")
        expected_prev = records[-1].hash if records else GENESIS_HASH
        if record.prev_hash != expected_prev:
            what = "the previous entry's hash" if records else "GENESIS_HASH"
            problems.append(f"prev_hash must be {what} {_short(expected_prev)}; got "
                            f"{_short(record.prev_hash)} (entry deleted, inserted or moved?)")
        key = _record_key(record)
        if key is not None and key in seen:
            what = "server/run/round" if key[0] == "round" else "a spend of run/round"
            server = f"server={key[1]!r} " if key[0] == "round" else ""
            problems.append(f"{what} must appear once; got {server}run_id={key[2]!r} "
                            f"server_round={key[3]} again (first on line {seen[key] + 1})")
        if isinstance(record, ResetRecord) and position != 0:
            problems.append("a reset record must be the first line of a chain; got one at "
                            f"line {position + 1}")
        if not problems and text != canonical_json(record.to_dict()):
            problems.append("must be written in canonical JSON (sorted keys, no spaces); "
                            "got a re-formatted line (edited by hand?)")
        if problems:
            return bad(position, "; ".join(problems))
        if key is not None:
            seen[key] = position
        records.append(record)
    if partial:
        return bad(len(complete), f"is incomplete: {len(partial)} byte(s) with no trailing "
                                  "newline (a write was interrupted, or the file was cut)")
    head = _short(records[-1].hash) if records else "none"
    return _Scan(tuple(records), Verification(
        True, total, None, f"{where}: {total} entries, chain intact (head {head})"))


def verify_log(path: str | os.PathLike[str]) -> Verification:
    """Verify the log at ``path`` (a log file, or a site state directory holding one).

    Without a site name, every entry must name the same site as the first. A missing
    file is not ok here: the caller named a log that is not there.
    """
    target = Path(path)
    if target.is_dir():
        target = target / AUDIT_FILENAME
    if not target.exists():
        return Verification(False, 0, None, f"site audit log {target}: must exist; got no file")
    result = _scan(target, site=None).verification
    _log_verification(result)
    return result


def _log_verification(result: Verification) -> None:
    if result.ok:
        logger.debug("%s", result.reason)
    else:
        logger.warning("%s", result.reason)


# ---------------------------------------------------------------- the log


class SiteAuditLog:
    """The append-only, hash-chained audit log of one site.

    Args:
        state_dir: the site's state directory (created if missing).
        site: the site's name; every entry in the file must carry it.
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, site: str) -> None:
        self._dir = site_state_dir(state_dir, site=site, where="SiteAuditLog")
        self._site = site
        self._path = self._dir / AUDIT_FILENAME

    @property
    def path(self) -> Path:
        return self._path

    @property
    def site(self) -> str:
        return self._site

    # ----------------------------------------------------------------- reading

    def verify(self) -> Verification:
        """Check the whole chain; the result names the first bad line, if any."""
        with self._locked(exclusive=False):
            result = _scan(self._path, site=self._site).verification
        _log_verification(result)
        return result

    def records(self) -> list[AnyRecord]:
        """Every record, strictly parsed and chain-checked.

        Raises:
            LedgerCorrupted: the log fails verification (the message says where).
        """
        with self._locked(exclusive=False):
            scan = _scan(self._path, site=self._site)
        if not scan.verification.ok:
            raise LedgerCorrupted(scan.verification.reason)
        return list(scan.records)

    def require_intact(self) -> None:
        """Raise :class:`LedgerCorrupted` unless the log verifies (call before training)."""
        self.records()

    # ----------------------------------------------------------------- writing

    def append(
        self, *, run_id: str, server_round: int, server: str, sent: Sequence[np.ndarray],
        received: Sequence[np.ndarray], epsilon_round: float | None,
        epsilon_total: float | None, delta: float | None, accountant: str | None,
        train_rows: int,
    ) -> AuditRecord:
        """Verify the chain, then append one record for this round and fsync it.

        Raises:
            ValueError: an argument is invalid (nothing is written).
            LedgerCorrupted: the existing log fails verification; it is not extended.
            RoundAlreadyRecorded: this server/run/round is already in the log.
        """
        digest = update_digest(sent)
        norm = update_norm(sent, received)
        values: dict[str, Any] = {
            "index": 0, "recorded_at": _utc_now_iso(), "site": self._site, "run_id": run_id,
            "server_round": server_round, "server": server, "update_sha256": digest,
            "update_norm": norm, "epsilon_round": epsilon_round, "epsilon_total": epsilon_total,
            "delta": delta, "accountant": accountant, "train_rows": train_rows,
            "prev_hash": GENESIS_HASH, "hash": GENESIS_HASH,
        }
        problems = _check_fields(values)
        if problems:
            raise ValueError("SiteAuditLog.append: " + "; ".join(problems))
        record = self._append(lambda previous: self._refuse_repeat(previous, server, run_id,
                                                                   server_round),
                              lambda index, prev: AuditRecord(**{**values, "index": index,
                                                                 "prev_hash": prev}))
        note_audit_append(self._dir, length=record.index + 1, head=record.hash)
        logger.info("site audit log %s: entry %d for run %s round %d (server %s), update "
                    "sha256 %s norm %.4g, hash %s", self._path, record.index, run_id,
                    server_round, server, _short(digest), norm, _short(record.hash))
        return record

    def append_spend(
        self, *, run_id: str, server_round: int, phase: str, ledger_index: int,
        entry_hash: str, epsilon_total: float, delta: float, accountant: str,
        origin: str = "recorded",
    ) -> SpendRecord:
        """Verify the chain, then append one spend record (a ledger entry just written).

        Raises:
            ValueError: an argument is invalid (nothing is written).
            LedgerCorrupted: the existing log fails verification; it is not extended.
            RoundAlreadyRecorded: a spend of this run/round is already in the log.
        """
        values: dict[str, Any] = {
            "index": 0, "recorded_at": _utc_now_iso(), "site": self._site, "kind": SPEND_KIND,
            "run_id": run_id, "server_round": server_round, "phase": phase,
            "ledger_index": ledger_index, "entry_hash": entry_hash,
            "epsilon_total": epsilon_total, "delta": delta, "accountant": accountant,
            "origin": origin, "prev_hash": GENESIS_HASH, "hash": GENESIS_HASH,
        }
        SpendRecord(**values)  # ValueError before the lock, nothing written

        def refuse_repeat(previous: Sequence[AnyRecord]) -> None:
            for old in previous:
                if isinstance(old, SpendRecord) and old.key == (run_id, server_round):
                    raise RoundAlreadyRecorded(
                        f"site audit log {self._path}: a spend must be recorded once; got "
                        f"run_id={run_id!r} server_round={server_round} again "
                        f"(entry {old.index})")

        record = self._append(refuse_repeat, lambda index, prev: SpendRecord(
            **{**values, "index": index, "prev_hash": prev}))
        logger.info("site audit log %s: entry %d: spend of run %s round %d (%s, ledger entry "
                    "%d, lifetime eps %.4g at delta=%g, %s), hash %s", self._path,
                    record.index, run_id, server_round, origin, ledger_index, epsilon_total,
                    delta, accountant, _short(record.hash))
        return record

    def append_refusal(self, *, run_id: str, phase: str,
                       reasons: Sequence[str]) -> RefusalRecord:
        """Verify the chain, then append one refusal record (reasons capped and trimmed).

        Raises:
            LedgerCorrupted: the existing log fails verification; it is not extended.
        """
        kept = [r[:MAX_REASON_CHARS] for r in reasons if r][:MAX_REFUSAL_REASONS]
        values: dict[str, Any] = {
            "index": 0, "recorded_at": _utc_now_iso(), "site": self._site,
            "kind": REFUSAL_KIND, "run_id": run_id or "unnamed-run", "phase": phase,
            "reasons": kept or ["(no reason given)"], "prev_hash": GENESIS_HASH,
            "hash": GENESIS_HASH}
        RefusalRecord(**values)  # ValueError before the lock, nothing written
        record = self._append(lambda previous: None, lambda index, prev: RefusalRecord(
            **{**values, "index": index, "prev_hash": prev}))
        logger.info("site audit log %s: entry %d: refused %s of run %s (%d reason(s)), hash %s",
                    self._path, record.index, phase, run_id, len(kept), _short(record.hash))
        return record

    def start_after_reset(self, reset: ResetEntry) -> ResetRecord:
        """Begin a new chain with the reset record (the old log must have been archived).

        Raises:
            FileExistsError: the log still has records.
        """
        values: dict[str, Any] = {
            "index": 0, "recorded_at": _utc_now_iso(), "site": self._site,
            "kind": RESET_KIND, "reset": reset.to_dict(), "prev_hash": GENESIS_HASH,
            "hash": GENESIS_HASH,
        }

        def must_be_empty(previous: Sequence[AnyRecord]) -> None:
            if previous or (self._path.exists() and self._path.stat().st_size):
                raise FileExistsError(f"site audit log {self._path}: must be archived before "
                                      "a reset starts a new chain; got existing records")

        record = self._append(must_be_empty, lambda index, prev: ResetRecord(
            **{**values, "index": index, "prev_hash": prev}))
        logger.warning("site audit log %s: new chain after a budget reset (%s)", self._path,
                       reset.describe())
        return record

    # --------------------------------------------------------------- internals

    def _refuse_repeat(self, previous: Sequence[AnyRecord], server: str, run_id: str,
                       server_round: int) -> None:
        for old in previous:
            if isinstance(old, AuditRecord) and (
                    (old.server, old.run_id, old.server_round) == (server, run_id, server_round)):
                raise RoundAlreadyRecorded(
                    f"site audit log {self._path}: round must be recorded once; got "
                    f"server={server!r} run_id={run_id!r} server_round={server_round} "
                    f"again (entry {old.index})")

    def _append(self, check: Callable[[Sequence[AnyRecord]], None],
                make: Callable[[int, str], _R]) -> _R:
        """Under the lock: verify the chain, let ``check`` refuse, seal and write a record."""
        with self._locked(exclusive=True):
            scan = _scan(self._path, site=self._site)
            if not scan.verification.ok:
                raise LedgerCorrupted(f"{scan.verification.reason}; refusing to extend a "
                                      "log that does not verify")
            previous = scan.records
            check(previous)
            unsealed = make(len(previous), previous[-1].hash if previous else GENESIS_HASH)
            record = replace(unsealed, hash=unsealed.content_hash())  # numbers normalised
            self._write_line(record.to_line(), new_file=not self._path.exists())
        return record

    def _write_line(self, line: str, *, new_file: bool) -> None:
        payload = line.encode("utf-8")
        with open(self._path, "ab") as handle:  # append mode: earlier lines are never touched
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if new_file:
            fsync_dir(self._dir)

    def _locked(self, *, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        return file_lock(self._dir / f"{AUDIT_FILENAME}.lock", exclusive=exclusive)


