"""Drift check: does a new batch of patients look like the site's training rows?

Before a site trusts the model's risks for a new batch, it compares the batch (encoded
with the site's own preprocessor) against a profile of its training rows:

* :func:`training_profile` summarizes the encoded training rows per feature: mean,
  standard deviation (population, ``ddof=0``, as the preprocessor scales), and a
  histogram. It is computed from private rows (the decile edges are, in effect, training
  values), so **the profile stays at the site**, beside ``preprocessor.json``.
* :func:`check_drift` compares a new batch with the profile, feature by feature, by

  - the population stability index ``PSI = sum_i (a_i - e_i) * ln(a_i / e_i)`` over the
    profile's bins (``e``: training fractions, ``a``: new-batch fractions). Every fraction
    is floored at :data:`PSI_EPSILON` (``1e-4``) before the sum, without renormalizing, so
    an empty bin adds a large but finite term instead of ``inf``;
  - the standardized mean shift ``|mean_new - mean_train| / std_train``. A column that
    was constant in training has no spread to scale by: its shift is 0 if the batch holds
    only that value, else ``inf`` (reported as ``None`` in JSON, with the reason).

Binning. A feature with more than two distinct training values gets quantile bins: the
training deciles (``bins=10``), duplicates merged, bins ``[e_k, e_{k+1})`` with open
outer ends, so values beyond the training range land in the end bins. A feature with at
most two distinct values (binary and one-hot columns, or a constant column) would make
quantile bins degenerate; it is profiled by its category rates instead, plus an
``other`` category for values training never held.

A feature is flagged when ``PSI >= psi_threshold`` or its shift is ``>= mean_shift_threshold``
SD. Both are noisy on small batches: with ``k`` bins, a batch of ``n`` rows drawn from
the training distribution itself has PSI of about ``(k - 1) * (1/n + 1/n_train)`` on
average. Below ``min_rows`` nothing is flagged; the report says the batch was too small
to judge. Above it, the report warns when that no-drift PSI is at least half the
threshold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "KIND_BINNED",
    "KIND_CATEGORICAL",
    "PROFILE_FORMAT",
    "PROFILE_VERSION",
    "PSI_EPSILON",
    "DriftReport",
    "FeatureDrift",
    "check_drift",
    "population_stability_index",
    "training_profile",
]

PROFILE_FORMAT = "fedcare-training-profile"
PROFILE_VERSION = 1
DRIFT_REPORT_FORMAT = "fedcare-drift-report"
DRIFT_REPORT_VERSION = 1
PSI_EPSILON = 1e-4
"""Floor for every bin fraction in the PSI (an empty bin would make it infinite)."""
KIND_BINNED = "binned"
KIND_CATEGORICAL = "categorical"
MAX_CATEGORICAL_VALUES = 2
_FRACTION_TOLERANCE = 1e-6
_PROFILE_KEYS = ("format", "version", "n", "bins", "psi-epsilon", "features")
_PROFILE_OPTIONAL_KEYS = ("note",)
_FEATURE_KEYS = {KIND_BINNED: ("name", "kind", "mean", "std", "edges", "fractions"),
                 KIND_CATEGORICAL: ("name", "kind", "mean", "std", "values", "fractions")}
_NOTE = ("computed from this site's private training rows (bin edges are training values): "
         "keep it at the site")


# --------------------------------------------------------------------------- helpers


def _is_constant(std: float, mean: float) -> bool:
    """The preprocessor's own rule for "no spread" (float round-off, not real spread)."""
    return not std > 10 * np.finfo(np.float64).eps * max(1.0, abs(mean))


