"""The heart-disease protocol's settings and table (the runs themselves are in docs/results.md)."""

from __future__ import annotations

import pytest

from fedcare.research.heart_benchmark import PROTOCOL, format_table, protocol_config


def test_protocol_settings_follow_benchmark_md() -> None:
    config = protocol_config({}, split_seed=0, seed=3)

    assert (config.dataset, config.partitioning, config.test_fraction) == (
        "heart-disease", "natural", 0.34)
    assert (config.split_seed, config.seed, config.delta) == (0, 3, 1e-3)
    assert PROTOCOL["test-fraction"] == 0.34


def test_overrides_cannot_move_the_split_seed_away_from_the_argument() -> None:
    config = protocol_config({"split-seed": 99, "num-rounds": 3}, split_seed=43, seed=0)

    assert (config.split_seed, config.num_rounds) == (43, 3)


def test_table_reports_mean_and_std_over_seeds() -> None:
    def row(seed: int, acc: float) -> dict[str, object]:
        return {"setting": "fedavg", "seed": seed, "mean-site-accuracy": acc,
                "site-accuracy": {"cleveland": acc}, "site-auc": {}, "mean-site-auc": 0.8,
                "pooled-accuracy": acc, "epsilon": {"cleveland": 0.9}}

    table = format_table([row(0, 0.7), row(1, 0.9)])

    last = table.splitlines()[-1]
    assert last.startswith("| fedavg | 0.800 ± 0.141 |")  # mean 0.8, sample std 0.1414
    assert last.endswith("| 0.900 |")
    assert "n/a" in last  # hungary etc. have no figure in this synthetic row


@pytest.mark.parametrize("bad", [{"num-rounds": 0}, {"strategy": "nope"}])
def test_bad_overrides_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        protocol_config(bad, split_seed=43, seed=0)
