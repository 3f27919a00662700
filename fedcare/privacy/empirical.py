"""Empirical privacy audit: membership inference against a trained model.

The accountant gives an *upper* bound on epsilon, derived from the maths of DP-SGD. This
module answers the complementary question "does the code do what the maths says?" by
attacking the trained model: a site's TRAIN rows are the members, its HELD-OUT rows the
non-members, and an attacker guesses membership by thresholding a per-row score (higher
means "more likely a member").

Two attacks are run (Yeom et al. 2018, "Privacy risk in machine learning"):

* ``loss-threshold``: score = -(binary cross-entropy of the row);
* ``confidence-threshold``: score = the probability the model gives to the true label.

For fedcare's single sigmoid output the loss is ``-log(p_true)`` (clipped), a decreasing
function of ``p_true``, so the two attacks rank rows identically and agree on AUC and on the
bound (up to rows whose probability hits the clip). Both are kept because they are the two
standard formulations and because the agreement cross-checks ``per_example_losses``.

tensorflow-privacy's ``membership_inference_attack`` is NOT used: the 0.9.0 wheel ships only
shims under ``tensorflow_privacy.privacy.membership_inference_attack`` that re-export from
``tensorflow_privacy.privacy.privacy_tests``, a package the wheel does not contain, so the
import fails (tensorflow/privacy issue #555). Its threshold attack computes the same ROC
curve as ``loss-threshold`` here and gives no epsilon bound.

From an attack to an epsilon LOWER bound (Jagielski, Ullman & Oprea 2020, "Auditing
differentially private machine learning: how private is private SGD?"; Nasr et al. 2021,
"Adversary instantiation"): an attack is a hypothesis test. For a threshold ``t`` let
``TPR = P(score >= t | member)`` and ``FPR = P(score >= t | non-member)``. Any
(epsilon, delta)-DP training forces::

    TPR <= e^eps * FPR + delta      and      1 - FPR <= e^eps * (1 - TPR) + delta

so, with a one-sided Clopper-Pearson LOWER bound ``TPR_lo`` and UPPER bound ``FPR_hi``::

    eps_lb(t) = max(log((TPR_lo - delta) / FPR_hi), log((1 - FPR_hi - delta) / (1 - TPR_lo)))

(each term only where its numerator and denominator are positive), and the reported bound
is ``max(0, eps_lb(t))``.

Confidence handling, so that the bound really holds at the stated confidence:

* Both terms use the same two events (``TPR_lo <= TPR`` and ``FPR_hi >= FPR``), so one
  union bound covers both: each Clopper-Pearson bound is taken at ``alpha / 2``, where
  ``alpha = 1 - confidence``.
* Choosing the best of many thresholds on the same data would need a Bonferroni
  correction over every threshold tried. Instead the rows are split at random (seeded)
  into a *selection* half and an *evaluation* half: the threshold is chosen on the
  selection half (the one with the largest bound there) and the bound is computed once,
  on the evaluation half, for that single threshold. The evaluation half never influenced
  the choice, so no correction is needed; the price is that only half the rows count.
* ``audit_membership`` runs several attacks and reports the best one, so it splits alpha
  across them (Bonferroni): each attack's bound is computed at confidence
  ``1 - alpha / k`` for ``k`` attacks, and the best of them holds at ``confidence``.

What the number means, and what it does not:

* It is a LOWER bound. It can only show that a privacy claim is violated (if it exceeds
  the claimed epsilon, something is wrong: a bug, a mis-accounted spend, or a broken
  assumption). It can never prove that the model is private: a weak attack, or few rows,
  gives a small bound whatever the true epsilon. With a few hundred rows per site the
  bound is necessarily small (even perfectly separated scores on 100 + 100 rows give
  ``epsilon_lower_bound`` only 2.57 at 95% confidence, 4.90 on 1000 + 1000), and DP-SGD
  on ordinary (non-canary) rows is typically far from its worst case, so a bound near 0
  next to a claim of 1 is the expected result.
* Each row is treated as one independent trial of the hypothesis test. That is exact for
  the multi-run audit of Jagielski et al. (one model per trial); with one trained model
  and a seeded random train/test split it is the usual one-run heuristic (Steinke, Nasr
  & Jagielski 2023, "Privacy auditing with one (1) training run", give the rigorous
  one-run analysis). Read an exceedance as a reason to investigate, not as a proof.

Everything here is numpy/scipy/scikit-learn; TensorFlow is never imported.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from scipy import stats
from sklearn import metrics

from fedcare.privacy.statement import format_delta, format_epsilon

__all__ = [
    "ATTACKS",
    "PROBABILITY_CLIP",
    "AttackResult",
    "AuditReport",
    "audit_membership",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "epsilon_lower_bound",
    "per_example_losses",
]

logger = logging.getLogger(__name__)

#: Probabilities are clipped to [PROBABILITY_CLIP, 1 - PROBABILITY_CLIP] before the log
#: (the same epsilon Keras uses in its binary cross-entropy).
PROBABILITY_CLIP = 1e-7

#: The attacks ``audit_membership`` runs, in order.
ATTACKS = ("loss-threshold", "confidence-threshold")

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- validation


def _describe_bad(values: np.ndarray, bad: np.ndarray) -> str:
    """``1.5 at row 3`` (first offending row), plus how many rows are bad in total."""
    rows = np.flatnonzero(bad)
    first = rows[0]
    more = f" ({rows.size} rows in all)" if rows.size > 1 else ""
    return f"{values[first]!r} at row {first}{more}"


def _as_vector(value: object, *, where: str, name: str, problems: list[str],
               min_rows: int = 1) -> FloatArray | None:
    """``value`` as a 1-D float array (an ``(n, 1)`` column is accepted), or None after
    appending the reasons it is unusable to ``problems``."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        problems.append(f"{where}: {name} must be an array of numbers; got {value!r:.80}")
        return None
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        problems.append(f"{where}: {name} must be one-dimensional (or one column); "
                        f"got shape {array.shape}")
        return None
    if array.size < min_rows:
        problems.append(f"{where}: {name} must hold at least {min_rows} row(s); "
                        f"got {array.size}")
        return None
    not_finite = ~np.isfinite(array)
    if not_finite.any():
        problems.append(f"{where}: {name} must be finite; got {_describe_bad(array, not_finite)}")
        return None
    return array


