"""fedcare sweep: grid expansion, resume from the cell cache, the tidy table and the plots."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError
from fedcare.research.sweep import (
    BASELINES,
    FEDERATED,
    MEAN_SITE,
    PLOTS,
    ROUND_COLUMNS,
    TIDY_COLUMNS,
    Cell,
    Progress,
    expand_grid,
    parse_epsilon,
    parse_partitioning,
    plot_all,
    round_rows,
    run_cells,
    tidy_rows,
    write_csv,
)
from tests.sweep_factories import fake_result

GRID: dict[str, Any] = {"epsilons": [None, 1.0, 3.0], "strategies": ["fedavg", "fedprox"],
                        "partitionings": ["iid", "dirichlet:0.3"], "split_seeds": [43, 0],
                        "seeds": [0], "num_sites": 3}


def test_grid_is_the_full_product_plus_one_baseline_per_data_setting() -> None:
    cells = expand_grid({"num-rounds": 2}, **GRID)

    federated = [c for c in cells if c.kind == FEDERATED]
    baselines = [c for c in cells if c.kind == BASELINES]
    assert len(federated) == 3 * 2 * 2 * 2 * 1
    assert len(baselines) == 2 * 2 * 1
    assert len({c.key for c in cells}) == len(cells)


def test_cells_carry_their_privacy_and_data_settings() -> None:
    cells = expand_grid({"num-rounds": 2}, **GRID)

    by_label = {(c.labels.get("strategy"), c.labels.get("epsilon"), c.labels["partitioning"],
                 c.labels["split-seed"]): c for c in cells if c.kind == FEDERATED}
    dp = RunConfig.from_mapping(by_label[("fedprox", 3.0, "dirichlet", 0)].settings)
    assert (dp.dp_mode, dp.target_epsilon, dp.strategy) == ("target-epsilon", 3.0, "fedprox")
    assert (dp.partitioning, dp.dirichlet_alpha, dp.split_seed, dp.num_rounds) == (
        "dirichlet", 0.3, 0, 2)
    assert RunConfig.from_mapping(by_label[("fedavg", None, "iid", 43)].settings).dp_mode == "off"


def test_a_target_epsilon_above_the_default_budget_raises_the_virtual_sites_budget() -> None:
    cells = expand_grid({}, **{**GRID, "epsilons": [10.0]})

    assert all(c.config.epsilon_budget == 10.0
               for c in cells if c.kind == FEDERATED)


def test_the_key_changes_with_any_setting_and_not_otherwise() -> None:
    one = expand_grid({"num-rounds": 2}, **GRID)
    again = expand_grid({"num-rounds": 2}, **GRID)
    other = expand_grid({"num-rounds": 3}, **GRID)

    assert [c.key for c in one] == [c.key for c in again]
    assert not {c.key for c in one} & {c.key for c in other}


@pytest.mark.parametrize("key", ["seed", "strategy", "target-epsilon", "output-dir", "state-dir"])
def test_settings_the_sweep_owns_cannot_be_set_as_base_overrides(key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        expand_grid({key: 1}, **GRID)


def test_an_invalid_base_setting_fails_before_any_cell_runs() -> None:
    with pytest.raises(ConfigError, match="num-rounds"):
        expand_grid({"num-rounds": 0}, **GRID)


@pytest.mark.parametrize("text,expected", [("natural", ("natural", None)),
                                           ("iid", ("iid", None)),
                                           ("dirichlet:0.5", ("dirichlet", 0.5)),
                                           ("dirichlet-2", ("dirichlet", 2.0))])
def test_partitionings_parse(text: str, expected: tuple[str, float | None]) -> None:
    assert parse_partitioning(text) == expected


@pytest.mark.parametrize("text", ["dirichlet", "dirichlet:0", "dirichlet:-1", "random", "iid:2"])
def test_bad_partitionings_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="partitioning"):
        parse_partitioning(text)


@pytest.mark.parametrize("text,expected", [("none", None), ("off", None), ("1", 1.0),
                                           ("0.1", 0.1)])
def test_epsilons_parse(text: str, expected: float | None) -> None:
    assert parse_epsilon(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "nan", "lots"])
def test_bad_epsilons_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="epsilon"):
        parse_epsilon(text)


def _quiet() -> Progress:
    return Progress(total=1, stream=io.StringIO())


def test_resume_runs_only_the_cells_without_a_cached_result(tmp_path: Path) -> None:
    cells = expand_grid({"num-rounds": 2}, **GRID)
    done = cells[:5]
    (tmp_path / "cells").mkdir()
    for cell in done:  # a hand-made cache, as an interrupted sweep leaves it
        (tmp_path / "cells" / f"{cell.key}.json").write_text(json.dumps(fake_result(cell)))
    ran: list[str] = []

    def runner(cell: Cell, _: Path) -> dict[str, Any]:
        ran.append(cell.key)
        return fake_result(cell)

    results = run_cells(cells, tmp_path, runner=runner, progress=_quiet())

    assert ran == [c.key for c in cells[5:]]
    assert [r["key"] for r in results] == [c.key for c in cells]
    assert all((tmp_path / "cells" / f"{c.key}.json").is_file() for c in cells)
    ran.clear()
    run_cells(cells, tmp_path, runner=runner, progress=_quiet())
    assert ran == []


def test_an_unreadable_cached_cell_is_run_again(tmp_path: Path) -> None:
    cell = expand_grid({}, **GRID)[1]
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / f"{cell.key}.json").write_text('{"key": ')  # half-written

    results = run_cells([cell], tmp_path, runner=lambda c, _: fake_result(c), progress=_quiet())

    assert results[0]["key"] == cell.key


def test_progress_shows_counts_and_an_eta_from_cells_run_now() -> None:
    progress = Progress(total=4, skipped=1, stream=io.StringIO())
    assert "ETA ?" in progress.line()

    progress.advance(10.0)

    assert progress.eta_seconds() == 20.0
    assert "2/4 cells (1 cached)" in progress.line()
    assert "ETA 0m20s" in progress.line()


def _results() -> list[dict[str, Any]]:
    return [fake_result(c) for c in expand_grid({"num-rounds": 2}, **GRID)]


def test_tidy_table_has_one_row_per_cell_and_site_plus_a_mean_row() -> None:
    rows = tidy_rows(_results())

    assert all(tuple(r) == TIDY_COLUMNS for r in rows)
    fed = [r for r in rows if r["kind"] == FEDERATED]
    assert len(fed) == 24 * 3  # two sites and the (mean) row per federated cell
    mean = next(r for r in fed if r["site"] == MEAN_SITE and r["epsilon"] == 3.0)
    assert mean["accuracy"] == pytest.approx(0.6 + 0.06 + 0.005)  # sites at +0 and +0.01
    assert mean["site-epsilon"] == 3.0 and mean["dp"] is True
    local = [r for r in rows if r["kind"] == "local-only"]
    assert {r["site"] for r in local} == {"a", "b", MEAN_SITE}
    assert all(r["accuracy"] == 0.7 for r in local)  # own-site figures, not all-sites ones
    pooled = [r for r in rows if r["kind"] == "pooled"]
    assert {r["site"] for r in pooled} == {"a", "b", MEAN_SITE}


def test_round_table_has_every_round_of_every_federated_cell() -> None:
    rows = round_rows(_results())

    assert all(tuple(r) == ROUND_COLUMNS for r in rows)
    assert len(rows) == 24 * 2


def test_csv_round_trips_the_columns_and_leaves_missing_values_empty(tmp_path: Path) -> None:
    rows = tidy_rows(_results())
    write_csv(tmp_path / "results.csv", rows, TIDY_COLUMNS)

    with (tmp_path / "results.csv").open() as handle:
        read = list(csv.DictReader(handle))
    assert tuple(read[0]) == TIDY_COLUMNS and len(read) == len(rows)
    assert next(r for r in read if r["kind"] == "pooled")["epsilon"] == ""


def test_plots_are_written(tmp_path: Path) -> None:
    results = _results()

    paths = plot_all(tmp_path, tidy_rows(results), round_rows(results))

    assert [p.name for p in paths] == list(PLOTS)
    assert all(p.stat().st_size > 10_000 for p in paths)
