"""The site validation report: figures checked against scikit-learn and by hand; files and
escaping checked as a browser would see them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

from fedcare.hospital.validation_report import (
    HTML_FILENAME,
    JSON_FILENAME,
    PLOT_CALIBRATION,
    PLOT_ROC,
    PLOT_ROUNDS,
    TOO_FEW,
    build_validation_report,
    calibration_bins,
    roc_auc,
    wilson_interval,
)

HOSTILE_SITE = "<script>alert('x')</script> & co"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODEL_INFO = {"run": "run-7", "version": "0.1.0", "epsilon": 1.25}


def synthetic(n: int, *, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Raw features (age, sex, one more), 0/1 labels and informative continuous risks."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(np.int64)
    risks = 1 / (1 + np.exp(-(rng.normal(0, 1.2, n) + 1.5 * labels - 0.6)))
    ages = rng.uniform(25, 90, n).round(1)
    ages[:4] = np.nan  # not recorded
    ages[4] = 205.0  # beyond the last band
    features = pd.DataFrame({"age": ages, "sex": rng.integers(0, 2, n).astype(float),
                             "chol": rng.normal(220, 40, n)})
    return features, labels, risks


def run_report(*rounds: dict[str, Any]) -> dict[str, Any]:
    return {"format": "fedcare-run-report", "version": 1, "run": "run-7",
            "privacy": {HOSTILE_SITE: "eps=1.25 at delta=1e-03 (whole run, RDP)",
                        "site-b": "eps=0.90 at delta=1e-03 (whole run, RDP)"},
            "rounds": list(rounds)}


def global_round(r: int, acc: float, auc: float) -> dict[str, Any]:
    return {"round": r, "global": {"sites": 2, "num-examples": 80, "mean-site-accuracy": acc,
                                   "pooled-accuracy": acc + 0.01, "mean-site-auc": auc,
                                   "sites-with-auc": 2 if math.isfinite(auc) else 0}}


def build(out_dir: Path, features: pd.DataFrame, labels: np.ndarray, risks: np.ndarray,
          **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"site": "site-a", "features": features, "labels": labels,
                              "risks": risks, "model_info": MODEL_INFO,
                              "privacy_statement": "eps=1.25 at delta=1e-03 (whole run)",
                              "run_report": None, "out_dir": out_dir}
    return build_validation_report(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[dict[str, Any], Path, pd.DataFrame, np.ndarray, np.ndarray]:
    features, labels, risks = synthetic(400, seed=20240607)
    out = tmp_path_factory.mktemp("report")
    report = build(out, features, labels, risks, site=HOSTILE_SITE, privacy_statement=None,
                   run_report=run_report(global_round(1, 0.6, math.nan),
                                         {"round": 2, "global": {}},
                                         global_round(3, 0.75, 0.81)),
                   model_info={**MODEL_INFO, "note": "<b>bold</b>"})
    return report, out, features, labels, risks


# --------------------------------------------------------------------------- files


def test_report_writes_json_html_and_three_pngs(made: Any) -> None:
    report, out, *_ = made

    for name in (PLOT_ROC, PLOT_CALIBRATION, PLOT_ROUNDS):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    assert json.loads((out / JSON_FILENAME).read_text()) == report
    assert (out / HTML_FILENAME).stat().st_size > 0
    assert not list(out.glob("*.tmp"))


def test_without_a_run_report_no_rounds_plot_is_left_behind(tmp_path: Path) -> None:
    features, labels, risks = synthetic(60, seed=1)
    (tmp_path / PLOT_ROUNDS).write_bytes(b"stale")

    report = build(tmp_path, features, labels, risks)

    assert report["federated-rounds"] == []
    assert report["files"]["rounds"] is None
    assert not (tmp_path / PLOT_ROUNDS).exists()
    assert f"src='{PLOT_ROUNDS}'" not in (tmp_path / HTML_FILENAME).read_text()


# --------------------------------------------------------------------------- numbers


def test_headline_figures_equal_scikit_learn(made: Any) -> None:
    report, _, _, labels, risks = made
    predicted = (risks >= 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()

    assert (report["n"], report["positives"]) == (400, int(labels.sum()))
    assert report["confusion-matrix"] == {"true-positive": tp, "false-negative": fn,
                                          "true-negative": tn, "false-positive": fp}
    assert report["accuracy"]["value"] == pytest.approx(accuracy_score(labels, predicted))
    assert report["sensitivity"]["value"] == pytest.approx(tp / (tp + fn))
    assert report["specificity"]["value"] == pytest.approx(tn / (tn + fp))
    assert report["ppv"]["value"] == pytest.approx(tp / (tp + fp))
    assert report["npv"]["value"] == pytest.approx(tn / (tn + fn))
    assert report["auc"] == pytest.approx(roc_auc_score(labels, risks), abs=1e-12)
    assert report["calibration"]["brier"] == pytest.approx(brier_score_loss(labels, risks))


def test_roc_points_equal_scikit_learn(made: Any) -> None:
    report, _, _, labels, risks = made
    fpr, tpr, thresholds = roc_curve(labels, risks)

    points = report["roc"]

    assert [p["fpr"] for p in points] == pytest.approx(fpr.tolist())
    assert [p["tpr"] for p in points] == pytest.approx(tpr.tolist())
    assert points[0]["threshold"] is None  # the (0, 0) start: nobody predicted positive
    assert [p["threshold"] for p in points[1:]] == pytest.approx(thresholds[1:].tolist())


def test_auc_with_tied_risks_equals_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    risks = np.round(np.clip(0.35 + 0.3 * labels + rng.normal(0, 0.25, 500), 0, 1), 1)

    assert roc_auc(labels, risks) == pytest.approx(roc_auc_score(labels, risks), abs=1e-12)


def test_calibration_bins_and_ece_equal_an_independent_computation(made: Any) -> None:
    report, _, _, labels, risks = made
    prob_true, prob_pred = calibration_curve(labels, risks, n_bins=10, strategy="uniform")
    counts, _ = np.histogram(risks, bins=10, range=(0, 1))
    positives, _ = np.histogram(risks, bins=10, range=(0, 1), weights=labels)
    risk_sums, _ = np.histogram(risks, bins=10, range=(0, 1), weights=risks)
    ece = np.sum(np.abs(positives - risk_sums)) / len(labels)

    bins = report["calibration"]["bins"]
    filled = [b for b in bins if b["count"]]

    assert [b["count"] for b in bins] == counts.tolist()
    assert sum(b["count"] for b in bins) == report["n"]
    assert [b["observed-rate"] for b in filled] == pytest.approx(prob_true.tolist())
    assert [b["mean-predicted"] for b in filled] == pytest.approx(prob_pred.tolist())
    assert report["calibration"]["expected-calibration-error"] == pytest.approx(ece)


def test_calibration_bins_are_closed_below_and_the_last_includes_one() -> None:
    bins = calibration_bins(np.array([0, 1, 1, 0, 1]), np.array([0.0, 0.1, 0.3, 0.99, 1.0]))

    assert [b["count"] for b in bins] == [1, 1, 0, 1, 0, 0, 0, 0, 0, 2]
    assert bins[2]["mean-predicted"] is None and bins[2]["observed-rate"] is None
    assert bins[9]["observed-rate"] == 0.5


def test_sensitivity_and_specificity_by_hand(tmp_path: Path) -> None:
    # Positives' risks 0.9, 0.5 (on the threshold: counts as flagged), 0.7, 0.2 -> TP 3, FN 1.
    # Negatives' risks 0.6 (flagged), 0.4, 0.3, 0.2, 0.1, 0.05 -> FP 1, TN 5.
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    risks = np.array([0.9, 0.5, 0.7, 0.2, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05])
    features = pd.DataFrame({"age": [50.0] * 10, "sex": [0.0] * 10})

    report = build(tmp_path, features, labels, risks, threshold=0.5)

    assert report["confusion-matrix"] == {"true-positive": 3, "false-negative": 1,
                                          "true-negative": 5, "false-positive": 1}
    assert report["sensitivity"]["value"] == 3 / 4
    assert report["specificity"]["value"] == 5 / 6
    assert report["ppv"]["value"] == 3 / 4
    assert report["npv"]["value"] == 5 / 6
    assert report["accuracy"]["value"] == 8 / 10
    # Pairs won: 0.9 and 0.7 beat all 6, 0.5 beats 5, 0.2 beats 2 and ties 1 -> 19.5 / 24.
    assert report["auc"] == pytest.approx(19.5 / 24)
    assert any(TOO_FEW in w for w in report["warnings"])  # 10 rows in all


def test_wilson_interval_matches_newcombe_1998_table() -> None:
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (score).
    for (successes, total), (low, high) in {(81, 263): (0.2553, 0.3662),
                                            (15, 148): (0.0624, 0.1605),
                                            (0, 20): (0.0, 0.1611),
                                            (1, 29): (0.0061, 0.1718)}.items():
        interval = wilson_interval(successes, total)
        assert interval is not None
        assert interval == pytest.approx((low, high), abs=5e-5)
    assert wilson_interval(0, 0) is None


# --------------------------------------------------------------------------- subgroups


def test_subgroup_counts_and_positives_sum_to_the_whole(made: Any) -> None:
    report, _, _, labels, _ = made

    for part in ("sex", "age"):
        groups = report["subgroups"][part]["groups"]
        assert sum(g["count"] for g in groups) == report["n"], part
        assert sum(g["positives"] for g in groups) == int(labels.sum()), part
    names = [g["group"] for g in report["subgroups"]["age"]["groups"]]
    assert names == ["age 0 to under 45", "age 45 to under 55", "age 55 to under 65",
                     "age 65 and over", "age outside [0, 200)", "age not recorded"]
    assert [g["count"] for g in report["subgroups"]["age"]["groups"]][-2:] == [1, 4]


def test_subgroup_figures_equal_scikit_learn_on_that_subgroup(made: Any) -> None:
    report, _, features, labels, risks = made
    male = features["sex"].to_numpy() == 1
    group = next(g for g in report["subgroups"]["sex"]["groups"] if g["group"] == "sex = 1")

    assert group["count"] == int(male.sum())
    assert group["auc"] == pytest.approx(roc_auc_score(labels[male], risks[male]))
    assert group["accuracy"] == pytest.approx(accuracy_score(labels[male], risks[male] >= 0.5))


def test_one_class_subgroup_gets_auc_none_not_a_crash(tmp_path: Path) -> None:
    features, labels, risks = synthetic(80, seed=5)
    labels = np.where(features["sex"].to_numpy() == 1, 0, labels)  # no outcome among sex 1

    report = build(tmp_path, features, labels, risks)

    group = next(g for g in report["subgroups"]["sex"]["groups"] if g["group"] == "sex = 1")
    assert group["auc"] is None and group["sensitivity"] is None
    assert group["specificity"] is not None
    assert "one outcome class only: AUC undefined" in group["warnings"]


def test_one_class_overall_gives_no_auc_and_still_writes_every_file(tmp_path: Path) -> None:
    features, _, risks = synthetic(30, seed=6)

    report = build(tmp_path, features, np.zeros(30, dtype=int), risks)

    assert report["auc"] is None and report["roc"] is None
    assert report["sensitivity"]["value"] is None and report["sensitivity"]["ci95"] is None
    assert any("one outcome class only" in w for w in report["warnings"])
    assert (tmp_path / PLOT_ROC).read_bytes()[:8] == PNG_MAGIC


def test_small_subgroups_are_flagged_too_few_to_judge(made: Any) -> None:
    report, *_ = made
    groups = {g["group"]: g for g in report["subgroups"]["age"]["groups"]}

    assert groups["age not recorded"]["too-few"] is True
    assert any(w.startswith(TOO_FEW) for w in groups["age not recorded"]["warnings"])
    assert groups["age 65 and over"]["too-few"] is False
    assert any("age not recorded" in w and TOO_FEW in w for w in report["warnings"])


def test_absent_or_unrequested_columns_are_noted_not_guessed(tmp_path: Path) -> None:
    features, labels, risks = synthetic(40, seed=7)

    report = build(tmp_path, features.drop(columns=["sex"]), labels, risks, age_column=None)

    assert report["subgroups"]["sex"] == {"column": "sex", "available": False,
                                          "note": "features have no column 'sex'"}
    assert report["subgroups"]["age"]["note"] == "not requested"


# --------------------------------------------------------------------------- run, privacy


def test_federated_rounds_come_from_the_run_report_global_metrics(made: Any) -> None:
    report, *_ = made

    assert report["federated-rounds"] == [
        {"round": 1, "mean-site-accuracy": 0.6, "pooled-accuracy": 0.61, "mean-site-auc": None,
         "sites": 2, "sites-with-auc": 0, "num-examples": 80},
        {"round": 3, "mean-site-accuracy": 0.75, "pooled-accuracy": 0.76,
         "mean-site-auc": 0.81, "sites": 2, "sites-with-auc": 2, "num-examples": 80}]
    assert report["run"] == "run-7"


def test_privacy_statement_falls_back_to_the_run_report_and_is_never_silently_absent(
        made: Any, tmp_path: Path) -> None:
    report, *_ = made
    features, labels, risks = synthetic(40, seed=8)

    bare = build(tmp_path, features, labels, risks, privacy_statement=None)

    assert report["privacy"]["statement"] == "eps=1.25 at delta=1e-03 (whole run, RDP)"
    assert report["privacy"]["source"] == "run report"
    assert bare["privacy"]["statement"] is None
    assert any("no privacy statement" in w for w in bare["warnings"])


def test_a_model_from_another_run_is_called_out(tmp_path: Path) -> None:
    features, labels, risks = synthetic(40, seed=9)

    report = build(tmp_path, features, labels, risks, model_info={"run": "run-1"},
                   run_report=run_report(global_round(1, 0.7, 0.8)))

    assert any("may not belong together" in w for w in report["warnings"])


# --------------------------------------------------------------------------- HTML


def test_html_shows_key_numbers_and_escapes_every_user_string(made: Any) -> None:
    report, out, *_ = made
    page = (out / HTML_FILENAME).read_text(encoding="utf-8")

    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page
    assert "<script" not in page  # neither the site name nor any script of ours
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    for number in (report["auc"], report["calibration"]["brier"],
                   report["sensitivity"]["value"], report["specificity"]["value"]):
        assert f"{number:.3f}" in page
    assert f"{report['n']} patients" in page
    assert "eps=1.25 at delta=1e-03 (whole run, RDP)" in page
    assert "<link" not in page and "http" not in page  # no external CSS, JS or images
    for name in (PLOT_ROC, PLOT_CALIBRATION, PLOT_ROUNDS):
        assert f"<img src='{name}'" in page


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(("change", "message"), [
    ({"labels": np.ones(39, dtype=int)},
     r"labels must have one entry per row of features \(40\); got 39"),
    ({"risks": np.r_[np.full(39, 0.5), 1.2]}, r"risks must be numbers in \[0, 1\]; got 1\.2"),
    ({"risks": np.r_[np.nan, np.full(39, 0.5)]}, r"risks must be numbers in \[0, 1\]; got nan"),
    ({"labels": np.r_[2, np.zeros(39, dtype=int)]},
     r"labels must be 0 or 1; got 2 at position 0"),
    ({"threshold": 1.5}, r"threshold must be a number in \(0, 1\); got 1\.5"),
    ({"age_bands": (65, 45)}, r"age_bands must be at least 2 finite, increasing edges"),
    ({"site": ""}, r"site must be a non-empty string; got ''"),
    ({"model_info": {"epsilon": float("inf")}}, r"model_info must be JSON-serializable"),
])
def test_bad_inputs_raise_value_error_naming_argument_and_value(
        tmp_path: Path, change: dict[str, Any], message: str) -> None:
    features, labels, risks = synthetic(40, seed=10)
    out = tmp_path / "never"

    with pytest.raises(ValueError, match=r"^build_validation_report: .*" + message):
        build(out, **{"features": features, "labels": labels, "risks": risks, **change})
    assert not out.exists()  # nothing is written before the inputs are sound


def test_every_input_problem_is_reported_at_once(tmp_path: Path) -> None:
    features, labels, risks = synthetic(40, seed=11)

    with pytest.raises(ValueError) as caught:
        build(tmp_path, features, labels[:-1], np.r_[risks[:-1], 3.0], threshold=0)

    assert all(part in str(caught.value) for part in ("labels must", "risks must",
                                                      "threshold must"))
