"""The personalisation benchmark's settings and table (the runs are in docs/personalisation.md)."""

from __future__ import annotations

from fedcare.simulations.heart_benchmark import protocol_config
from fedcare.simulations.heart_personalisation import (
    GLOBAL,
    LOCAL,
    PERSONAL,
    PERSONALISED,
    format_personal_table,
)


def _row(setting: str, acc: float, auc: float, **extra: object) -> dict[str, object]:
    return {"setting": setting, "site-accuracy": {"cleveland": acc, "hungary": acc},
            "site-auc": {"cleveland": auc}, "mean-site-accuracy": acc, "mean-site-auc": auc,
            **extra}


def test_table_keeps_global_and_personalised_apart_with_mean_and_std_over_runs() -> None:
    rows = [_row(GLOBAL, 0.7, 0.8, epsilon={"cleveland": 0.99}),
            _row(GLOBAL, 0.9, 0.8, epsilon={"cleveland": 1.0}),
            _row(PERSONAL, 0.85, 0.8), _row(LOCAL, 0.8, 0.75)]

    lines = format_personal_table(rows).splitlines()

    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {GLOBAL}", f"| {PERSONAL}",
                                                             f"| {LOCAL}"]
    assert lines[2].startswith(f"| {GLOBAL} | 0.800 ± 0.141 |")  # sample std of 0.7, 0.9
    assert lines[2].endswith("| 2 | 1.000 |")
    assert lines[3].startswith(f"| {PERSONAL} | 0.850 |")
    assert "n/a" in lines[3]  # switzerland has no figure in these synthetic rows


def test_personalised_settings_are_valid_on_the_protocol() -> None:
    config = protocol_config(PERSONALISED, split_seed=43, seed=0)

    assert config.personalisation == "offset"
    assert config.dp_mode == "target-epsilon" and config.target_epsilon == 1.0
