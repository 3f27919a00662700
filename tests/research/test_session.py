"""Runs back to back in one engine session: the workers are reused, no state leaks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcare.common.config import RunConfig
from fedcare.research.cluster import EngineConfig, engine_session
from fedcare.research.run import run_simulation
from tests.report_views import science

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, name: str) -> RunConfig:
    return RunConfig.from_mapping({"num-rounds": 2, "hidden-units": "16", "secure-noise": False,
                                   "output-dir": str(tmp_path), "run-name": name,
                                   "epsilon-budget": 1.5})


def _ledger_runs(run_dir: Path) -> set[str]:
    ledger = json.loads((run_dir / "sites" / "site-0" / "privacy-ledger.json").read_text())
    return {str(entry["run_id"]) for entry in ledger["entries"]}


def test_second_run_in_a_session_reuses_the_workers_and_sees_nothing_of_the_first(
        tmp_path: Path) -> None:
    with engine_session(EngineConfig(workers=1)) as session:
        first = run_simulation(_config(tmp_path, "first"), num_sites=2, audit=False)
        second = run_simulation(_config(tmp_path, "second"), num_sites=2, audit=False)
        assert session.pool.pools_built == 1  # Ray and the site worker started once

    # Same seed, fresh state: the second run found exactly what the first did. Had it seen
    # the first run's ledger, its lifetime epsilon (and budget check: 1.5 allows one run
    # of eps 1 only) would differ; had it kept the first run's model, its figures would.
    assert science(second) == science(first)
    assert all(site["runs-at-site"] == 1 for site in second["sites"].values())
    assert _ledger_runs(tmp_path / "first").isdisjoint(_ledger_runs(tmp_path / "second"))
    assert second["engine"]["site-workers"] == 1
