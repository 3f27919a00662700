"""What a clinician or a monitoring board reads about the global model on one site's rows.

:func:`build_validation_report` takes the site's held-out rows (raw feature frame, 0/1
labels) and the model's risks for them, and writes into ``out_dir``:

* ``validation-report.json``: the record (format ``fedcare-validation-report``, version 1);
* ``validation-report.html``: the same for people, self-contained (inline CSS, no scripts,
  images by relative path, every piece of text escaped);
* ``roc.png``, ``calibration.png`` and, when a run report is given, ``rounds.png``.

Conventions (stated in the report too): a patient is predicted positive when
``risk >= threshold`` (as in training's evaluation); proportions carry 95% Wilson score
intervals; AUC, sensitivity, specificity, PPV and NPV are ``None`` when undefined (for
example AUC when the rows hold one class only), never a crash and never a made-up 0.5.
Calibration uses 10 equal-width risk bins ``[k/10, (k+1)/10)``; the last bin includes 1.

The metrics are computed here with numpy (not scikit-learn), so the tests can check them
against scikit-learn as an independent reference.

The report is computed from the site's own patient rows **without** differential
privacy: small subgroups and the ROC thresholds can be disclosive. It is for the site's
own clinicians and governance; it is not meant to leave the site unreviewed.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcare.common.files import write_text_atomic
from fedcare.data.schema import format_number

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_BINS",
    "HTML_FILENAME",
    "JSON_FILENAME",
    "MIN_SUBGROUP_ROWS",
    "PLOT_CALIBRATION",
    "PLOT_ROC",
    "PLOT_ROUNDS",
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "TOO_FEW",
    "build_validation_report",
    "calibration_bins",
    "confusion_counts",
    "render_html",
    "roc_auc",
    "roc_points",
    "wilson_interval",
]

REPORT_FORMAT = "fedcare-validation-report"
REPORT_VERSION = 1
JSON_FILENAME = "validation-report.json"
HTML_FILENAME = "validation-report.html"
PLOT_ROC = "roc.png"
PLOT_CALIBRATION = "calibration.png"
PLOT_ROUNDS = "rounds.png"
CALIBRATION_BINS = 10
MIN_SUBGROUP_ROWS = 20
"""A group (or the whole set) with fewer rows is flagged :data:`TOO_FEW`."""
TOO_FEW = "too few to judge"
OPEN_AGE_EDGE = 120.0
"""An age band whose upper edge is at least this reads "<lo> and over"."""
Z_95 = 1.959963984540054  # two-sided 95% standard normal quantile
_WHERE = "build_validation_report"
_ROUND_KEYS = ("mean-site-accuracy", "pooled-accuracy", "mean-site-auc", "sites",
               "sites-with-auc", "num-examples")
_ROUND_COUNTS = frozenset({"sites", "sites-with-auc", "num-examples"})
_DISCLOSURE = ("Computed from this site's own patient rows without differential privacy "
               "(small subgroups and ROC thresholds can be disclosive): for the site's "
               "clinicians and governance, not for release without review.")


# --------------------------------------------------------------------------- metrics


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def wilson_interval(successes: int, total: int, *, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval for ``successes / total`` (``None`` when ``total`` is 0)."""
    if total <= 0:
        return None
    p = successes / total
    denom = 1.0 + z * z / total
    center = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def confusion_counts(labels: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """True/false positives/negatives of 0/1 ``predicted`` against 0/1 ``labels``."""
    y = np.asarray(labels) == 1
    p = np.asarray(predicted) == 1
    return {"true-positive": int(np.sum(y & p)), "false-negative": int(np.sum(y & ~p)),
            "true-negative": int(np.sum(~y & ~p)), "false-positive": int(np.sum(~y & p))}


def roc_points(labels: np.ndarray, risks: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(fpr, tpr, thresholds)`` of the ROC curve, or ``None`` with one class only.

    One point per distinct risk (descending), collinear interior points dropped, starting
    at ``(0, 0)`` with threshold ``inf`` (nobody predicted positive); the point at
    threshold ``t`` counts ``risk >= t`` as positive.
    """
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(risks, dtype=np.float64)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last_of_each]
    fps = last_of_each + 1 - tps
    thresholds = s[last_of_each]
    if len(tps) > 2:
        keep = np.flatnonzero(np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0),
                                    True])
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    tps, fps = np.r_[0, tps], np.r_[0, fps]
    return fps / negatives, tps / positives, np.r_[np.inf, thresholds]


def roc_auc(labels: np.ndarray, risks: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count one half); ``None`` with one class only."""
    curve = roc_points(labels, risks)
    if curve is None:
        return None
    fpr, tpr, _ = curve
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def calibration_bins(labels: np.ndarray, risks: np.ndarray, *, bins: int = CALIBRATION_BINS
                     ) -> list[dict[str, Any]]:
    """Equal-width reliability bins ``[k/bins, (k+1)/bins)`` (the last includes 1).

    Each bin: its bounds, ``count``, ``positives``, ``mean-predicted`` and
    ``observed-rate`` (both ``None`` for an empty bin).
    """
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(risks, dtype=np.float64)
    edges = np.arange(bins + 1) / bins  # k / bins is exact where a person would expect it
    which = np.searchsorted(edges[1:-1], s, side="right")
    out: list[dict[str, Any]] = []
    for k in range(bins):
        members = which == k
        count = int(members.sum())
        out.append({
            "lower": float(edges[k]), "upper": float(edges[k + 1]), "count": count,
            "positives": int(y[members].sum()),
            "mean-predicted": float(s[members].mean()) if count else None,
            "observed-rate": float(y[members].mean()) if count else None,
        })
    return out


def _expected_calibration_error(bins: Sequence[Mapping[str, Any]], n: int) -> float:
    return float(sum(b["count"] / n * abs(b["observed-rate"] - b["mean-predicted"])
                     for b in bins if b["count"]))


def _with_interval(successes: int, total: int) -> dict[str, Any]:
    interval = wilson_interval(successes, total)
    return {"value": _ratio(successes, total), "successes": successes, "total": total,
            "ci95": None if interval is None else list(interval)}


def _performance(labels: np.ndarray, risks: np.ndarray, threshold: float) -> dict[str, Any]:
    predicted = (risks >= threshold).astype(np.int64)
    c = confusion_counts(labels, predicted)
    tp, fn = c["true-positive"], c["false-negative"]
    tn, fp = c["true-negative"], c["false-positive"]
    return {
        "accuracy": _with_interval(tp + tn, len(labels)),
        "sensitivity": _with_interval(tp, tp + fn),
        "specificity": _with_interval(tn, tn + fp),
        "ppv": _with_interval(tp, tp + fp),
        "npv": _with_interval(tn, tn + fn),
        "confusion-matrix": c,
    }


def _group(name: str, labels: np.ndarray, risks: np.ndarray, threshold: float,
           min_rows: int, **extra: Any) -> dict[str, Any]:
    perf = _performance(labels, risks, threshold)
    count = len(labels)
    positives = int(labels.sum())
    warnings: list[str] = []
    if count == 0:
        warnings.append("no patients in this group")
    elif count < min_rows:
        warnings.append(f"{TOO_FEW}: {count} rows < {min_rows}")
    if count > 0 and (positives == 0 or positives == count):
        warnings.append("one outcome class only: AUC undefined")
    return {"group": name, **extra, "count": count, "positives": positives,
            "accuracy": perf["accuracy"]["value"],
            "sensitivity": perf["sensitivity"]["value"],
            "specificity": perf["specificity"]["value"],
            "auc": roc_auc(labels, risks),
            "too-few": count < min_rows, "warnings": warnings}


# --------------------------------------------------------------------------- inputs


def _describe(value: object) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_bad(mask: np.ndarray, values: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    return (f"{format_number(float(values[rows[0]]))} at position {int(rows[0])} "
            f"({len(rows)} such value(s))")


def _as_vector(name: str, value: Any, problems: list[str]) -> np.ndarray | None:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        problems.append(f"{name} must be a 1-D array of numbers; got {_describe(value)}")
        return None
    if array.ndim != 1:
        problems.append(f"{name} must be a 1-D array of numbers; got shape {array.shape}")
        return None
    return array


def _check_inputs(*, site: Any, features: Any, labels: Any, risks: Any, threshold: Any,
                  model_info: Any, privacy_statement: Any, run_report: Any,
                  age_column: Any, sex_column: Any, age_bands: Any, min_subgroup_rows: Any,
                  ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Every problem with the arguments, raised once as ``ValueError``."""
    problems: list[str] = []
    if not isinstance(site, str) or not site.strip():
        problems.append(f"site must be a non-empty string; got {_describe(site)}")
    frame_ok = isinstance(features, pd.DataFrame)
    if not frame_ok:
        problems.append(f"features must be a pandas DataFrame; got {type(features).__name__}")
    y = _as_vector("labels", labels, problems)
    r = _as_vector("risks", risks, problems)
    if y is not None:
        bad = ~np.isin(y, (0.0, 1.0))
        if bad.any():
            problems.append(f"labels must be 0 or 1; got {_first_bad(bad, y)}")
    if r is not None:
        bad = ~np.isfinite(r) | (r < 0) | (r > 1)
        if bad.any():
            problems.append(f"risks must be numbers in [0, 1]; got {_first_bad(bad, r)}")
    n = len(features) if frame_ok else None
    for name, vector in (("labels", y), ("risks", r)):
        if vector is not None and n is not None and len(vector) != n:
            problems.append(f"{name} must have one entry per row of features ({n}); "
                            f"got {len(vector)}")
    if n == 0:
        problems.append("features must hold at least one row; got 0")
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating))
            or not 0.0 < float(threshold) < 1.0):
        problems.append(f"threshold must be a number in (0, 1); got {_describe(threshold)}")
    if not isinstance(model_info, Mapping):
        problems.append(f"model_info must be a mapping; got {type(model_info).__name__}")
    else:
        try:
            json.dumps(dict(model_info), allow_nan=False)
        except (TypeError, ValueError) as exc:
            problems.append(f"model_info must be JSON-serializable (finite numbers); got {exc}")
    if privacy_statement is not None and not isinstance(privacy_statement, str):
        problems.append(f"privacy_statement must be a string or None; got "
                        f"{type(privacy_statement).__name__}")
    if run_report is not None and not (
            isinstance(run_report, Mapping) and isinstance(run_report.get("rounds", []), list)):
        problems.append("run_report must be a run report mapping with a 'rounds' list, or None; "
                        f"got {_describe(run_report)}")
    for name, column in (("age_column", age_column), ("sex_column", sex_column)):
        if column is not None and not isinstance(column, str):
            problems.append(f"{name} must be a column name or None; got {_describe(column)}")
    try:
        bands = [float(b) for b in age_bands]
    except (TypeError, ValueError):
        bands = []
    if (len(bands) < 2 or not all(math.isfinite(b) for b in bands)
            or any(b >= c for b, c in pairwise(bands))):
        problems.append(f"age_bands must be at least 2 finite, increasing edges; got "
                        f"{_describe(age_bands)}")
    if (isinstance(min_subgroup_rows, bool) or not isinstance(min_subgroup_rows, int)
            or min_subgroup_rows < 1):
        problems.append(f"min_subgroup_rows must be an integer >= 1; got "
                        f"{_describe(min_subgroup_rows)}")
    if frame_ok and isinstance(age_column, str) and age_column in features.columns:
        ages = pd.to_numeric(features[age_column], errors="coerce")
        unreadable = ages.isna() & features[age_column].notna()
        if unreadable.any():
            row = int(np.flatnonzero(unreadable.to_numpy())[0])
            problems.append(f"features[{age_column!r}] must hold numbers (or be empty); got "
                            f"{_describe(features[age_column].iloc[row])} at position {row}")
    if problems:
        raise ValueError(f"{_WHERE}: " + "; ".join(problems))
    assert y is not None and r is not None  # for mypy: problems would have been raised
    return features.reset_index(drop=True), y.astype(np.int64), r, np.asarray(bands)


# --------------------------------------------------------------------------- sections


def _subgroups_by_sex(features: pd.DataFrame, column: str | None, labels: np.ndarray,
                      risks: np.ndarray, threshold: float, min_rows: int) -> dict[str, Any]:
    if column is None:
        return {"column": None, "available": False, "note": "not requested"}
    if column not in features.columns:
        return {"column": column, "available": False,
                "note": f"features have no column {column!r}"}
    values = features[column]
    missing = values.isna().to_numpy()
    present = values[~missing]
    try:
        codes = sorted(set(present.tolist()))
    except TypeError:  # mixed types: order as text
        codes = sorted(set(present.tolist()), key=str)
    groups = []
    for code in codes:
        mask = (values == code).to_numpy() & ~missing
        shown = format_number(float(code)) if isinstance(code, (int, float)) else str(code)
        groups.append(_group(f"{column} = {shown}", labels[mask], risks[mask], threshold,
                             min_rows, value=code if isinstance(code, (int, float, str))
                             else str(code)))
    if missing.any():
        groups.append(_group(f"{column} not recorded", labels[missing], risks[missing],
                             threshold, min_rows, value=None))
    return {"column": column, "available": True, "groups": groups}


def _subgroups_by_age(features: pd.DataFrame, column: str | None, bands: np.ndarray,
                      labels: np.ndarray, risks: np.ndarray, threshold: float,
                      min_rows: int) -> dict[str, Any]:
    if column is None:
        return {"column": None, "available": False, "note": "not requested"}
    if column not in features.columns:
        return {"column": column, "available": False,
                "note": f"features have no column {column!r}"}
    ages = pd.to_numeric(features[column], errors="coerce").to_numpy(dtype=np.float64)
    missing = np.isnan(ages)
    groups = []
    for lo, hi in pairwise(bands):
        with np.errstate(invalid="ignore"):
            mask = (ages >= lo) & (ages < hi)
        label = (f"{column} {format_number(lo)} and over" if hi >= OPEN_AGE_EDGE
                 else f"{column} {format_number(lo)} to under {format_number(hi)}")
        groups.append(_group(label, labels[mask], risks[mask], threshold, min_rows,
                             lower=float(lo), upper=float(hi)))
    with np.errstate(invalid="ignore"):
        outside = ~missing & ((ages < bands[0]) | (ages >= bands[-1]))
    if outside.any():
        groups.append(_group(f"{column} outside [{format_number(bands[0])}, "
                             f"{format_number(bands[-1])})", labels[outside], risks[outside],
                             threshold, min_rows, lower=None, upper=None))
    if missing.any():
        groups.append(_group(f"{column} not recorded", labels[missing], risks[missing],
                             threshold, min_rows, lower=None, upper=None))
    return {"column": column, "available": True, "bands": [float(b) for b in bands],
            "groups": groups}


def _finite_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _federated_rounds(run_report: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Each round's global-model figures (rounds without evaluation are skipped)."""
    if run_report is None:
        return []
    out = []
    for entry in run_report.get("rounds", []):
        summary = entry.get("global") if isinstance(entry, Mapping) else None
        if not summary:
            continue
        row: dict[str, Any] = {"round": entry.get("round")}
        for key in _ROUND_KEYS:
            value = _finite_or_none(summary.get(key))
            row[key] = int(value) if value is not None and key in _ROUND_COUNTS else value
        out.append(row)
    return out


def _privacy(site: str, statement: str | None, run_report: Mapping[str, Any] | None
             ) -> dict[str, Any]:
    run_privacy = run_report.get("privacy") if run_report is not None else None
    all_sites = ({str(k): str(v) for k, v in run_privacy.items()}
                 if isinstance(run_privacy, Mapping) else {})
    source = "given"
    if statement is None and site in all_sites:
        statement, source = all_sites[site], "run report"
    site_level = run_report.get("site-level-privacy") if run_report is not None else None
    return {"statement": statement, "source": source if statement is not None else None,
            "all-sites": all_sites,
            "site-level": (str(site_level.get("short")) if isinstance(site_level, Mapping)
                           and site_level.get("short") else None),
            "disclosure": _DISCLOSURE}


# --------------------------------------------------------------------------- entry point


def build_validation_report(
    *,
    site: str,
    features: pd.DataFrame,
    labels: np.ndarray,
    risks: np.ndarray,
    threshold: float = 0.5,
    model_info: Mapping[str, Any],
    privacy_statement: str | None,
    run_report: Mapping[str, Any] | None,
    out_dir: str | os.PathLike[str],
    age_column: str | None = "age",
    sex_column: str | None = "sex",
    age_bands: Sequence[float] = (0, 45, 55, 65, 200),
    min_subgroup_rows: int = MIN_SUBGROUP_ROWS,
) -> dict[str, Any]:
    """Write the validation report of the global model on ``site``'s held-out rows.

    ``features``: the raw feature rows (one per patient, as in the site's CSV; only the
    ``age_column`` and ``sex_column`` are read, for subgroups). ``labels``: 0/1 outcomes.
    ``risks``: the model's risk for each row, in [0, 1]. ``model_info``: what identifies
    the model (run, version, epsilon...), JSON-serializable. ``privacy_statement``: this
    site's guarantee; when ``None`` it is taken from ``run_report["privacy"][site]`` if
    there. ``run_report``: the federated run's ``report.json`` (or ``None``).
    Age bands are ``[lo, hi)``; rows with no age, or outside the bands, get their own group,
    so each subgroup table sums to ``n``.

    Returns the JSON document (also written as ``validation-report.json``). Raises
    ``ValueError`` naming every bad argument and value.
    """
    frame, y, r, bands = _check_inputs(
        site=site, features=features, labels=labels, risks=risks, threshold=threshold,
        model_info=model_info, privacy_statement=privacy_statement, run_report=run_report,
        age_column=age_column, sex_column=sex_column, age_bands=age_bands,
        min_subgroup_rows=min_subgroup_rows)
    threshold = float(threshold)
    n, positives = len(y), int(y.sum())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    perf = _performance(y, r, threshold)
    curve = roc_points(y, r)
    auc = roc_auc(y, r)
    bins = calibration_bins(y, r)
    rounds = _federated_rounds(run_report)
    subgroups = {
        "sex": _subgroups_by_sex(frame, sex_column, y, r, threshold, min_subgroup_rows),
        "age": _subgroups_by_age(frame, age_column, bands, y, r, threshold, min_subgroup_rows),
    }
    privacy = _privacy(site, privacy_statement, run_report)
    info = json.loads(json.dumps(dict(model_info)))

    warnings: list[str] = []
    if n < min_subgroup_rows:
        warnings.append(f"{TOO_FEW}: only {n} held-out rows (< {min_subgroup_rows})")
    if positives in (0, n):
        warnings.append(f"held-out rows hold one outcome class only ({positives} positive of "
                        f"{n}): AUC and ROC are undefined")
    small = [g["group"] for part in subgroups.values() for g in part.get("groups", [])
             if g["too-few"] and g["count"]]
    if small:
        warnings.append(f"{len(small)} subgroup(s) have fewer than {min_subgroup_rows} rows "
                        f"({TOO_FEW}): {', '.join(small)}")
    if privacy["statement"] is None:
        warnings.append("no privacy statement was supplied for this site: the report cannot "
                        "state what the model's training guarantees")
    run_name = run_report.get("run") if run_report is not None else None
    if run_name is not None and "run" in info and info["run"] != run_name:
        warnings.append(f"model_info names run {info['run']!r} but the run report is run "
                        f"{run_name!r}: they may not belong together")

    report: dict[str, Any] = {
        "format": REPORT_FORMAT, "version": REPORT_VERSION, "site": site,
        "generated-utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": info,
        "n": n, "positives": positives, "threshold": threshold,
        "decision-rule": f"predicted positive when risk >= {threshold:g}",
        **{key: perf[key] for key in ("accuracy", "sensitivity", "specificity", "ppv", "npv")},
        "auc": auc,
        "confusion-matrix": perf["confusion-matrix"],
        "roc": None if curve is None else [
            {"threshold": None if math.isinf(t) else float(t), "fpr": float(f),
             "tpr": float(tp)} for f, tp, t in zip(*curve, strict=True)],
        "calibration": {
            "brier": float(np.mean((r - y) ** 2)),
            "mean-risk": float(r.mean()), "observed-rate": positives / n,
            "bins": bins, "expected-calibration-error": _expected_calibration_error(bins, n),
        },
        "subgroups": subgroups,
        "min-subgroup-rows": min_subgroup_rows,
        "federated-rounds": rounds,
        "run": run_name,
        "privacy": privacy,
        "warnings": warnings,
        "files": {"json": JSON_FILENAME, "html": HTML_FILENAME, "roc": PLOT_ROC,
                  "calibration": PLOT_CALIBRATION, "rounds": PLOT_ROUNDS if rounds else None},
    }

    _plot_roc(out / PLOT_ROC, report, curve)
    _plot_calibration(out / PLOT_CALIBRATION, report)
    if rounds:
        _plot_rounds(out / PLOT_ROUNDS, report)
    else:
        (out / PLOT_ROUNDS).unlink(missing_ok=True)  # never leave a stale plot behind
    write_text_atomic(out / HTML_FILENAME, render_html(report))
    write_text_atomic(out / JSON_FILENAME, json.dumps(report, indent=2, allow_nan=False))
    for warning in warnings:
        logger.warning("%s validation report: %s", site, warning)
    logger.info("%s: validation report on %d rows (AUC %s) written to %s", site, n,
                _fmt(auc), out / HTML_FILENAME)
    return report


# --------------------------------------------------------------------------- plots


def _figure(height: float = 4.5) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend switch

    return Figure(figsize=(6, height))


def _plot_roc(path: Path, report: Mapping[str, Any],
              curve: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="no skill")
    if curve is None:
        ax.text(0.5, 0.5, "ROC undefined:\nthe rows hold one outcome class only",
                ha="center", va="center")
    else:
        fpr, tpr, _ = curve
        ax.plot(fpr, tpr, drawstyle="default", label=f"AUC {_fmt(report['auc'])}")
        sens, spec = report["sensitivity"]["value"], report["specificity"]["value"]
        if sens is not None and spec is not None:
            ax.plot([1 - spec], [sens], "o", color="red",
                    label=f"threshold {report['threshold']:g}")
    ax.set(xlabel="1 - specificity (false-positive rate)",
           ylabel="sensitivity (true-positive rate)", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"{report['site']}: ROC on {report['n']} held-out rows", parse_math=False)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_calibration(path: Path, report: Mapping[str, Any]) -> None:
    calibration = report["calibration"]
    bins = calibration["bins"]
    fig = _figure(height=6)
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1))
    ax = fig.add_subplot(grid[0])
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    filled = [b for b in bins if b["count"]]
    ax.plot([b["mean-predicted"] for b in filled], [b["observed-rate"] for b in filled],
            "o-", label="this site")
    for b in filled:
        ax.annotate(f"n={b['count']}", (b["mean-predicted"], b["observed-rate"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(ylabel="observed outcome rate", xlim=(0, 1), ylim=(-0.02, 1.02))
    ax.set_title(f"{report['site']}: reliability (Brier {_fmt(calibration['brier'])}, "
                 f"ECE {_fmt(calibration['expected-calibration-error'])})", parse_math=False)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    counts = fig.add_subplot(grid[1], sharex=ax)
    width = bins[0]["upper"] - bins[0]["lower"]
    counts.bar([b["lower"] for b in bins], [b["count"] for b in bins], width=width,
               align="edge", edgecolor="white")
    counts.set(xlabel="predicted risk", ylabel="patients")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_rounds(path: Path, report: Mapping[str, Any]) -> None:
    rounds = report["federated-rounds"]
    fig = _figure()
    ax = fig.add_subplot()
    xs = [r["round"] for r in rounds]
    for key, label in (("mean-site-accuracy", "mean site accuracy"),
                       ("pooled-accuracy", "pooled accuracy"),
                       ("mean-site-auc", "mean site AUC")):
        ax.plot(xs, [math.nan if r[key] is None else r[key] for r in rounds], marker="o",
                label=label)
    ax.set(xlabel="round", ylabel="global model on sites' held-out rows", ylim=(0, 1))
    ax.set_title(f"federated run {report['run'] or ''}: global model by round",
                 parse_math=False)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- HTML


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _interval_cell(entry: Mapping[str, Any]) -> str:
    ci = entry["ci95"]
    tail = "" if ci is None else f" ({_fmt(ci[0])} to {_fmt(ci[1])})"
    return _e(f"{_fmt(entry['value'])}{tail} [{entry['successes']}/{entry['total']}]")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``rows`` cells are already-escaped HTML; the header is escaped here."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _info_value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(", ", ": "))
        return text if len(text) <= 300 else text[:297] + "..."
    return _fmt(value, 6) if isinstance(value, float) else str(value)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #222;
       line-height: 1.4; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
.warn { background: #fff4e5; border-left: 4px solid #e69500; padding: 0.5rem 1rem; }
.note { color: #555; font-size: 0.9rem; }
.privacy { background: #eef6ff; border-left: 4px solid #2b6cb0; padding: 0.5rem 1rem; }
img { max-width: 100%; }
"""


def _subgroup_section(title: str, part: Mapping[str, Any]) -> list[str]:
    out = [f"<h3>{_e(title)}</h3>"]
    if not part["available"]:
        out.append(f"<p class='note'>{_e(part['note'])}</p>")
        return out
    rows = [[_e(g["group"]), _e(g["count"]), _e(g["positives"]), _e(_fmt(g["accuracy"])),
             _e(_fmt(g["sensitivity"])), _e(_fmt(g["specificity"])), _e(_fmt(g["auc"])),
             _e("; ".join(g["warnings"]) or "-")] for g in part["groups"]]
    out.append(_table(["group", "patients", "with outcome", "accuracy", "sensitivity",
                       "specificity", "AUC", "caution"], rows))
    return out


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (every text escaped)."""
    site = report["site"]
    cal = report["calibration"]
    cm = report["confusion-matrix"]
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(f'Validation report: {site}')}</title>", f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{_e(f'Global model on {site} held-out patients')}</h1>",
        f"<p>{_e(report['n'])} patients, {_e(report['positives'])} with the outcome. "
        f"AUC {_e(_fmt(report['auc']))}; at risk threshold {_e(format(report['threshold'], 'g'))}"
        f": sensitivity {_e(_fmt(report['sensitivity']['value']))}, specificity "
        f"{_e(_fmt(report['specificity']['value']))}. Generated "
        f"{_e(report['generated-utc'])}.</p>",
    ]
    if report["warnings"]:
        items = "".join(f"<li>{_e(w)}</li>" for w in report["warnings"])
        parts.append(f"<div class='warn'><strong>Read with care</strong><ul>{items}</ul></div>")

    parts += ["<h2>Performance at the threshold</h2>",
              f"<p class='note'>{_e(report['decision-rule'])}; 95% Wilson intervals in "
              "brackets, then successes/total.</p>",
              _table(["measure", "value (95% CI) [count]"], [
                  ["accuracy", _interval_cell(report["accuracy"])],
                  ["sensitivity (outcome patients flagged)",
                   _interval_cell(report["sensitivity"])],
                  ["specificity (outcome-free patients not flagged)",
                   _interval_cell(report["specificity"])],
                  ["PPV (flagged patients with the outcome)", _interval_cell(report["ppv"])],
                  ["NPV (unflagged patients without the outcome)",
                   _interval_cell(report["npv"])],
                  ["ROC AUC", _e(_fmt(report["auc"]))]]),
              _table(["", "predicted positive", "predicted negative"], [
                  ["has the outcome", _e(cm["true-positive"]), _e(cm["false-negative"])],
                  ["outcome-free", _e(cm["false-positive"]), _e(cm["true-negative"])]]),
              f"<img src='{PLOT_ROC}' alt='ROC curve'>"]

    bin_rows = [[_e(f"[{b['lower']:g}, {b['upper']:g}{']' if b['upper'] == 1 else ')'}"),
                 _e(b["count"]), _e(_fmt(b["mean-predicted"])), _e(_fmt(b["observed-rate"]))]
                for b in cal["bins"]]
    parts += ["<h2>Calibration</h2>",
              f"<p>Brier score {_e(_fmt(cal['brier']))} (0 is perfect); expected calibration "
              f"error {_e(_fmt(cal['expected-calibration-error']))}; mean predicted risk "
              f"{_e(_fmt(cal['mean-risk']))} vs observed rate {_e(_fmt(cal['observed-rate']))}."
              "</p>",
              f"<img src='{PLOT_CALIBRATION}' alt='reliability diagram'>",
              _table(["risk bin", "patients", "mean predicted", "observed rate"], bin_rows)]

    parts += ["<h2>Subgroups</h2>",
              f"<p class='note'>Groups with fewer than {_e(report['min-subgroup-rows'])} "
              f"patients are marked '{_e(TOO_FEW)}'.</p>"]
    parts += _subgroup_section("By sex", report["subgroups"]["sex"])
    parts += _subgroup_section("By age band", report["subgroups"]["age"])

    parts.append("<h2>Federated training</h2>")
    if report["federated-rounds"]:
        rows = [[_e(r["round"]), _e(_fmt(r["mean-site-accuracy"])),
                 _e(_fmt(r["pooled-accuracy"])), _e(_fmt(r["mean-site-auc"])),
                 _e(f"{_fmt(r['sites-with-auc'])}/{_fmt(r['sites'])}")]
                for r in report["federated-rounds"]]
        parts += [f"<p>Run {_e(report['run'] or 'n/a')}: the global model on every site's "
                  "held-out rows, round by round.</p>",
                  f"<img src='{PLOT_ROUNDS}' alt='global metrics by round'>",
                  _table(["round", "mean site accuracy", "pooled accuracy", "mean site AUC",
                          "sites with AUC"], rows)]
    else:
        parts.append("<p class='note'>No run report was given.</p>")

    privacy = report["privacy"]
    statement = privacy["statement"] or "not supplied"
    parts += ["<h2>Privacy</h2>",
              f"<div class='privacy'><p><strong>{_e(site)}:</strong> {_e(statement)}</p>"]
    others = {k: v for k, v in privacy["all-sites"].items() if k != site}
    if others:
        items = "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in others.items())
        parts.append(f"<p>Other sites (each its own whole-run guarantee):</p><ul>{items}</ul>")
    if privacy["site-level"]:
        parts.append(f"<p>Site-level: {_e(privacy['site-level'])}</p>")
    parts += ["</div>", f"<p class='note'>{_e(privacy['disclosure'])}</p>"]

    model_rows = [[_e(k), _e(_info_value(v))] for k, v in report["model"].items()]
    parts += ["<h2>Model</h2>",
              _table(["field", "value"], model_rows) if model_rows
              else "<p class='note'>No model information given.</p>",
              "</body></html>"]
    return "\n".join(parts) + "\n"