def _check_probabilities(value: object, *, where: str, name: str, problems: list[str],
                         min_rows: int = 1) -> FloatArray | None:
    array = _as_vector(value, where=where, name=name, problems=problems, min_rows=min_rows)
    if array is None:
        return None
    outside = (array < 0.0) | (array > 1.0)
    if outside.any():
        problems.append(f"{where}: {name} must be in [0, 1]; "
                        f"got {_describe_bad(array, outside)}")
        return None
    return array


def _check_labels(value: object, *, where: str, name: str, problems: list[str],
                  min_rows: int = 1) -> FloatArray | None:
    array = _as_vector(value, where=where, name=name, problems=problems, min_rows=min_rows)
    if array is None:
        return None
    not_binary = (array != 0.0) & (array != 1.0)
    if not_binary.any():
        problems.append(f"{where}: {name} must be 0 or 1; got {_describe_bad(array, not_binary)}")
        return None
    return array


def _check_same_length(first: np.ndarray | None, second: np.ndarray | None, *, where: str,
                       names: tuple[str, str], problems: list[str]) -> None:
    if first is not None and second is not None and first.size != second.size:
        problems.append(f"{where}: {names[0]} and {names[1]} must have the same length; "
                        f"got {first.size} and {second.size}")


def _check_delta(delta: float, *, where: str, problems: list[str]) -> None:
    if not isinstance(delta, int | float) or isinstance(delta, bool) or not 0.0 <= delta < 1.0:
        problems.append(f"{where}: delta must be in [0, 1); got {delta!r}")


def _check_confidence(confidence: float, *, where: str, problems: list[str]) -> None:
    if (not isinstance(confidence, int | float) or isinstance(confidence, bool)
            or not 0.0 < confidence < 1.0):
        problems.append(f"{where}: confidence must be in (0, 1); got {confidence!r}")


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems))


# ---------------------------------------------------------------------------- statistics


