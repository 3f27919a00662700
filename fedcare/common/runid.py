"""Run ids as sites record them: one run may take several attempts (crash, then resume).

The first attempt of run ``r`` records under ``r``; attempt ``n`` (the n-th resumption)
under ``r/attempt-n``, so a round redone after a crash is a new ledger entry (a new
spend), never a collision with, or a replacement of, the one made before the crash.
"""

from __future__ import annotations

ATTEMPT_MARK = "/attempt-"


def attempt_run_id(run_name: str, attempt: int) -> str:
    """The id a site's ledger and audit log use for ``attempt`` of ``run_name``."""
    if attempt < 0:
        raise ValueError(f"run id: attempt must be >= 0; got {attempt}")
    return run_name if attempt == 0 else f"{run_name}{ATTEMPT_MARK}{attempt}"


def run_of(run_id: str) -> str:
    """The run an attempt id belongs to (``"r/attempt-2"`` -> ``"r"``)."""
    head, sep, tail = run_id.rpartition(ATTEMPT_MARK)
    return head if sep and tail.isdigit() else run_id
