"""Small, careful file primitives shared by the site's privacy ledger and audit log.

* :func:`strict_json_loads`: JSON only (never pickle or eval), rejecting duplicate keys
  and the non-standard ``NaN``/``Infinity`` literals, so a file means one thing.
* :func:`file_lock`: an advisory ``fcntl.flock`` on a side file, so a second process or a
  stale object cannot interleave writes (POSIX; elsewhere the single-writer assumption
  is all there is).
* :func:`fsync_dir`: make a rename or a new file's directory entry durable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedcare.common.errors import describe_value

_HEX64 = re.compile(r"[0-9a-f]{64}")

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


def canonical_json(payload: Any) -> str:
    """The one serialisation that is hashed: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)


def is_sha256_hex(value: object) -> bool:
    """True for a sha256 digest written as 64 lowercase hex digits."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def sha256_hex(text: str) -> str:
    """sha256 hex digest of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write then rename (with fsync), so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def json_safe(data: Any) -> Any:
    """``data`` with every non-finite float (NaN: an undefined metric) replaced by ``None``,
    so it can be written as strict JSON."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: json_safe(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(value) for value in data]
    return data


def write_json_atomic(path: Path, data: Any) -> None:
    """Strict JSON (undefined metrics become ``null``), written atomically."""
    write_text_atomic(path, json.dumps(json_safe(data), indent=2, allow_nan=False))


def site_state_dir(state_dir: str | os.PathLike[str], *, site: object, where: str) -> Path:
    """Check a site name (non-empty, no surrounding spaces) and create its state folder."""
    if not isinstance(site, str) or not site.strip() or site != site.strip():
        raise ValueError(f"{where}: site must be a non-empty name without surrounding "
                         f"spaces; got {describe_value(site)}")
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}: a key must appear once per object")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not valid JSON (null stands for a value "
                     "not recorded)")


def strict_json_loads(text: str) -> Any:
    """``json.loads`` that refuses duplicate keys and NaN/Infinity (``ValueError``)."""
    return json.loads(text, parse_constant=_reject_constant,
                      object_pairs_hook=_reject_duplicate_keys)


def require_exact_keys(data: object, keys: tuple[str, ...], what: str) -> None:
    """``ValueError`` unless ``data`` is a JSON object with exactly ``keys``."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object; got {type(data).__name__}")
    unknown = sorted(str(key) for key in data if key not in keys)
    missing = [key for key in keys if key not in data]
    if unknown or missing:
        raise ValueError(f"{what} keys must be exactly {', '.join(keys)}; got "
                         + "; ".join(filter(None, [
                             f"unknown {', '.join(unknown)}" if unknown else "",
                             f"no {', '.join(missing)}" if missing else ""])))


@contextlib.contextmanager
def file_lock(lock_path: Path, *, exclusive: bool = True) -> Iterator[None]:
    """Hold an advisory lock on ``lock_path`` (created if missing) for the block."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries durable (POSIX); a no-op where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)
