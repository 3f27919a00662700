"""Server-side aggregates: hand-computed figures; epsilon is never averaged across sites."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
)

from fedcare.common.config import STRATEGIES, RunConfig
from fedcare.server import report as report_module
from fedcare.server.report import (
    MAX_SITE_LINES,
    PLOT_EPSILON,
    RunRecorder,
    epsilon_band,
    format_site_table,
    plot_report,
    site_table,
    summarize_evaluation,
    write_report,
)
from fedcare.server.strategies import (
    aggregate_evaluate_metrics,
    aggregate_train_metrics,
    make_strategy,
)


def reply(**metrics: float) -> RecordDict:
    return RecordDict({"metrics": MetricRecord(dict(metrics)),
                       "site": ConfigRecord({"name": "x"})})


def test_mean_site_accuracy_is_unweighted_and_pooled_accuracy_is_weighted() -> None:
    per_site = {"a": {"num-examples": 100, "accuracy": 0.9, "auc": 0.8},
                "b": {"num-examples": 10, "accuracy": 0.5, "auc": float("nan")}}

    summary = summarize_evaluation(per_site)

    assert summary["mean-site-accuracy"] == pytest.approx(0.7)  # (0.9 + 0.5) / 2
    assert summary["pooled-accuracy"] == pytest.approx(95 / 110)  # (90 + 5) / 110
    assert summary["mean-site-auc"] == pytest.approx(0.8)  # b has one class: no AUC
    assert summary["sites-with-auc"] == 1


def test_undefined_auc_recorded_as_none_is_skipped_not_a_crash() -> None:
    # A site whose held-out rows are all one class has no AUC; the recorder keeps it as
    # None (JSON null), and the round summary must still work.
    per_site = {"a": {"num-examples": 10, "accuracy": 0.8, "auc": 0.7},
                "b": {"num-examples": 16, "accuracy": 1.0, "auc": None}}

    summary = summarize_evaluation(per_site)

    assert summary["mean-site-auc"] == pytest.approx(0.7)
    assert summary["sites-with-auc"] == 1
    assert summary["mean-site-accuracy"] == pytest.approx(0.9)


def test_train_aggregate_reports_the_largest_site_epsilon_not_an_average() -> None:
    replies = [reply(**{"num-examples": 100, "epsilon": 0.5}),
               reply(**{"num-examples": 300, "epsilon": 0.9})]

    out = aggregate_train_metrics(replies, "num-examples")

    assert out["epsilon-lifetime-most-spent-site"] == 0.9
    assert out["num-examples"] == 400
    assert "epsilon" not in out


def test_evaluate_aggregate_uses_the_same_summary() -> None:
    replies = [reply(**{"num-examples": 4, "accuracy": 1.0, "auc": 1.0}),
               reply(**{"num-examples": 4, "accuracy": 0.5, "auc": 0.5})]

    out = aggregate_evaluate_metrics(replies, "num-examples")

    assert out["mean-site-accuracy"] == pytest.approx(0.75)
    assert out["mean-site-auc"] == pytest.approx(0.75)


@pytest.mark.parametrize(("name", "kind"), [
    ("fedavg", FedAvg), ("fedprox", FedProx), ("fedadam", FedAdam), ("fedyogi", FedYogi),
    ("fedmedian", FedMedian), ("fedtrimmedavg", FedTrimmedAvg), ("krum", Krum)])
def test_every_configured_strategy_is_flowers_own(name: str, kind: type) -> None:
    strategy = make_strategy(RunConfig(strategy=name, min_sites=3))

    assert type(strategy) is kind
    assert strategy.min_train_nodes == 3  # type: ignore[attr-defined]


def test_strategy_list_and_factories_agree() -> None:
    assert {type(make_strategy(RunConfig(strategy=s))).__name__.lower() for s in STRATEGIES} == \
        set(STRATEGIES)


def test_site_table_keeps_latest_figures_and_counts_failures() -> None:
    rounds = [
        {"train": {"a": {"num-examples": 10, "epsilon": 0.4, "delta": 1e-3}},
         "evaluate": {"a": {"num-examples": 5, "accuracy": 0.6, "auc": None}},
         "failures": [{"site": "b", "phase": "train", "code": 100, "reason": "budget"}]},
        {"train": {"a": {"num-examples": 10, "epsilon": 0.7, "delta": 1e-3}},
         "evaluate": {"a": {"num-examples": 5, "accuracy": 0.8, "auc": 0.9}},
         "failures": [{"site": "b", "phase": "train", "code": 100, "reason": "budget"}]},
    ]

    table = site_table(rounds)

    assert table["a"]["epsilon"] == 0.7 and table["a"]["rounds-trained"] == 2
    assert table["a"]["accuracy"] == 0.8
    assert table["b"]["failures"] == 2
    text = format_site_table({"sites": table})
    assert "0.700" in text and "1e-03" in text and "n/a" in text
    assert math.isfinite(table["a"]["auc"])


def test_report_with_no_defined_auc_anywhere_is_still_written(tmp_path) -> None:
    # Every site's held-out rows are one class: mean-site-auc is NaN, which strict JSON
    # cannot hold. The report must still be written, with null for the undefined figure.
    recorder = RunRecorder(run_name="r", run_config={"epsilon-budget": 5.0, "delta": 1e-3})
    recorder.start_round(1)
    recorder.rounds[1].evaluate = {"a": {"num-examples": 4, "accuracy": 1.0, "auc": None}}
    recorder.end_round(1)
    report = recorder.to_dict(final=summarize_evaluation(recorder.rounds[1].evaluate))

    path = write_report(tmp_path, report)

    saved = json.loads(path.read_text())
    assert saved["final"]["mean-site-auc"] is None
    assert saved["rounds"][0]["global"]["mean-site-auc"] is None
    assert (tmp_path / "global-metrics.png").stat().st_size > 0


def _many_site_rounds(sites: int) -> list[dict[str, Any]]:
    return [{"round": r, "global": {"mean-site-accuracy": 0.5},
             "train": {f"site-{k}": {"epsilon": 0.1 * r * (1 + k)} for k in range(sites)},
             "evaluate": {}, "failures": []} for r in (1, 2)]


def test_epsilon_band_is_each_rounds_smallest_and_largest_site() -> None:
    rounds = _many_site_rounds(3)
    rounds[1]["train"]["site-1"] = {}  # a site that reported no DP spend in round 2

    xs, low, high = epsilon_band(rounds)

    assert xs == [1, 2]
    assert low == pytest.approx([0.1, 0.2]) and high == pytest.approx([0.3, 0.6])


def test_plot_of_many_sites_is_written_without_a_line_per_site(tmp_path: Path) -> None:
    sites = MAX_SITE_LINES + 1
    rounds = _many_site_rounds(sites)
    report = {"run": "many", "rounds": rounds, "config": {"delta": 1e-3, "epsilon-budget": 10},
              "sites": {f"site-{k}": {} for k in range(sites)}}

    plot_report(tmp_path, report)

    assert (tmp_path / PLOT_EPSILON).stat().st_size > 0


def test_a_failed_plotting_prefetch_is_left_to_the_report(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    def broken() -> None:
        raise ImportError("no matplotlib here")

    monkeypatch.setattr(report_module, "_import_plotting", broken)

    report_module._prefetch()  # logs at debug level; nothing raised in the thread

    with pytest.raises(ImportError, match="no matplotlib"):
        report_module.plot_report(Path("unused"), {})
