"""The site's state marker: ``site-state.json``, a small summary of its ledger and audit log.

Written atomically after every spend (and its audit head after every audit record), it
says how much history the state dir held the last time fedcare wrote it::

    {"format": "fedcare-site-state", "version": 1, "site": "<site>",
     "created": "<UTC>", "updated": "<UTC>", "entries": <ledger entries>,
     "last_entry_hash": "<sha256 of the last ledger entry, or 64 zeros>",
     "audit_length": <records>, "audit_head": "<hash of the last record, or 64 zeros>",
     "resets": <budget resets so far>}

So deleting, emptying or truncating the ledger or the audit log (even both) is seen
on the next load: the files no longer reach what the marker recorded
(:func:`fedcare.site.site_state.check_site_state`). The marker holds counts and
hashes only, never a patient value or an epsilon.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fedcare.common.errors import SiteStateInconsistent, describe_value
from fedcare.common.files import (
    fsync_dir,
    is_sha256_hex,
    require_exact_keys,
    strict_json_loads,
    write_text_atomic,
)
from fedcare.privacy.ledger import utc_now_iso

__all__ = [
    "EMPTY_HASH",
    "MARKER_FILENAME",
    "MARKER_FORMAT",
    "MARKER_VERSION",
    "SiteMarker",
    "note_audit_append",
    "read_marker",
    "write_marker",
]

logger = logging.getLogger(__name__)

MARKER_FILENAME = "site-state.json"
MARKER_FORMAT = "fedcare-site-state"
MARKER_VERSION = 1
EMPTY_HASH = "0" * 64  # "no entry yet" (the audit log's GENESIS_HASH)


@dataclass(frozen=True, kw_only=True)
class SiteMarker:
    """What the state dir held when fedcare last wrote it (see the module docstring)."""

    site: str
    created: str
    updated: str
    entries: int
    last_entry_hash: str
    audit_length: int
    audit_head: str
    resets: int
    format: str = MARKER_FORMAT
    version: int = MARKER_VERSION

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.format != MARKER_FORMAT:
            problems.append(f"format must be {MARKER_FORMAT!r}; got {describe_value(self.format)}")
        if self.version != MARKER_VERSION or isinstance(self.version, bool):
            problems.append(f"version must be {MARKER_VERSION}; "
                            f"got {describe_value(self.version)}")
        for name in ("site", "created", "updated"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{name} must be a non-empty string; got {describe_value(value)}")
        for name in ("entries", "audit_length", "resets"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problems.append(f"{name} must be an integer >= 0; got {describe_value(value)}")
        for name in ("last_entry_hash", "audit_head"):
            value = getattr(self, name)
            if not is_sha256_hex(value):
                problems.append(f"{name} must be 64 lowercase hex digits; "
                                f"got {describe_value(value)}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_MARKER_KEYS = tuple(SiteMarker.__dataclass_fields__)


def marker_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / MARKER_FILENAME


def read_marker(state_dir: str | os.PathLike[str]) -> SiteMarker | None:
    """The marker in ``state_dir``; None when there is none.

    Raises:
        SiteStateInconsistent: the file exists but cannot be read or fails validation.
    """
    path = marker_path(state_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise SiteStateInconsistent(f"site state marker {path}: cannot be read ({err})") from None
    try:
        data = strict_json_loads(text)
        require_exact_keys(data, _MARKER_KEYS, "marker")
        return SiteMarker(**data)
    except (ValueError, TypeError, RecursionError) as err:
        raise SiteStateInconsistent(f"site state marker {path}: is invalid "
                                    f"(edited or damaged?): {err}") from None


def write_marker(state_dir: str | os.PathLike[str], marker: SiteMarker) -> None:
    """Write the marker atomically (temporary file, fsync, rename, fsync the folder)."""
    directory = Path(state_dir)
    write_text_atomic(marker_path(directory),
                      json.dumps(marker.to_dict(), indent=2, sort_keys=True) + "\n")
    fsync_dir(directory)


def note_audit_append(state_dir: str | os.PathLike[str], *, length: int, head: str) -> None:
    """Move the marker's audit head forward after a record was appended (if there is a
    marker: a state dir without one gets it at its next check). Never moves it back."""
    try:
        marker = read_marker(state_dir)
    except SiteStateInconsistent as err:
        logger.warning("%s; not updated (the next check before training reports it)", err)
        return
    if marker is None or length <= marker.audit_length:
        return
    write_marker(state_dir, replace(marker, audit_length=length, audit_head=head,
                                    updated=utc_now_iso()))
