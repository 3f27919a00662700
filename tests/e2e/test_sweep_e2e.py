"""A real two-cell sweep (slow: one Flower simulation), then a rerun that runs nothing."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fedcare.research import sweep

pytestmark = pytest.mark.slow


def test_two_cell_sweep_writes_tables_and_plots_and_resumes(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    grid = {"epsilons": [1.0], "strategies": ["fedavg"], "partitionings": ["iid"],
            "split_seeds": [43], "seeds": [0], "num_sites": 2}
    base = {"num-rounds": 2, "hidden-units": "16", "secure-noise": False}

    result = sweep.run_sweep(base, out_dir=tmp_path, **grid)

    assert result["cells"] == 2  # the federated cell and its baselines
    with (tmp_path / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    fed = [r for r in rows if r["kind"] == "federated"]
    assert {r["site"] for r in fed} == {"site-0", "site-1", sweep.MEAN_SITE}
    assert all(0.0 < float(r["site-epsilon"]) <= 1.0 + 1e-6 for r in fed)
    assert {r["kind"] for r in rows} == {"federated", "local-only", "pooled"}
    with (tmp_path / "rounds.csv").open() as handle:
        assert [r["round"] for r in csv.DictReader(handle)] == ["1", "2"]
    assert all((tmp_path / name).is_file() for name in sweep.PLOTS)
    assert not any((tmp_path / "runs").iterdir())  # run folders are dropped once cached

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached cell was run again")

    monkeypatch.setattr(sweep, "run_cell", must_not_run)
    again = sweep.run_sweep(base, out_dir=tmp_path, **grid)
    assert again["rows"] == result["rows"]
