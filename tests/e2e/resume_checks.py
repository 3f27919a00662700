"""Checks shared by the kill -9 and resume tests (simulation and deployment).

``sites_dir`` holds one folder per site with its privacy ledger (a simulation's
``<run>/sites``, a deployment's site state folders).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedcare.common.runid import run_of
from fedcare.privacy import PrivacyLedger


def ledger_entries(sites_dir: Path) -> dict[str, list[tuple[str, int]]]:
    return {site.name: [(e.run_id, e.server_round) for e in
                        PrivacyLedger(site, site=site.name).entries]
            for site in sorted(sites_dir.iterdir())}


def spent_on(sites_dir: Path, server_round: int) -> bool:
    """Has any site recorded a spend for ``server_round`` (read while the run writes)?"""
    for ledger in sites_dir.glob("*/privacy-ledger.json"):
        try:
            entries = json.loads(ledger.read_text())["entries"]
        except (OSError, ValueError, KeyError):
            continue
        if any(e["server_round"] == server_round for e in entries):
            return True
    return False


def checkpointed_round(run_dir: Path) -> int:
    """The last round in the run's resume checkpoint (0 if none yet)."""
    try:
        return int(json.loads((run_dir / "resume.json").read_text())["round"])
    except (OSError, ValueError, KeyError):
        return 0


def epsilons(sites_dir: Path, delta: float) -> dict[str, float]:
    return {site.name: PrivacyLedger(site, site=site.name).epsilon(delta=delta)
            for site in sorted(sites_dir.iterdir())}


def assert_resumed_intact(report: dict[str, Any], sites_dir: Path, *, run_name: str,
                          rounds: int, checkpoint: int, delta: float,
                          before: dict[str, list[tuple[str, int]]],
                          eps_before: dict[str, float]) -> set[int]:
    """Every round in the report once, every site trained each; every ledger entry from
    before the crash still there, epsilon never down, the report's epsilon the ledger's;
    exactly the round in flight at the crash redone (if a site had started it).
    Returns the rounds redone."""
    assert [r["round"] for r in report["rounds"]] == list(range(1, rounds + 1))
    assert report["attempts"] == 2 and report["resumed-after-round"] == checkpoint
    assert all(sorted(r["train"]) == sorted(before) for r in report["rounds"])
    after = ledger_entries(sites_dir)
    eps_after = epsilons(sites_dir, delta)
    redone: set[int] = set()
    for site, entries in before.items():
        assert after[site][: len(entries)] == entries  # nothing removed or rewritten
        assert eps_after[site] >= eps_before[site]
        assert {run_of(r) for r, _ in after[site]} == {run_name}
        trained = [rnd for _, rnd in after[site]]
        assert sorted(set(trained)) == list(range(1, rounds + 1))
        redone |= {rnd for rnd in set(trained) if trained.count(rnd) > 1}
        # The whole-run epsilon in the report composes both attempts' spends.
        assert report["sites"][site]["epsilon"] == pytest.approx(eps_after[site], rel=1e-9)
    in_flight = {rnd for entries in before.values() for _, rnd in entries if rnd > checkpoint}
    assert len(in_flight) <= 1
    assert redone == in_flight
    return redone
