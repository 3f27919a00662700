"""The FLamby-layout heart-disease table, from hand-made cell results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcare.common.config import RunConfig
from fedcare.data.datasets.heart_disease import SITES
from fedcare.research.flamby_table import (
    DP_EPSILONS,
    PLAN_EPSILONS,
    STRATEGIES,
    collect,
    format_table,
    heart_table,
    render_markdown,
    table_cells,
)
from fedcare.research.sweep import BASELINES, FEDERATED, PLOTS
from tests.sweep_factories import fake_result


def test_cells_cover_every_row_of_the_flamby_table_for_each_split() -> None:
    cells = table_cells({}, split_seeds=[43, 0, 1, 2, 3], seeds=[0])

    per_split = 1 + len(STRATEGIES) + len(DP_EPSILONS) + len(PLAN_EPSILONS)
    assert len(cells) == 5 * per_split
    dp = [c.config for c in cells
          if c.kind == FEDERATED and c.labels["epsilon"] is not None
          and not c.labels.get("plan")]
    assert sorted({(c.target_epsilon, c.delta, c.strategy) for c in dp}) == [
        (0.1, 1e-3, "fedavg"), (1.0, 1e-3, "fedavg"), (3.0, 1e-3, "fedavg"),
        (10.0, 1e-3, "fedavg")]
    assert all(c.epsilon_budget >= c.target_epsilon for c in dp)
    assert {c.config.partitioning for c in cells} == {"natural"}


def _table_rows() -> dict[str, list[dict[str, object]]]:
    cells = table_cells({}, split_seeds=[43, 0], seeds=[0])
    return collect([fake_result(c, sites=SITES) for c in cells])


def test_rows_follow_the_flamby_layout() -> None:
    rows = _table_rows()

    assert list(rows)[:9] == ["pooled training", *[f"local only: {s}" for s in SITES],
                              "FedAvg", "FedProx", "FedAdam", "FedYogi"]
    assert list(rows)[9:13] == [f"FedAvg with DP, eps = {e:g}, delta = 1e-3"
                                for e in DP_EPSILONS]
    assert [name.split(", eps = ")[1] for name in list(rows)[13:]] == [
        f"{e:g}, delta = 1e-3" for e in PLAN_EPSILONS]
    assert all(name.startswith("FedAvg with DP (fedcare plan: ") for name in list(rows)[13:])
    assert all(len(runs) == 2 for runs in rows.values())  # one run per split seed


def test_table_shows_mean_and_spread_the_flamby_figure_and_the_spent_epsilon() -> None:
    table = format_table(_table_rows())
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}

    assert lines["FedAvg"].startswith("| FedAvg | 0.698 | **0.865 ± 0.000** |")
    eps1 = lines["FedAvg with DP, eps = 1, delta = 1e-3"]
    assert "| 0.702 |" in eps1 and eps1.endswith("| 1.000 | 2 |")
    assert "0.747" in lines["pooled training"]
    assert "| 0.700 ± 0.000 |" in lines["local only: hungary"]  # own-site column


def test_markdown_carries_the_command_and_the_table() -> None:
    rows = _table_rows()
    text = render_markdown({"split-seeds": [43, 0], "seeds": [0], "rows": rows,
                            "hyper-parameters": {"delta": 1e-3}, "command": "fedcare x --y",
                            "table": format_table(rows)})

    assert "fedcare x --y" in text and format_table(rows) in text


@pytest.mark.parametrize("kind", [BASELINES, FEDERATED])
def test_every_cell_kind_is_counted_once_per_run(kind: str) -> None:
    cells = [c for c in table_cells({}, split_seeds=[43], seeds=[0, 1]) if c.kind == kind]
    rows = collect([fake_result(c, sites=SITES) for c in cells])

    assert all(len(runs) == 2 for runs in rows.values())


def test_the_command_renders_from_a_full_cache_without_running_anything(tmp_path: Path) -> None:
    from tests.data_factories import write_heart_dir

    (tmp_path / "data").mkdir()
    data = {"data-dir": str(write_heart_dir(tmp_path / "data", {s: 40 for s in SITES}))}
    cells = table_cells(data, split_seeds=[43, 0], seeds=[0])
    (tmp_path / "cache" / "cells").mkdir(parents=True)
    for cell in cells:
        (tmp_path / "cache" / "cells" / f"{cell.key}.json").write_text(
            json.dumps(fake_result(cell, sites=SITES)))

    result = heart_table(data, split_seeds=[43, 0], seeds=[0], cache_dir=tmp_path / "cache",
                         out=tmp_path / "table.json", markdown=tmp_path / "table.md",
                         plots_dir=tmp_path / "plots", command="fedcare benchmark-heart-table")

    assert json.loads((tmp_path / "table.json").read_text())["table"] == result["table"]
    assert "fedcare benchmark-heart-table" in (tmp_path / "table.md").read_text()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        ["results.csv", *PLOTS])


def test_plan_rows_run_fedcare_plans_settings_and_every_cell_names_its_accountant() -> None:
    from fedcare.research.heart_plan import plan_for

    cells = table_cells({}, split_seeds=[43], seeds=[0])
    plans = [c for c in cells if c.labels.get("plan")]

    assert [c.labels["epsilon"] for c in plans] == list(PLAN_EPSILONS)
    for cell in plans:
        config = RunConfig.from_mapping(cell.settings)
        plan = plan_for("heart-disease", cell.labels["epsilon"])
        assert (config.num_rounds, config.hidden_units) == (plan.settings["num-rounds"],
                                                             plan.settings["hidden-units"])
    assert all(c.settings["accountant"] == "pld" for c in cells)


def test_the_prior_row_is_each_sites_training_majority_on_its_test_rows(tmp_path: Path) -> None:
    from fedcare.research.flamby_table import prior_rows
    from tests.data_factories import write_heart_dir

    data = write_heart_dir(tmp_path, {s: 40 for s in SITES})

    (row,) = prior_rows({"data-dir": str(data)}, split_seeds=[43])

    assert set(row["site-accuracy"]) == set(SITES)
    assert all(0.0 <= v <= 1.0 for v in row["site-accuracy"].values())
    assert row["mean-site-accuracy"] == sum(row["site-accuracy"].values()) / len(SITES)


def test_rows_runs_only_the_chosen_row_groups_and_names_an_unknown_one() -> None:
    from fedcare.common.errors import ConfigError

    cells = table_cells({}, split_seeds=[43, 0], seeds=[0, 1], rows=["plan"])

    assert len(cells) == 2 * 2 * len(PLAN_EPSILONS)
    assert all(c.labels.get("plan") for c in cells)
    with pytest.raises(ConfigError, match=r"rows must be one or more of .*; got plans"):
        table_cells({}, split_seeds=[43], seeds=[0], rows=["plan", "plans"])


def _cache_all(cache: Path, data: dict[str, str], rows: tuple[str, ...]) -> None:
    (cache / "cells").mkdir(parents=True, exist_ok=True)
    for cell in table_cells(data, split_seeds=[43, 0], seeds=[0], rows=rows):
        (cache / "cells" / f"{cell.key}.json").write_text(
            json.dumps(fake_result(cell, sites=SITES)))


def test_recorded_rows_fill_the_table_and_each_names_its_command_and_accountant(
        tmp_path: Path) -> None:
    from tests.data_factories import write_heart_dir

    (tmp_path / "data").mkdir()
    data = {"data-dir": str(write_heart_dir(tmp_path / "data", {s: 40 for s in SITES}))}
    earlier = ("baselines", "strategies", "dp")
    _cache_all(tmp_path / "old", data, earlier)
    old = heart_table(data, split_seeds=[43, 0], seeds=[0], cache_dir=tmp_path / "old",
                      rows=earlier, command="fedcare old")
    # A result written before issue 17: no accountant recorded (RDP), no sources.
    legacy = {**old, "hyper-parameters": {k: v for k, v in old["hyper-parameters"].items()
                                          if k != "accountant"}}
    del legacy["sources"]
    _cache_all(tmp_path / "new", data, ("plan",))  # nothing left to run

    result = heart_table(data, split_seeds=[43, 0], seeds=[0], cache_dir=tmp_path / "new",
                         rows=["plan", "prior"], recorded=legacy, command="fedcare new")

    assert list(result["rows"]) == [*old["rows"], *[
        k for k in result["rows"] if "fedcare plan" in k], "per-site majority prior (reference)"]
    assert result["rows"]["FedAvg"] == old["rows"]["FedAvg"]
    assert result["sources"]["FedAvg"] == {"command": "fedcare old", "accountant": "rdp"}
    assert result["sources"]["per-site majority prior (reference)"] == {
        "command": "fedcare new", "accountant": "pld"}
    text = render_markdown(result)
    assert "- `fedcare old` (its DP rows: RDP accountant): pooled training;" in text
    assert "Row groups not in this table" not in text
    assert "```\nfedcare new\nfedcare old\n```" in text


def test_recorded_rows_of_other_runs_or_settings_are_refused(tmp_path: Path) -> None:
    from fedcare.common.errors import ConfigError
    from fedcare.research.flamby_table import recorded_rows

    recorded = {"split-seeds": [43], "seeds": [0, 1], "hyper-parameters": {"num-rounds": 40},
                "rows": {"FedAvg": []}}

    with pytest.raises(ConfigError) as err:
        recorded_rows(recorded, hyper_parameters={"num-rounds": 10, "accountant": "pld"},
                      split_seeds=[43], seeds=[0], skip=["plan"])

    assert "seeds must be this run's [0]; got [0, 1]" in str(err.value)
    assert "num-rounds (40 vs 10)" in str(err.value)


def test_markdown_names_the_row_groups_it_has_no_row_of() -> None:
    rows = _table_rows()
    only = {k: v for k, v in rows.items() if "fedcare plan" not in k}
    text = render_markdown({"split-seeds": [43, 0], "seeds": [0], "rows": only,
                            "hyper-parameters": {"delta": 1e-3}, "command": "fedcare x",
                            "table": format_table(only)})

    assert ("Row groups not in this table (neither run by the command nor in a recorded "
            "result; `--rows plan,prior` runs them): plan, prior.") in text
