"""fedcare perf: the JSON it writes and the goal arithmetic (timings replaced by fakes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedcare.research import perf_suite


def _fake_fedcare(root: Path, *, sites: int, rounds: int, poll: float) -> dict[str, Any]:
    per_round = 0.02 * sites + (0.4 if poll >= 0.1 else 0.0)
    return {"wall-seconds": 10.0 + rounds * per_round, "first-round-seconds": 8.0,
            "seconds-per-round": per_round, "training-seconds-per-round": 0.01 * sites,
            "overhead-seconds-per-round": per_round - 0.01 * sites,
            "peak-rss-bytes": sites * 2**20, "sites": sites, "rounds": rounds,
            "mean-site-accuracy": 0.9}


@pytest.fixture()
def perf(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import fedcare.research.perf as perf_module

    monkeypatch.setattr(perf_suite, "_fedcare_run", _fake_fedcare)
    monkeypatch.setattr(perf_suite, "site_work", lambda root, *, rounds: {
        "site-round-seconds": 0.02, "site-training-seconds": 0.005})
    monkeypatch.setattr(perf_suite, "_baseline_run", lambda *, sites, rounds: {
        "wall-seconds": 60.0, "peak-rss-bytes": 1, "sites": sites, "rounds": rounds})
    monkeypatch.setattr(perf_module, "epoch_costs", lambda config, repeats: {
        "ratio-to-plain": {"plain": 1.0, "dp-bookkeeping": 1.3}})
    return perf_suite.run_perf(repeats=2, scale_sites=(10, 50, 100), scale_rounds=3)


def test_result_is_strict_json_with_every_section(perf: dict[str, Any]) -> None:
    text = json.dumps(perf, allow_nan=False)

    data = json.loads(text)
    assert (data["format"], data["version"]) == ("fedcare-perf", 1)
    assert {"machine", "settings", "dp-epoch", "round-overhead", "versus-flower", "scaling",
            "goals"} <= set(data)
    assert len(data["versus-flower"]["fedcare"]) == len(data["versus-flower"][
        "flower-template-app"]) == 2
    assert [row["sites"] for row in data["scaling"]] == [10, 50, 100]


def test_goals_are_computed_from_the_measurements(perf: dict[str, Any]) -> None:
    goals = perf["goals"]

    assert goals["dp-epoch-ratio"] == {"value": 1.3, "goal": "<= 1.5", "met": True}
    assert goals["fedcare-vs-flower-ratio"]["value"] == pytest.approx((10 + 10 * 0.08) / 60)
    assert goals["round-overhead-seconds"]["value"] == pytest.approx(0.04)
    assert perf["round-overhead"]["median-overhead-seconds-default-polls"] == pytest.approx(0.44)
    assert perf["round-overhead"]["site-non-training-seconds-per-round"] == pytest.approx(
        0.015 * 4 / perf["machine"]["workers"])
    assert goals["round-time-growth"]["value"] == pytest.approx(10.0)  # 2.0 s vs 0.2 s
    assert goals["round-time-growth"]["met"]  # exactly linear is within the goal
    assert goals["peak-rss-bytes-100-sites"]["met"]


def test_summary_names_each_goal_and_whether_it_was_met(perf: dict[str, Any]) -> None:
    text = perf_suite.format_summary(perf)

    assert "fedcare-vs-flower-ratio" in text and "met" in text
    assert "100 sites" in text


def test_process_tree_memory_includes_child_processes() -> None:
    alone = perf_suite.process_tree_rss(os.getpid())
    child = subprocess.Popen([sys.executable, "-c",
                              "import time; b = bytearray(64 * 2**20); time.sleep(3)"])
    try:
        import time

        deadline = time.time() + 10
        while perf_suite.process_tree_rss(os.getpid()) < alone + 60 * 2**20:
            assert time.time() < deadline, "the child's 64 MiB never showed in the tree's RSS"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()


def test_perf_scale_runs_each_site_count_on_synthetic_data_and_prints_gib(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, str]] = []

    def fake(root: Path, *, sites: int, rounds: int, poll: float,
             settings: dict[str, Any]) -> dict[str, Any]:
        seen.append((sites, settings["dataset"]))
        return {**_fake_fedcare(root, sites=sites, rounds=rounds, poll=poll),
                "load-average": [2.0, 1.5, 1.0]}

    monkeypatch.setattr(perf_suite, "_fedcare_run", fake)

    result = perf_suite.run_scale(sites=[10, 1000], rounds=3)

    assert seen == [(10, "synthetic"), (1000, "synthetic")]
    assert json.loads(json.dumps(result, allow_nan=False))["format"] == "fedcare-perf-scale"
    table = perf_suite.format_scale(result).splitlines()
    assert table[2].split()[:3] == ["1000", "0.98", "GiB"]  # 1000 MiB = 0.98 GiB
    assert table[2].endswith("2.0/1.5/1.0")
