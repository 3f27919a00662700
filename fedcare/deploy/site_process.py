"""The running site's record in its state folder: which process serves this site, and on
which local port, so that ``fedcare supernode status`` checks *this* site.

Without it the health check could only ask whether something answers on a port (by
default 127.0.0.1:9094). On a host with two sites, the second one's check asked the first
one's port and reported it running (found in the runbook rehearsal, 2026-11-30). A site
writes ``STATE_DIR/site-process.json`` when it starts and removes it when it stops
cleanly; a record left by a crash names a process that has ended, and the check says so.

The file carries no secret and no patient data. It is read as strict JSON, never
unpickled or evaluated.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from fedcare.common.errors import ConfigError
from fedcare.common.files import strict_json_loads, write_json_atomic

SITE_PROCESS_FILENAME = "site-process.json"
SITE_PROCESS_FORMAT = "fedcare-site-process"
SITE_PROCESS_VERSION = 1


@dataclass(frozen=True)
class SiteProcess:
    site: str
    pid: int
    clientappio_address: str
    started: str

    def to_record(self) -> dict[str, Any]:
        return {"format": SITE_PROCESS_FORMAT, "version": SITE_PROCESS_VERSION,
                "site": self.site, "pid": self.pid,
                "clientappio-address": self.clientappio_address, "started": self.started}


def record_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / SITE_PROCESS_FILENAME


def write_record(state_dir: str | os.PathLike[str], *, site: str,
                 clientappio_address: str) -> SiteProcess:
    """Record this process as the site's (replacing a record a crash left behind)."""
    record = SiteProcess(site=site, pid=os.getpid(), clientappio_address=clientappio_address,
                         started=datetime.now(UTC).isoformat(timespec="seconds"))
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(record_path(state_dir), record.to_record())
    return record


def remove_record(state_dir: str | os.PathLike[str]) -> None:
    """Remove the record if it is this process's (another process's stays)."""
    try:
        record = read_record(state_dir)
    except ConfigError:
        return
    if record is not None and record.pid == os.getpid():
        record_path(state_dir).unlink(missing_ok=True)


def read_record(state_dir: str | os.PathLike[str]) -> SiteProcess | None:
    """The site's record; None when there is none. A record that cannot be read or is not
    one raises :class:`ConfigError` naming the file and the field."""
    path = record_path(state_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError([f"{path}: cannot be read ({err.strerror or err})"]) from err
    try:
        data = strict_json_loads(text)
    except ValueError as err:
        raise ConfigError([f"{path}: not valid JSON ({err})"]) from err
    if not isinstance(data, dict) or data.get("format") != SITE_PROCESS_FORMAT:
        raise ConfigError([f"{path}: format must be {SITE_PROCESS_FORMAT!r}"])
    problems = []
    site, pid, address = data.get("site"), data.get("pid"), data.get("clientappio-address")
    if not isinstance(site, str) or not site:
        problems.append(f"{path}: site must be a non-empty string")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
        problems.append(f"{path}: pid must be a positive integer")
    if not isinstance(address, str) or ":" not in address:
        problems.append(f"{path}: clientappio-address must be HOST:PORT")
    if problems:
        raise ConfigError(problems)
    return SiteProcess(site=cast(str, site), pid=cast(int, pid),  # checked above
                       clientappio_address=cast(str, address),
                       started=str(data.get("started", "")))


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.EPERM
    return True
