"""Tie a global model to the site: the model's run must be one this site took part in.

``predict``, ``serve``, ``drift`` and ``validation-report`` pair a run's ``model.keras`` +
``model.json`` with the site's ``preprocessor.json``. The files' schemas can agree while
the model comes from a run the site never joined (its scaling then belongs to another
run's split, or the model to another consortium). The site's hash-chained audit log
records the run id of every round it trained, so :func:`check_model_run` refuses a model
whose run is not among them, and warns when it is not the site's latest run (whose
preprocessing ``preprocessor.json`` holds).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fedcare.common.errors import ModelMismatch
from fedcare.common.files import strict_json_loads
from fedcare.common.runid import run_of

logger = logging.getLogger(__name__)

AUDIT_LOG = "audit-log.jsonl"  # fedcare.site.audit.AUDIT_FILENAME (read-only here)


def site_runs(site_dir: str | os.PathLike[str]) -> list[str]:
    """The runs this site trained in, oldest first, from its audit log (empty if none)."""
    path = Path(site_dir) / AUDIT_LOG
    if not path.is_file():
        return []
    runs: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = strict_json_loads(line)
        except ValueError:
            continue  # `fedcare audit-log` is the place that reports a damaged log
        run_id = record.get("run_id") if isinstance(record, dict) else None
        if isinstance(run_id, str) and run_of(run_id) not in runs[-1:]:
            runs.append(run_of(run_id))
    return runs


def check_model_run(manifest: dict[str, Any], manifest_path: Path,
                    site_dir: str | os.PathLike[str]) -> None:
    """``ModelMismatch`` unless the manifest's run is one the site's audit log records."""
    run = manifest.get("run")
    runs = site_runs(site_dir)
    if not runs:
        logger.warning("%s: no audit log with trained rounds in %s, so model run %r cannot be "
                       "tied to this site; check it is the run this site joined", manifest_path,
                       site_dir, run)
        return
    if run not in runs:
        shown = ", ".join(repr(r) for r in dict.fromkeys(reversed(runs)))
        raise ModelMismatch(
            f"{manifest_path}: model run must be a run this site took part in (its audit log "
            f"in {site_dir} records {shown}); got run {run!r}: use the model.keras of a run "
            "this site joined")
    if run != runs[-1]:
        logger.warning("%s: model run %r is not this site's latest run %r, whose "
                       "preprocessing %s holds; scores may be scaled differently from "
                       "training", manifest_path, run, runs[-1], Path(site_dir))