def clopper_pearson_lower(successes: npt.ArrayLike, trials: npt.ArrayLike,
                          alpha: float) -> FloatArray:
    """One-sided Clopper-Pearson lower bound on a binomial proportion.

    ``P(p >= bound) >= 1 - alpha``; the bound is ``Beta(alpha; k, n - k + 1)``, and 0 when
    there are no successes. Broadcasts over ``successes`` and ``trials``.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    bound = stats.beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0)
    return np.asarray(np.where(k <= 0, 0.0, bound), dtype=np.float64)


def clopper_pearson_upper(successes: npt.ArrayLike, trials: npt.ArrayLike,
                          alpha: float) -> FloatArray:
    """One-sided Clopper-Pearson upper bound on a binomial proportion.

    ``P(p <= bound) >= 1 - alpha``; the bound is ``Beta(1 - alpha; k + 1, n - k)``, and 1
    when every trial succeeded (with none: ``1 - alpha ** (1 / n)``).
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    bound = stats.beta.ppf(1.0 - alpha, k + 1.0, np.maximum(n - k, 1.0))
    return np.asarray(np.where(k >= n, 1.0, bound), dtype=np.float64)


def _counts_at(thresholds: FloatArray, sorted_scores: FloatArray) -> FloatArray:
    """How many of ``sorted_scores`` are ``>= t``, for each ``t`` in ``thresholds``."""
    below = np.searchsorted(sorted_scores, thresholds, side="left")
    return np.asarray(sorted_scores.size - below, dtype=np.float64)


