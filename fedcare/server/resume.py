"""Crash and resume: the server's state after every completed round, written atomically.

After each round (training aggregated, evaluation recorded) the server writes

* ``checkpoints/state-round-NNNN.npz``: the global weights and the strategy's array state
  (FedAdam/FedYogi moments ``m_t``, ``v_t``), plain numbers (loaded with
  ``allow_pickle=False``);
* ``resume.json``: the round number, the arrays file and its SHA-256, the strategy's
  scalar state, the report so far, the validator's registered example counts, and the
  run settings the state belongs to.

Each file is written to a temporary name and renamed, arrays first, so ``resume.json``
only ever names a complete arrays file; a truncated or edited state is refused
(:class:`~fedcare.common.errors.CheckpointCorrupted`), never loaded.

Resuming (``resume = true``, same run name) continues with the round after the last
completed one, so at most the round in flight at the crash is redone. Every start of
the run is an *attempt*, counted in ``attempts.json``; sites record a redone round in
their privacy ledgers under the attempt's id (``<run>/attempt-N``), as a new spend: a
site never gets back epsilon it spent before the crash, and its whole-run figure
composes every attempt (see docs/robustness.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp.strategy import Strategy

from fedcare.common.errors import CheckpointCorrupted, ConfigError
from fedcare.common.files import fsync_dir, strict_json_loads, write_json_atomic
from fedcare.common.runid import attempt_run_id, run_of

__all__ = ["attempt_run_id", "check_same_run", "load_state", "next_attempt",
           "restore_strategy", "run_of", "save_state"]

logger = logging.getLogger(__name__)

RESUME_FILENAME = "resume.json"
ATTEMPTS_FILENAME = "attempts.json"
RESUME_FORMAT = "fedcare-resume-state"
STATE_ARRAYS = ("m_t", "v_t")  # Flower's FedOpt family (FedAdam, FedYogi, FedAdagrad)
# Settings that may differ between the crashed attempt and its resumption.
RESUMABLE_CHANGES = ("resume", "round-timeout")
_KEYS = ("format", "version", "round", "arrays", "arrays-sha256", "num-weights", "strategy",
         "report", "validation", "config")


def next_attempt(run_dir: Path) -> int:
    """Count this start of the run (0 for the first) and remember it, atomically."""
    path = run_dir / ATTEMPTS_FILENAME
    attempt = 0
    if path.is_file():
        try:
            data = strict_json_loads(path.read_text(encoding="utf-8"))
            attempt = int(data["attempts"])
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointCorrupted(f"resume: {path} must hold the attempt count; got "
                                      f"unreadable content ({err})") from err
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"attempts": attempt + 1})
    return attempt


@dataclass(frozen=True)
class ResumeState:
    server_round: int
    weights: list[np.ndarray]
    strategy_arrays: dict[str, np.ndarray]
    strategy: dict[str, Any]
    report: dict[str, Any]
    validation: dict[str, Any]
    config: dict[str, Any]


def _chain(strategy: Strategy) -> Iterator[Strategy]:
    """A strategy and the strategies it wraps (fedcare's site-level DP wraps one)."""
    yield strategy
    inner = getattr(strategy, "strategy", None)
    if isinstance(inner, Strategy):
        yield from _chain(inner)


def strategy_state(strategy: Strategy) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {"class": type(strategy).__name__}
    for level, s in enumerate(_chain(strategy)):
        for attr in STATE_ARRAYS:
            for key, value in (getattr(s, attr, None) or {}).items():
                arrays[f"{level}:{attr}:{key}"] = np.asarray(value)
        if hasattr(s, "rounds_aggregated"):
            scalars[f"{level}:rounds_aggregated"] = int(s.rounds_aggregated)
    return arrays, scalars


def restore_strategy(strategy: Strategy, arrays: Mapping[str, np.ndarray],
                     scalars: Mapping[str, Any]) -> None:
    if scalars.get("class") != type(strategy).__name__:
        raise ConfigError([f"resume: strategy must be {scalars.get('class')!r} as in the "
                           f"checkpoint; got {type(strategy).__name__!r}"])
    for level, s in enumerate(_chain(strategy)):
        for attr in STATE_ARRAYS:
            prefix = f"{level}:{attr}:"
            found = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            if found:
                setattr(s, attr, found)
        if f"{level}:rounds_aggregated" in scalars:
            s.rounds_aggregated = int(scalars[f"{level}:rounds_aggregated"])  # type: ignore[attr-defined]


def save_state(run_dir: Path, *, server_round: int, weights: list[np.ndarray],
               strategy: Strategy, report: Mapping[str, Any], validation: Mapping[str, Any],
               config: Mapping[str, Any]) -> Path:
    """Write round ``server_round``'s state: arrays file first, then ``resume.json``."""
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    arrays, scalars = strategy_state(strategy)
    payload = {f"w{i}": np.asarray(w) for i, w in enumerate(weights)}
    payload.update({f"s:{k}": v for k, v in arrays.items()})
    name = f"state-round-{server_round:04d}.npz"
    tmp = folder / f".{name}.tmp"
    with tmp.open("wb") as handle:
        np.savez(handle, **payload)  # numeric arrays only; loaded with allow_pickle=False
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / name)
    fsync_dir(folder)
    digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    path = run_dir / RESUME_FILENAME
    write_json_atomic(path, {"format": RESUME_FORMAT, "version": 1, "round": server_round,
                             "arrays": f"checkpoints/{name}", "arrays-sha256": digest,
                             "num-weights": len(weights), "strategy": scalars,
                             "report": dict(report), "validation": dict(validation),
                             "config": dict(config)})
    fsync_dir(run_dir)
    for old in folder.glob("state-round-*.npz"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return path


def load_state(run_dir: Path) -> ResumeState | None:
    """The last completed round's state; ``None`` if no round completed yet."""
    path = run_dir / RESUME_FILENAME
    if not path.is_file():
        return None
    try:
        data = strict_json_loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointCorrupted(f"resume: {path} must be complete JSON; got an unreadable "
                                  f"file ({err}); it is not loaded") from err
    if not isinstance(data, dict) or sorted(data) != sorted(_KEYS) or \
            data["format"] != RESUME_FORMAT or data["version"] != 1:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CheckpointCorrupted(f"resume: {path} must be a {RESUME_FORMAT} v1 file with keys "
                                  f"{', '.join(_KEYS)}; got {got}")
    server_round = data["round"]
    if not isinstance(server_round, int) or isinstance(server_round, bool) or server_round < 1:
        raise CheckpointCorrupted(f"resume: {path} round must be a whole number >= 1; "
                                  f"got {server_round!r}")
    arrays_path = (run_dir / str(data["arrays"])).resolve()
    if arrays_path.parent != (run_dir / "checkpoints").resolve() or not arrays_path.is_file():
        raise CheckpointCorrupted(f"resume: {path} must name an arrays file in "
                                  f"{run_dir / 'checkpoints'}; got {data['arrays']!r}")
    digest = hashlib.sha256(arrays_path.read_bytes()).hexdigest()
    if digest != data["arrays-sha256"]:
        raise CheckpointCorrupted(f"resume: {arrays_path} must have SHA-256 "
                                  f"{data['arrays-sha256']}; got {digest}; it is not loaded")
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            stored = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as err:
        raise CheckpointCorrupted(f"resume: {arrays_path} must be a numeric .npz; got "
                                  f"{err}") from err
    weights = [stored.pop(f"w{i}") for i in range(int(data["num-weights"]))]
    if any(not k.startswith("s:") for k in stored):
        raise CheckpointCorrupted(f"resume: {arrays_path} holds unexpected arrays "
                                  f"{sorted(stored)}")
    return ResumeState(server_round=server_round, weights=weights,
                       strategy_arrays={k[2:]: v for k, v in stored.items()},
                       strategy=dict(data["strategy"]), report=dict(data["report"]),
                       validation=dict(data["validation"]), config=dict(data["config"]))


def check_same_run(stored: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """A resumed run must have the settings its checkpoint was made with."""
    changed = sorted(k for k in set(stored) | set(current)
                     if k not in RESUMABLE_CHANGES and stored.get(k) != current.get(k))
    if changed:
        raise ConfigError([f"resume: {k} must be {stored.get(k)!r} as in the checkpoint; got "
                           f"{current.get(k)!r}" for k in changed])