def population_stability_index(expected: Sequence[float] | np.ndarray,
                               actual: Sequence[float] | np.ndarray) -> float:
    """``sum (a - e) ln(a / e)`` with both fractions floored at :data:`PSI_EPSILON`."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_EPSILON)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def _matrix(where: str, name: str, x: Any) -> np.ndarray:
    try:
        matrix = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {name} must be a 2-D array of numbers; got {exc}") from exc
    if matrix.ndim != 2:
        raise ValueError(f"{where}: {name} must be a 2-D array (rows x encoded features); "
                         f"got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        row, col = (int(i) for i in np.argwhere(~np.isfinite(matrix))[0])
        raise ValueError(f"{where}: {name} must hold finite numbers (encoded rows are "
                         f"imputed); got {matrix[row, col]} at row {row}, column {col}")
    return matrix


def _categorical_fractions(column: np.ndarray, values: Sequence[float]) -> np.ndarray:
    """Rates of each known value, then of everything else."""
    counts = [int(np.count_nonzero(column == v)) for v in values]
    counts.append(len(column) - sum(counts))
    return np.asarray(counts, dtype=np.float64) / max(len(column), 1)


def _binned_fractions(column: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    which = np.searchsorted(np.asarray(edges, dtype=np.float64), column, side="right")
    return np.bincount(which, minlength=len(edges) + 1).astype(np.float64) / max(len(column), 1)


# --------------------------------------------------------------------------- profile


def training_profile(x_train_encoded: np.ndarray, feature_names: Sequence[str], *,
                     bins: int = 10) -> dict[str, Any]:
    """A JSON-serializable profile of the site's encoded training rows (keep it at the site).

    Per feature: ``mean``, ``std``, and either decile ``edges`` with ``fractions`` per bin
    (``kind`` ``"binned"``) or the distinct ``values`` with their ``fractions`` (``kind``
    ``"categorical"``, for columns with at most two distinct values). ``n`` is the number
    of training rows.
    """
    where = "training_profile"
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"{where}: bins must be an integer >= 2; got {bins!r}")
    x = _matrix(where, "x_train_encoded", x_train_encoded)
    names = [str(n) for n in feature_names]
    if len(names) != x.shape[1]:
        raise ValueError(f"{where}: feature_names must name every column of x_train_encoded "
                         f"(expected {x.shape[1]}); got {len(names)}")
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{where}: feature_names must be distinct; repeated: {repeated}")
    if len(x) < bins:
        raise ValueError(f"{where}: x_train_encoded must have at least bins ({bins}) rows to "
                         f"form quantile bins; got {len(x)}")
    quantiles = np.arange(1, bins) / bins
    features: list[dict[str, Any]] = []
    for j, name in enumerate(names):
        column = x[:, j]
        entry: dict[str, Any] = {"name": name, "mean": float(column.mean()),
                                 "std": float(column.std())}
        distinct = np.unique(column)
        if len(distinct) <= MAX_CATEGORICAL_VALUES:
            values = [float(v) for v in distinct]
            entry.update(kind=KIND_CATEGORICAL, values=values,
                         fractions=_categorical_fractions(column, values)[:-1].tolist())
        else:
            edges = [float(e) for e in np.unique(np.quantile(column, quantiles))]
            entry.update(kind=KIND_BINNED, edges=edges,
                         fractions=_binned_fractions(column, edges).tolist())
        features.append(entry)
    logger.info("training profile of %d rows x %d encoded features (%d binned, %d categorical)",
                len(x), len(names), sum(f["kind"] == KIND_BINNED for f in features),
                sum(f["kind"] == KIND_CATEGORICAL for f in features))
    return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "n": len(x), "bins": bins,
            "psi-epsilon": PSI_EPSILON, "features": features, "note": _NOTE}


def _finite(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value))


def _feature_problems(i: int, entry: Any) -> list[str]:
    where = f"features[{i}]"
    if not isinstance(entry, Mapping):
        return [f"{where} must be an object; got {type(entry).__name__}"]
    kind = entry.get("kind")
    if kind not in _FEATURE_KEYS:
        return [f"{where}.kind must be {KIND_BINNED!r} or {KIND_CATEGORICAL!r}; got {kind!r}"]
    problems: list[str] = []
    keys = _FEATURE_KEYS[kind]
    if sorted(entry) != sorted(keys):
        problems.append(f"{where} keys must be exactly {', '.join(keys)}; got "
                        f"{', '.join(sorted(map(str, entry)))}")
        return problems
    if not isinstance(entry["name"], str) or not entry["name"]:
        problems.append(f"{where}.name must be a non-empty string; got {entry['name']!r}")
    if not _finite(entry["mean"]):
        problems.append(f"{where}.mean must be a finite number; got {entry['mean']!r}")
    if not _finite(entry["std"]) or entry["std"] < 0:
        problems.append(f"{where}.std must be a finite number >= 0; got {entry['std']!r}")
    support = entry["edges" if kind == KIND_BINNED else "values"]
    fractions = entry["fractions"]
    if not isinstance(support, list) or not all(_finite(v) for v in support) or any(
            a >= b for a, b in pairwise(support)):
        problems.append(f"{where}: {'edges' if kind == KIND_BINNED else 'values'} must be a "
                        f"list of increasing finite numbers; got {support!r}")
        return problems
    want = len(support) + 1 if kind == KIND_BINNED else len(support)
    if (not isinstance(fractions, list) or len(fractions) != want
            or not all(_finite(f) and 0 <= f <= 1 for f in fractions)):
        problems.append(f"{where}.fractions must be {want} numbers in [0, 1]; got {fractions!r}")
    elif abs(sum(fractions) - 1.0) > _FRACTION_TOLERANCE:
        problems.append(f"{where}.fractions must sum to 1; got {sum(fractions)}")
    return problems


def _check_profile(profile: Any) -> list[Mapping[str, Any]]:
    """The profile's feature entries; ``ValueError`` listing every problem."""
    if not isinstance(profile, Mapping):
        raise ValueError(f"training profile must be a mapping; got {type(profile).__name__}")
    problems: list[str] = []
    missing = [k for k in _PROFILE_KEYS if k not in profile]
    unknown = sorted(str(k) for k in profile if k not in (*_PROFILE_KEYS, *_PROFILE_OPTIONAL_KEYS))
    if missing or unknown:
        problems.append(f"keys must be {', '.join(_PROFILE_KEYS)} (and optionally note); got "
                        f"missing {missing}, unknown {unknown}")
    if profile.get("format") != PROFILE_FORMAT:
        problems.append(f"format must be {PROFILE_FORMAT!r}; got {profile.get('format')!r}")
    if profile.get("version") != PROFILE_VERSION:
        problems.append(f"version must be {PROFILE_VERSION}; got {profile.get('version')!r}")
    for key, least in (("n", 1), ("bins", 2)):
        value = profile.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            problems.append(f"{key} must be an integer >= {least}; got {value!r}")
    features = profile.get("features")
    if not isinstance(features, list) or not features:
        problems.append(f"features must be a non-empty list; got {features!r}")
    else:
        for i, entry in enumerate(features):
            problems += _feature_problems(i, entry)
        names = [f.get("name") for f in features if isinstance(f, Mapping)]
        if len(set(map(str, names))) != len(names):
            problems.append("features must have distinct names")
    if problems:
        raise ValueError("training profile: " + "; ".join(problems))
    assert isinstance(features, list)  # for mypy: checked above
    return features