def _epsilon_at(tp: FloatArray, members: int, fp: FloatArray, non_members: int, *,
                delta: float, alpha: float) -> FloatArray:
    """``eps_lb(t)`` for each threshold's counts; ``-inf`` where neither term is defined.

    ``alpha`` is split evenly between the two Clopper-Pearson bounds (a union bound: both
    terms are implied by the same two events, so no further split is needed).
    """
    tpr_lo = clopper_pearson_lower(tp, members, alpha / 2.0)
    fpr_hi = clopper_pearson_upper(fp, non_members, alpha / 2.0)
    terms = []
    for numerator, denominator in ((tpr_lo - delta, fpr_hi),
                                   (1.0 - fpr_hi - delta, 1.0 - tpr_lo)):
        defined = (numerator > 0) & (denominator > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.log(np.where(defined, numerator, 1.0) / np.where(defined, denominator, 1.0))
        terms.append(np.where(defined, value, -np.inf))
    return np.asarray(np.maximum(terms[0], terms[1]), dtype=np.float64)


class _ThresholdBound(NamedTuple):
    threshold: float
    epsilon: float  # eps_lb at the threshold on the evaluation half (may be < 0 or -inf)
    tpr: float  # evaluation-half point estimates, for the log
    fpr: float


def _candidate_thresholds(scores: FloatArray) -> FloatArray:
    """Midpoints between consecutive distinct scores: one threshold per distinct split."""
    distinct = np.unique(scores)
    return np.asarray(distinct[:-1] / 2.0 + distinct[1:] / 2.0, dtype=np.float64)


def _split_halves(scores: FloatArray, rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    order = rng.permutation(scores.size)
    half = scores.size // 2
    return scores[order[:half]], scores[order[half:]]


def _select_and_evaluate(members: FloatArray, non_members: FloatArray, *, delta: float,
                         alpha: float, seed: int) -> _ThresholdBound | None:
    """Choose the threshold on a random half of each group, evaluate it on the other half.

    Returns None when the selection half offers no threshold (all its scores are equal).
    """
    rng = np.random.default_rng(seed)
    members_select, members_eval = _split_halves(members, rng)
    non_select, non_eval = _split_halves(non_members, rng)

    candidates = _candidate_thresholds(np.concatenate([members_select, non_select]))
    if candidates.size == 0:
        return None
    tp = _counts_at(candidates, np.sort(members_select))
    fp = _counts_at(candidates, np.sort(non_select))
    selection_eps = _epsilon_at(tp, members_select.size, fp, non_select.size,
                                delta=delta, alpha=alpha)
    if np.isfinite(selection_eps).any():
        best = int(np.argmax(selection_eps))
    else:  # no threshold gives a defined bound: fall back to the largest advantage
        best = int(np.argmax(tp / members_select.size - fp / non_select.size))
    threshold = float(candidates[best])

    t = np.array([threshold])
    tp_eval = _counts_at(t, np.sort(members_eval))
    fp_eval = _counts_at(t, np.sort(non_eval))
    epsilon = float(_epsilon_at(tp_eval, members_eval.size, fp_eval, non_eval.size,
                                delta=delta, alpha=alpha)[0])
    return _ThresholdBound(threshold=threshold, epsilon=epsilon,
                           tpr=float(tp_eval[0]) / members_eval.size,
                           fpr=float(fp_eval[0]) / non_eval.size)


# ------------------------------------------------------------------------------ public API


def per_example_losses(probabilities: np.ndarray, labels: np.ndarray) -> FloatArray:
    """Binary cross-entropy of each row: ``-(y log p + (1 - y) log(1 - p))``.

    ``probabilities`` are the model's sigmoid outputs (shape ``(n,)`` or ``(n, 1)``), clipped
    to ``[PROBABILITY_CLIP, 1 - PROBABILITY_CLIP]`` so every loss is finite; ``labels`` are
    0 or 1.

    Raises:
        ValueError: empty or non-finite input, probabilities outside [0, 1], labels other
            than 0/1, or different lengths (every problem is listed).
    """
    where = "per_example_losses"
    problems: list[str] = []
    p = _check_probabilities(probabilities, where=where, name="probabilities", problems=problems)
    y = _check_labels(labels, where=where, name="labels", problems=problems)
    _check_same_length(p, y, where=where, names=("probabilities", "labels"), problems=problems)
    _raise_if(problems)
    assert p is not None and y is not None  # for mypy: _raise_if raised otherwise
    clipped = np.clip(p, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    return np.asarray(-(y * np.log(clipped) + (1.0 - y) * np.log1p(-clipped)), dtype=np.float64)


def epsilon_lower_bound(member_scores: np.ndarray, non_member_scores: np.ndarray, *,
                        delta: float, confidence: float = 0.95, seed: int = 0) -> float:
    """An empirical LOWER bound on epsilon from one attack's membership scores.

    Higher scores mean "more likely a member". With probability at least ``confidence``
    (over the rows, treated as independent trials), any training that is (eps, ``delta``)-DP
    has ``eps >=`` the returned value. The bound can only show that a claim is violated; it
    never proves privacy, and with a few hundred rows it is small even for a model that
    leaks badly (see the module docstring).

    Method: the rows of each group are split at random (``seed``) into halves; the threshold
    with the largest Clopper-Pearson bound on the selection half is chosen, and the bound is
    computed once at that threshold on the evaluation half, with each of the two one-sided
    Clopper-Pearson bounds at ``(1 - confidence) / 2``. Returns ``max(0, bound)``.

    Raises:
        ValueError: fewer than 2 scores in a group, non-finite scores, ``delta`` outside
            [0, 1) or ``confidence`` outside (0, 1) (every problem is listed).
    """
    where = "epsilon_lower_bound"
    problems: list[str] = []
    members = _as_vector(member_scores, where=where, name="member_scores", problems=problems,
                         min_rows=2)
    non_members = _as_vector(non_member_scores, where=where, name="non_member_scores",
                             problems=problems, min_rows=2)
    _check_delta(delta, where=where, problems=problems)
    _check_confidence(confidence, where=where, problems=problems)
    _raise_if(problems)
    assert members is not None and non_members is not None

    result = _select_and_evaluate(members, non_members, delta=float(delta),
                                  alpha=1.0 - float(confidence), seed=seed)
    if result is None:
        logger.debug("epsilon_lower_bound: all selection-half scores are equal; bound 0")
        return 0.0
    logger.debug("epsilon_lower_bound: threshold %.6g, evaluation TPR %.4f FPR %.4f, "
                 "bound %.4f", result.threshold, result.tpr, result.fpr, result.epsilon)
    return max(0.0, result.epsilon)


@dataclass(frozen=True, kw_only=True)
class AttackResult:
    """One membership-inference attack on one site's rows.

    ``auc`` and ``advantage`` (max over thresholds of TPR - FPR) are point estimates on all
    rows; ``epsilon_lower_bound`` is the confidence-qualified LOWER bound (see
    ``epsilon_lower_bound``), at the confidence recorded in the enclosing ``AuditReport``.
    """

    attack: str
    auc: float
    advantage: float
    epsilon_lower_bound: float
    members: int
    non_members: int

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not 0.0 <= self.auc <= 1.0:
            problems.append(f"AttackResult: auc must be in [0, 1]; got {self.auc!r}")
        if not 0.0 <= self.advantage <= 1.0:
            problems.append(f"AttackResult: advantage must be in [0, 1]; got {self.advantage!r}")
        if not (math.isfinite(self.epsilon_lower_bound) and self.epsilon_lower_bound >= 0.0):
            problems.append("AttackResult: epsilon_lower_bound must be finite and >= 0; "
                            f"got {self.epsilon_lower_bound!r}")
        for name in ("members", "non_members"):
            if getattr(self, name) < 1:
                problems.append(f"AttackResult: {name} must be >= 1; got {getattr(self, name)!r}")
        _raise_if(problems)


def _format_lower_bound(epsilon: float, digits: int = 2) -> str:
    """A lower bound rounded DOWN for display, so it is never overstated."""
    quantum = Decimal(1).scaleb(-digits)
    return str(Decimal(repr(float(epsilon))).quantize(quantum, rounding=ROUND_FLOOR))


@dataclass(frozen=True, kw_only=True)
class AuditReport:
    """A site's empirical privacy audit, to be shown next to its claimed (epsilon, delta).

    ``confidence`` is family-wise: with ``k`` attacks, each attack's bound is computed at
    ``1 - (1 - confidence) / k`` (Bonferroni), so ``best()`` holds at ``confidence``.
    ``claimed_epsilon`` is None when the run made no DP claim.
    """

    site: str
    claimed_epsilon: float | None
    delta: float
    confidence: float
    attacks: tuple[AttackResult, ...]

    def __post_init__(self) -> None:
        where = "AuditReport"
        problems: list[str] = []
        if self.claimed_epsilon is not None and not (
                math.isfinite(self.claimed_epsilon) and self.claimed_epsilon >= 0.0):
            problems.append(f"{where}: claimed_epsilon must be None or finite and >= 0; "
                            f"got {self.claimed_epsilon!r}")
        _check_delta(self.delta, where=where, problems=problems)
        _check_confidence(self.confidence, where=where, problems=problems)
        if not self.attacks:
            problems.append(f"{where}: attacks must not be empty; got ()")
        _raise_if(problems)

    def best(self) -> AttackResult:
        """The attack with the largest epsilon lower bound (ties: the larger AUC)."""
        return max(self.attacks, key=lambda a: (a.epsilon_lower_bound, a.auc))

    def violates_claim(self) -> bool | None:
        """True when the best lower bound exceeds the claimed epsilon; None if no claim."""
        if self.claimed_epsilon is None:
            return None
        return self.best().epsilon_lower_bound > self.claimed_epsilon

    def summary(self) -> str:
        """One line, e.g. ``site X: attack AUC 0.53, empirical eps >= 0.00 (95% conf.) vs
        claimed eps 1.00 at delta 1e-03``. The lower bound is rounded down, the claim up."""
        best = self.best()
        claim = ("no claimed eps (DP off)" if self.claimed_epsilon is None
                 else f"claimed eps {format_epsilon(self.claimed_epsilon)}")
        line = (f"site {self.site}: attack AUC {best.auc:.2f}, empirical eps >= "
                f"{_format_lower_bound(best.epsilon_lower_bound)} "
                f"({round(self.confidence * 100, 6):g}% conf.) vs {claim} "
                f"at delta {format_delta(self.delta)}")
        if self.violates_claim():
            line += " -- CLAIM VIOLATED"
        return line

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the run report)."""
        best = self.best()
        return {
            "site": self.site,
            "claimed_epsilon": self.claimed_epsilon,
            "delta": self.delta,
            "confidence": self.confidence,
            "per_attack_confidence": 1.0 - (1.0 - self.confidence) / len(self.attacks),
            "attacks": [asdict(attack) for attack in self.attacks],
            "best_attack": best.attack,
            "epsilon_lower_bound": best.epsilon_lower_bound,
            "violates_claim": self.violates_claim(),
            "method": ("membership inference (members: site train rows, non-members: site "
                       "held-out rows); threshold chosen on a random half, one-sided "
                       "Clopper-Pearson bounds on the other half; Bonferroni over attacks"),
            "interpretation": ("a LOWER bound: it can show a privacy claim is violated, "
                               "never prove that the model is private"),
            "summary": self.summary(),
        }


def _attack_result(name: str, member_scores: FloatArray, non_member_scores: FloatArray, *,
                   delta: float, confidence: float, seed: int) -> AttackResult:
    truth = np.concatenate([np.ones(member_scores.size), np.zeros(non_member_scores.size)])
    scores = np.concatenate([member_scores, non_member_scores])
    fpr, tpr, _ = metrics.roc_curve(truth, scores)
    return AttackResult(
        attack=name,
        auc=float(metrics.roc_auc_score(truth, scores)),
        advantage=float(np.clip(np.max(tpr - fpr), 0.0, 1.0)),
        epsilon_lower_bound=epsilon_lower_bound(member_scores, non_member_scores, delta=delta,
                                                confidence=confidence, seed=seed),
        members=int(member_scores.size),
        non_members=int(non_member_scores.size),
    )


def audit_membership(*, site: str, member_probabilities: np.ndarray, member_labels: np.ndarray,
                     non_member_probabilities: np.ndarray, non_member_labels: np.ndarray,
                     claimed_epsilon: float | None, delta: float, confidence: float = 0.95,
                     seed: int = 0) -> AuditReport:
    """Attack a trained model with a site's train rows (members) and held-out rows.

    ``*_probabilities`` are the model's predicted probabilities of label 1 for those rows
    (``model.predict`` output, ``(n,)`` or ``(n, 1)``); ``*_labels`` the true 0/1 labels.
    Runs every attack in ``ATTACKS`` and bounds epsilon for each at
    ``1 - (1 - confidence) / len(ATTACKS)`` so that the report's best bound holds at
    ``confidence``. ``seed`` fixes the selection/evaluation split (take it from the run
    config). ``delta`` should be the claimed delta.

    The bound is a LOWER bound: it can show that ``claimed_epsilon`` is violated, never
    that the model is private; with a few hundred rows it is small.

    Raises:
        ValueError: fewer than 2 rows in a group, probabilities outside [0, 1], labels
            other than 0/1, mismatched lengths, a negative or non-finite claimed epsilon,
            ``delta`` outside [0, 1) or ``confidence`` outside (0, 1) (all listed at once).
    """
    where = "audit_membership"
    problems: list[str] = []
    groups: dict[str, tuple[FloatArray | None, FloatArray | None]] = {}
    for group in ("member", "non_member"):
        names = (f"{group}_probabilities", f"{group}_labels")
        values: Mapping[str, np.ndarray] = {
            names[0]: member_probabilities if group == "member" else non_member_probabilities,
            names[1]: member_labels if group == "member" else non_member_labels,
        }
        p = _check_probabilities(values[names[0]], where=where, name=names[0],
                                 problems=problems, min_rows=2)
        y = _check_labels(values[names[1]], where=where, name=names[1], problems=problems,
                          min_rows=2)
        _check_same_length(p, y, where=where, names=names, problems=problems)
        groups[group] = (p, y)
    if claimed_epsilon is not None and not (
            isinstance(claimed_epsilon, int | float) and math.isfinite(claimed_epsilon)
            and claimed_epsilon >= 0.0):
        problems.append(f"{where}: claimed_epsilon must be None or finite and >= 0; "
                        f"got {claimed_epsilon!r}")
    _check_delta(delta, where=where, problems=problems)
    _check_confidence(confidence, where=where, problems=problems)
    _raise_if(problems)

    per_attack_confidence = 1.0 - (1.0 - confidence) / len(ATTACKS)
    scores: dict[str, list[FloatArray]] = {name: [] for name in ATTACKS}
    for group in ("member", "non_member"):
        p, y = groups[group]
        assert p is not None and y is not None
        scores["loss-threshold"].append(-per_example_losses(p, y))
        scores["confidence-threshold"].append(np.where(y == 1.0, p, 1.0 - p))

    report = AuditReport(
        site=site,
        claimed_epsilon=None if claimed_epsilon is None else float(claimed_epsilon),
        delta=float(delta),
        confidence=float(confidence),
        attacks=tuple(
            _attack_result(name, member_scores, non_member_scores, delta=float(delta),
                           confidence=per_attack_confidence, seed=seed)
            for name, (member_scores, non_member_scores) in scores.items()
        ),
    )
    if report.violates_claim():
        logger.warning("privacy audit: %s", report.summary())
    else:
        logger.info("privacy audit: %s", report.summary())
    return report