# --------------------------------------------------------------------------- check


@dataclass(frozen=True, kw_only=True)
class FeatureDrift:
    """One encoded feature's comparison. ``mean_shift_sd`` is ``inf`` when the feature was
    constant in training and the batch holds other values."""

    feature: str
    psi: float
    mean_shift_sd: float
    flagged: bool
    reason: str
    kind: str = KIND_BINNED
    mean_train: float = math.nan
    mean_new: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "kind": self.kind, "psi": _json_number(self.psi),
                "mean-shift-sd": _json_number(self.mean_shift_sd),
                "mean-train": _json_number(self.mean_train),
                "mean-new": _json_number(self.mean_new), "flagged": self.flagged,
                "reason": self.reason}


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True, kw_only=True)
class DriftReport:
    """The comparison of one new batch with the training profile.

    ``judged`` is False when the batch had fewer than ``min_rows`` rows: then nothing is
    flagged, whatever the figures say (they are still reported).
    """

    n_new: int
    features: tuple[FeatureDrift, ...]
    n_train: int | None = None
    psi_threshold: float = 0.2
    mean_shift_threshold: float = 0.5
    min_rows: int = 20
    warnings: tuple[str, ...] = ()

    @property
    def judged(self) -> bool:
        return self.n_new >= self.min_rows

    def flagged(self) -> tuple[FeatureDrift, ...]:
        """The features that drifted beyond a threshold (most drifted first by PSI)."""
        return tuple(sorted((f for f in self.features if f.flagged), key=lambda f: -f.psi))

    def summary(self) -> str:
        """A few human lines: how many features drifted, which, and any warning."""
        flagged = self.flagged()
        train = f" vs {self.n_train} training rows" if self.n_train is not None else ""
        head = f"drift check: {self.n_new} new rows{train}, {len(self.features)} features: "
        if not self.judged:
            head += "not judged (batch too small)"
        elif flagged:
            head += f"{len(flagged)} flagged"
        else:
            head += (f"none drifted (PSI < {self.psi_threshold:g}, mean shift < "
                     f"{self.mean_shift_threshold:g} SD)")
        lines = [head] + [f"  {f.feature}: {f.reason}" for f in flagged]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable (an infinite shift becomes ``None``; its reason says why)."""
        return {"format": DRIFT_REPORT_FORMAT, "version": DRIFT_REPORT_VERSION,
                "n-new": self.n_new, "n-train": self.n_train, "judged": self.judged,
                "psi-threshold": self.psi_threshold,
                "mean-shift-threshold": self.mean_shift_threshold, "min-rows": self.min_rows,
                "psi-epsilon": PSI_EPSILON,
                "flagged": [f.feature for f in self.flagged()],
                "warnings": list(self.warnings),
                "features": [f.to_dict() for f in self.features]}


def _mean_shift(mean_train: float, std_train: float, mean_new: float) -> float:
    if _is_constant(std_train, mean_train):
        return 0.0 if abs(mean_new - mean_train) <= 10 * np.finfo(np.float64).eps * max(
            1.0, abs(mean_train)) else math.inf
    return abs(mean_new - mean_train) / std_train


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"check_drift: {name} must be a finite number > 0; got {value!r}")
    return float(value)


def check_drift(profile: Mapping[str, Any], x_new_encoded: np.ndarray, *,
                psi_threshold: float = 0.2, mean_shift_threshold: float = 0.5,
                min_rows: int = 20, feature_names: Sequence[str] | None = None,
                ) -> DriftReport:
    """Compare a new encoded batch with the site's training profile.

    ``x_new_encoded`` must be encoded by the same site preprocessor as the profiled rows,
    with the profile's columns in order (``feature_names``, if given, must equal the
    profile's). Raises ``ValueError`` on a malformed profile or a batch of the wrong shape.
    """
    where = "check_drift"
    psi_threshold = _positive("psi_threshold", psi_threshold)
    mean_shift_threshold = _positive("mean_shift_threshold", mean_shift_threshold)
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 1:
        raise ValueError(f"{where}: min_rows must be an integer >= 1; got {min_rows!r}")
    entries = _check_profile(profile)
    names = [str(e["name"]) for e in entries]
    if feature_names is not None and list(feature_names) != names:
        raise ValueError(f"{where}: feature_names must match the profile's features in order "
                         f"(expected {names}); got {list(feature_names)}")
    x = _matrix(where, "x_new_encoded", x_new_encoded)
    if x.shape[1] != len(entries):
        raise ValueError(f"{where}: x_new_encoded must have {len(entries)} columns (one per "
                         f"profiled feature); got {x.shape[1]}")
    n_new, n_train = len(x), int(profile["n"])
    if n_new == 0:
        raise ValueError(f"{where}: x_new_encoded must have at least one row; got 0")
    judged = n_new >= min_rows

    results: list[FeatureDrift] = []
    for j, entry in enumerate(entries):
        column = x[:, j]
        if entry["kind"] == KIND_BINNED:
            actual = _binned_fractions(column, entry["edges"])
            expected = np.asarray(entry["fractions"], dtype=np.float64)
        else:
            actual = _categorical_fractions(column, entry["values"])
            expected = np.r_[np.asarray(entry["fractions"], dtype=np.float64), 0.0]
        psi = population_stability_index(expected, actual)
        mean_train, std_train = float(entry["mean"]), float(entry["std"])
        mean_new = float(column.mean())
        shift = _mean_shift(mean_train, std_train, mean_new)
        over_psi, over_shift = psi >= psi_threshold, shift >= mean_shift_threshold
        figures = _figures(entry, psi, shift, mean_train, mean_new, actual)
        if not judged:
            flagged, reason = False, (f"not judged ({n_new} rows < min_rows {min_rows}): "
                                      f"{figures}")
        elif over_psi or over_shift:
            beyond = [f"PSI >= {psi_threshold:g}"] if over_psi else []
            beyond += [f"shift >= {mean_shift_threshold:g} SD"] if over_shift else []
            flagged, reason = True, f"{figures} [{' and '.join(beyond)}]"
        else:
            flagged, reason = False, f"within thresholds: {figures}"
        results.append(FeatureDrift(feature=names[j], psi=psi, mean_shift_sd=shift,
                                    flagged=flagged, reason=reason, kind=str(entry["kind"]),
                                    mean_train=mean_train, mean_new=mean_new))

    warnings: list[str] = []
    if not judged:
        warnings.append(f"too few rows to judge drift: {n_new} new rows < min_rows "
                        f"{min_rows}; nothing is flagged")
    else:
        most_bins = max(len(e["fractions"]) for e in entries)
        noise = (most_bins - 1) * (1 / n_new + 1 / n_train)
        if noise >= psi_threshold / 2:
            warnings.append(f"PSI is noisy at this batch size: a batch of {n_new} rows from the "
                            f"training distribution itself averages about {noise:.2f} over "
                            f"{most_bins} bins (threshold {psi_threshold:g}); treat a PSI flag "
                            "alone as weak evidence")
    report = DriftReport(n_new=n_new, features=tuple(results), n_train=n_train,
                         psi_threshold=psi_threshold, mean_shift_threshold=mean_shift_threshold,
                         min_rows=min_rows, warnings=tuple(warnings))
    for warning in warnings:
        logger.warning("drift check: %s", warning)
    if report.flagged():
        logger.warning("%s", report.summary())
    else:
        logger.info("%s", report.summary())
    return report


def _figures(entry: Mapping[str, Any], psi: float, shift: float, mean_train: float,
             mean_new: float, actual: np.ndarray) -> str:
    """The numbers behind a verdict, in words."""
    if math.isinf(shift):
        moved = (f"training held only {mean_train:g}; {actual[-1]:.0%} of the batch holds "
                 "other values")
    elif entry["kind"] == KIND_CATEGORICAL and len(entry["values"]) == 2:
        high = entry["values"][1]
        moved = (f"share with value {high:g} {entry['fractions'][1]:.2f} -> {actual[1]:.2f} "
                 f"({shift:.2f} SD)")
    else:
        moved = f"mean {mean_train:.3g} -> {mean_new:.3g} ({shift:.2f} SD)"
    other = ""
    if entry["kind"] == KIND_CATEGORICAL and actual[-1] > 0 and not math.isinf(shift):
        other = f"; {actual[-1]:.0%} of the batch holds values training never held"
    return f"PSI {psi:.3f}, {moved}{other}"
