"""Empirical privacy audit: membership-inference AUC and the epsilon lower bound.

Reference values and cross-checks:
* Clopper-Pearson with no successes in n trials: upper bound ``1 - alpha ** (1 / n)``; with
  n successes: lower bound ``alpha ** (1 / n)`` (closed forms of the Beta quantile), and
  scipy's independent ``binomtest(...).proportion_ci(method="exact")``.
* Perfectly separated scores: every evaluation-half member above and every non-member below
  the threshold, so the bound is exactly ``log((a ** (1 / m) - delta) / (1 - a ** (1 / m)))``
  with ``a = (1 - confidence) / 2`` and ``m`` the evaluation-half size.
* Randomized response with known epsilon: members answer 1 w.p. ``e^eps / (1 + e^eps)``,
  non-members w.p. ``1 / (1 + e^eps)``; the ratio TPR / FPR is exactly ``e^eps``, so the
  bound must stay below eps (soundness) and come close to it (power).
* Laplace mechanism (score = membership bit + Laplace(1 / eps)) is eps-DP with continuous
  scores, where choosing the best of many thresholds matters: the plug-in estimate
  overshoots eps, the bound must not (beyond the 5% its confidence allows).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from scipy import stats

from fedcare.privacy import empirical
from fedcare.privacy.empirical import (
    ATTACKS,
    AttackResult,
    AuditReport,
    audit_membership,
    clopper_pearson_lower,
    clopper_pearson_upper,
    epsilon_lower_bound,
    per_example_losses,
)

AUC_TOLERANCE = 0.05  # > 5 standard errors of the AUC at 2000 + 2000 rows (SE ~ 0.009)


# ------------------------------------------------------------------------------ factories


def randomized_response(eps: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Member and non-member answers of an eps-DP randomized response."""
    rng = np.random.default_rng(seed)
    p_member = math.exp(eps) / (1.0 + math.exp(eps))
    members = (rng.random(n) < p_member).astype(float)
    non_members = (rng.random(n) < 1.0 - p_member).astype(float)
    return members, non_members


def separated_scores(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Members' scores in [1, 2], non-members' in [-2, -1]: a perfect attack."""
    return np.linspace(1.0, 2.0, n), np.linspace(-2.0, -1.0, n)


def perfect_separation_bound(evaluation_rows: int, *, delta: float, confidence: float) -> float:
    a = (1.0 - confidence) / 2.0
    tpr_lo = a ** (1.0 / evaluation_rows)
    return math.log((tpr_lo - delta) / (1.0 - tpr_lo))


def model_outputs(n: int, seed: int, *, member_confidence: tuple[float, float],
                  non_member_confidence: tuple[float, float]) -> dict[str, Any]:
    """Probabilities of label 1 and labels for both groups; the probability given to the
    TRUE label is drawn from Beta(*confidence) for each group."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for group, shape in (("member", member_confidence), ("non_member", non_member_confidence)):
        labels = rng.integers(0, 2, n).astype(float)
        p_true = rng.beta(*shape, n)
        out[f"{group}_labels"] = labels
        out[f"{group}_probabilities"] = np.where(labels == 1.0, p_true, 1.0 - p_true)
    return out


def make_attack(**overrides: Any) -> AttackResult:
    kwargs: dict[str, Any] = {"attack": "loss-threshold", "auc": 0.534, "advantage": 0.05,
                              "epsilon_lower_bound": 0.0, "members": 300, "non_members": 100}
    kwargs.update(overrides)
    return AttackResult(**kwargs)


def make_report(**overrides: Any) -> AuditReport:
    kwargs: dict[str, Any] = {"site": "X", "claimed_epsilon": 1.0, "delta": 1e-3,
                              "confidence": 0.95, "attacks": (make_attack(),)}
    kwargs.update(overrides)
    return AuditReport(**kwargs)


# ------------------------------------------------------------------------- Clopper-Pearson


@pytest.mark.parametrize("n", [1, 10, 250])
def test_clopper_pearson_zero_and_all_successes_match_closed_forms(n: int) -> None:
    alpha = 0.05
    assert float(clopper_pearson_upper(0, n, alpha)) == pytest.approx(1 - alpha ** (1 / n),
                                                                      rel=1e-12)
    assert float(clopper_pearson_lower(n, n, alpha)) == pytest.approx(alpha ** (1 / n),
                                                                      rel=1e-12)
    assert float(clopper_pearson_lower(0, n, alpha)) == 0.0
    assert float(clopper_pearson_upper(n, n, alpha)) == 1.0


@pytest.mark.parametrize(("k", "n"), [(3, 10), (37, 120), (499, 500)])
def test_clopper_pearson_one_sided_equals_scipy_two_sided_exact_at_twice_alpha(
        k: int, n: int) -> None:
    alpha = 0.025
    interval = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha,
                                                   method="exact")
    assert float(clopper_pearson_lower(k, n, alpha)) == pytest.approx(interval.low, rel=1e-9)
    assert float(clopper_pearson_upper(k, n, alpha)) == pytest.approx(interval.high, rel=1e-9)


# ---------------------------------------------------------------------- per-example losses


def test_per_example_losses_match_hand_computed_cross_entropy() -> None:
    probabilities = np.array([[0.9], [0.2], [0.5], [0.25]])  # model.predict's (n, 1) column
    labels = np.array([1, 0, 1, 0])
    expected = [-math.log(0.9), -math.log(0.8), math.log(2.0), -math.log(0.75)]
    np.testing.assert_allclose(per_example_losses(probabilities, labels), expected, rtol=1e-12)


def test_per_example_losses_clip_certain_predictions_to_finite_values() -> None:
    losses = per_example_losses(np.array([0.0, 1.0, 1.0, 0.0]), np.array([1, 0, 1, 0]))
    clip = empirical.PROBABILITY_CLIP
    np.testing.assert_allclose(losses, [-math.log(clip), -math.log(clip),
                                        -math.log1p(-clip), -math.log1p(-clip)], rtol=1e-9)
    assert losses[0] == pytest.approx(16.118095651, rel=1e-9)  # -ln(1e-7)


# -------------------------------------------------------------------- epsilon lower bound


def test_identical_distributions_give_chance_auc_and_a_small_bound() -> None:
    rng = np.random.default_rng(7)
    members, non_members = rng.normal(size=2000), rng.normal(size=2000)
    auc = empirical._attack_result("x", members, non_members, delta=1e-3, confidence=0.95,
                                   seed=0).auc
    assert abs(auc - 0.5) < AUC_TOLERANCE
    assert epsilon_lower_bound(members, non_members, delta=1e-3) < 0.5


@pytest.mark.parametrize("n", [100, 1000])
def test_perfect_separation_bound_equals_its_closed_form(n: int) -> None:
    members, non_members = separated_scores(n)
    expected = perfect_separation_bound(n - n // 2, delta=1e-3, confidence=0.95)
    assert epsilon_lower_bound(members, non_members, delta=1e-3) == pytest.approx(expected,
                                                                                  rel=1e-9)


def test_perfect_separation_gives_auc_one_and_a_finite_bound_that_grows_with_n() -> None:
    small, large = separated_scores(100), separated_scores(1000)
    result = empirical._attack_result("x", *small, delta=1e-3, confidence=0.95, seed=0)
    assert result.auc == 1.0 and result.advantage == 1.0
    bound_small = epsilon_lower_bound(*small, delta=1e-3)
    bound_large = epsilon_lower_bound(*large, delta=1e-3)
    assert math.isfinite(bound_large)
    assert 2.0 < bound_small < bound_large < 6.0  # ~2.57 and ~4.90: large, yet finite


@pytest.mark.parametrize("eps", [0.5, 2.0])
def test_randomized_response_bound_is_sound_and_has_power(eps: float) -> None:
    members, non_members = randomized_response(eps, 5000, seed=11)
    bound = epsilon_lower_bound(members, non_members, delta=1e-5)
    assert bound <= eps  # soundness: never above the mechanism's true epsilon
    assert bound > 0.3 * eps  # power: the audit does detect most of it


def test_randomized_response_bound_exceeds_true_epsilon_at_most_alpha_of_the_time() -> None:
    eps, trials = 1.0, 300
    bounds = np.array([epsilon_lower_bound(*randomized_response(eps, 300, seed=s), delta=0.0,
                                           seed=s) for s in range(trials)])
    assert np.mean(bounds > eps) <= 0.05
    assert np.mean(bounds) > 0.3 * eps  # not vacuous: the bounds are far from zero


def test_laplace_scores_bound_stays_sound_where_the_plug_in_estimate_overshoots() -> None:
    eps, n, trials = 1.0, 500, 200
    violations = overshoots = 0
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        members = 1.0 + rng.laplace(0.0, 1.0 / eps, n)
        non_members = rng.laplace(0.0, 1.0 / eps, n)
        violations += epsilon_lower_bound(members, non_members, delta=0.0, seed=seed) > eps
        thresholds = np.unique(non_members)  # every threshold with FPR > 0
        tpr = (members[None, :] >= thresholds[:, None]).mean(axis=1)
        fpr = (non_members[None, :] >= thresholds[:, None]).mean(axis=1)
        overshoots += np.max(np.log(np.maximum(tpr, 1e-300) / fpr)) > eps
    assert violations / trials <= 0.05
    assert overshoots / trials > 0.5  # the naive max over thresholds is not a valid bound


def test_bound_shrinks_as_delta_or_confidence_grows() -> None:
    # Binary scores offer one threshold, so the comparison is at a fixed threshold.
    members, non_members = randomized_response(2.0, 2000, seed=3)
    by_delta = [epsilon_lower_bound(members, non_members, delta=d) for d in (0.0, 1e-2, 0.1)]
    by_confidence = [epsilon_lower_bound(members, non_members, delta=1e-5, confidence=c)
                     for c in (0.5, 0.95, 0.999)]
    assert by_delta[0] > by_delta[1] > by_delta[2] > 0
    assert by_confidence[0] > by_confidence[1] > by_confidence[2] > 0


def test_constant_scores_give_a_zero_bound() -> None:
    assert epsilon_lower_bound(np.ones(50), np.ones(50), delta=1e-3) == 0.0


def test_bound_is_reproducible_for_a_seed() -> None:
    rng = np.random.default_rng(5)
    members, non_members = rng.normal(0.3, 1, 400), rng.normal(0, 1, 400)
    first = epsilon_lower_bound(members, non_members, delta=1e-3, seed=9)
    assert first == epsilon_lower_bound(members, non_members, delta=1e-3, seed=9)


# ---------------------------------------------------------------------------------- audit


def test_audit_of_a_memorising_model_exceeds_a_small_claim_and_warns(
        caplog: pytest.LogCaptureFixture) -> None:
    outputs = model_outputs(1000, seed=1, member_confidence=(20, 1),
                            non_member_confidence=(2, 2))
    with caplog.at_level(logging.WARNING, logger=empirical.__name__):
        report = audit_membership(site="site-1", claimed_epsilon=0.1, delta=1e-3, **outputs)
    assert tuple(a.attack for a in report.attacks) == ATTACKS
    assert report.best().auc > 0.9
    assert report.best().epsilon_lower_bound > 1.0
    assert report.violates_claim() is True
    assert "CLAIM VIOLATED" in report.summary()
    assert "CLAIM VIOLATED" in caplog.text


def test_audit_of_a_model_that_does_not_memorise_finds_nothing() -> None:
    outputs = model_outputs(1000, seed=2, member_confidence=(3, 2),
                            non_member_confidence=(3, 2))
    report = audit_membership(site="site-2", claimed_epsilon=1.0, delta=1e-3, **outputs)
    assert abs(report.best().auc - 0.5) < AUC_TOLERANCE
    assert report.best().epsilon_lower_bound < 0.5
    assert report.violates_claim() is False


def test_loss_and_true_label_confidence_attacks_rank_rows_identically() -> None:
    outputs = model_outputs(500, seed=3, member_confidence=(4, 2),
                            non_member_confidence=(3, 2))
    loss, confidence = audit_membership(site="s", claimed_epsilon=1.0, delta=1e-3,
                                        **outputs).attacks
    assert loss.auc == pytest.approx(confidence.auc, abs=1e-12)
    assert loss.epsilon_lower_bound == pytest.approx(confidence.epsilon_lower_bound, abs=1e-12)
    assert loss.auc > 0.55  # the groups do differ: the agreement is not between two 0.5s


def test_audit_splits_confidence_across_attacks_bonferroni() -> None:
    outputs = model_outputs(800, seed=4, member_confidence=(6, 1),
                            non_member_confidence=(3, 2))
    report = audit_membership(site="s", claimed_epsilon=1.0, delta=1e-3, confidence=0.95,
                              seed=17, **outputs)
    member_scores = -per_example_losses(outputs["member_probabilities"],
                                        outputs["member_labels"])
    non_member_scores = -per_example_losses(outputs["non_member_probabilities"],
                                            outputs["non_member_labels"])
    per_attack = epsilon_lower_bound(member_scores, non_member_scores, delta=1e-3,
                                     confidence=1 - 0.05 / len(ATTACKS), seed=17)
    at_family_level = epsilon_lower_bound(member_scores, non_member_scores, delta=1e-3,
                                          confidence=0.95, seed=17)
    assert report.attacks[0].epsilon_lower_bound == pytest.approx(per_attack, rel=1e-12)
    # The split really was applied (the threshold chosen can differ with the confidence, so
    # the two need not be ordered; they must differ).
    assert per_attack > 0 and per_attack != pytest.approx(at_family_level, rel=1e-6)
    assert report.to_dict()["per_attack_confidence"] == pytest.approx(0.975)


# --------------------------------------------------------------------------------- report


def test_summary_matches_the_documented_line() -> None:
    assert make_report().summary() == ("site X: attack AUC 0.53, empirical eps >= 0.00 (95% "
                                       "conf.) vs claimed eps 1.00 at delta 1e-03")


def test_summary_rounds_the_lower_bound_down_and_the_claim_up() -> None:
    report = make_report(claimed_epsilon=0.991,
                         attacks=(make_attack(epsilon_lower_bound=0.4999),))
    assert "empirical eps >= 0.49 " in report.summary()
    assert "claimed eps 1.00 " in report.summary()


def test_summary_states_confidence_without_rounding_it_up() -> None:
    assert "(99.9% conf.)" in make_report(confidence=0.999).summary()


def test_summary_without_a_claim_says_so() -> None:
    report = make_report(claimed_epsilon=None)
    assert "no claimed eps (DP off)" in report.summary()
    assert report.violates_claim() is None


def test_best_prefers_the_largest_bound_then_the_larger_auc() -> None:
    low = make_attack(attack="a", epsilon_lower_bound=0.1, auc=0.9)
    high = make_attack(attack="b", epsilon_lower_bound=0.2, auc=0.6)
    tie = make_attack(attack="c", epsilon_lower_bound=0.2, auc=0.7)
    assert make_report(attacks=(low, high)).best().attack == "b"
    assert make_report(attacks=(high, tie, low)).best().attack == "c"


def test_to_dict_is_json_ready_and_complete() -> None:
    outputs = model_outputs(200, seed=5, member_confidence=(4, 1),
                            non_member_confidence=(3, 2))
    report = audit_membership(site="s", claimed_epsilon=None, delta=1e-3, **outputs)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["site"] == "s" and data["claimed_epsilon"] is None
    assert [a["attack"] for a in data["attacks"]] == list(ATTACKS)
    assert data["attacks"][0]["members"] == 200
    assert data["epsilon_lower_bound"] == report.best().epsilon_lower_bound
    assert data["summary"] == report.summary()
    assert "LOWER bound" in data["interpretation"]


def test_module_does_not_import_tensorflow() -> None:
    code = ("import sys, fedcare.privacy.empirical; "
            "sys.exit(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("probabilities", "labels", "match"), [
    ([], [], r"probabilities must hold at least 1 row\(s\); got 0"),
    ([0.2, 1.5], [0, 1], r"probabilities must be in \[0, 1\]; got 1\.5 at row 1"),
    ([-0.1, 0.5], [0, 1], r"probabilities must be in \[0, 1\]; got -0\.1 at row 0"),
    ([0.2, float("nan")], [0, 1], r"probabilities must be finite; got nan at row 1"),
    ([0.2, 0.5], [0, 2], r"labels must be 0 or 1; got 2\.0 at row 1"),
    ([0.2, 0.5], [0.5, 1], r"labels must be 0 or 1; got 0\.5 at row 0"),
    ([0.2, 0.5, 0.7], [0, 1], r"must have the same length; got 3 and 2"),
    ([[0.2, 0.8]], [0], r"probabilities must be one-dimensional .*got shape \(1, 2\)"),
])
def test_per_example_losses_rejects_bad_input_naming_argument_and_value(
        probabilities: Any, labels: Any, match: str) -> None:
    with pytest.raises(ValueError, match=r"per_example_losses: .*" + match):
        per_example_losses(np.asarray(probabilities), np.asarray(labels))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"delta": -0.1}, r"delta must be in \[0, 1\); got -0\.1"),
    ({"delta": 1.0}, r"delta must be in \[0, 1\); got 1\.0"),
    ({"confidence": 1.0}, r"confidence must be in \(0, 1\); got 1\.0"),
    ({"confidence": 0}, r"confidence must be in \(0, 1\); got 0"),
    ({"member_scores": np.array([])}, r"member_scores must hold at least 2 row\(s\); got 0"),
    ({"non_member_scores": np.array([1.0])}, r"non_member_scores must hold at least 2"),
    ({"member_scores": np.array([1.0, np.inf])}, r"member_scores must be finite; got inf"),
])
def test_epsilon_lower_bound_rejects_bad_input_naming_argument_and_value(
        kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"member_scores": np.ones(4), "non_member_scores": np.zeros(4),
                                 "delta": 1e-3}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=r"epsilon_lower_bound: " + match):
        epsilon_lower_bound(**arguments)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"member_probabilities": np.array([])}, r"member_probabilities must hold at least 2"),
    ({"non_member_labels": np.array([0, 3, 1, 0])}, r"non_member_labels must be 0 or 1; got 3"),
    ({"member_probabilities": np.array([0.1, 0.2, 2.0, 0.5])},
     r"member_probabilities must be in \[0, 1\]; got 2\.0 at row 2"),
    ({"claimed_epsilon": -1.0}, r"claimed_epsilon must be None or finite and >= 0; got -1\.0"),
    ({"claimed_epsilon": math.inf}, r"claimed_epsilon must be None or finite and >= 0; got inf"),
    ({"delta": 2.0}, r"delta must be in \[0, 1\); got 2\.0"),
    ({"confidence": 1.5}, r"confidence must be in \(0, 1\); got 1\.5"),
])
def test_audit_membership_rejects_bad_input_naming_argument_and_value(
        kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {
        "site": "s", "claimed_epsilon": 1.0, "delta": 1e-3,
        "member_probabilities": np.array([0.9, 0.8, 0.3, 0.6]),
        "member_labels": np.array([1, 1, 0, 1]),
        "non_member_probabilities": np.array([0.4, 0.5, 0.2, 0.7]),
        "non_member_labels": np.array([1, 0, 0, 1]),
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=r"audit_membership: " + match):
        audit_membership(**arguments)


def test_audit_membership_reports_every_problem_at_once() -> None:
    with pytest.raises(ValueError) as caught:
        audit_membership(site="s", claimed_epsilon=-1.0, delta=5.0, confidence=0.0,
                         member_probabilities=np.array([0.5, 7.0]),
                         member_labels=np.array([1, 1]),
                         non_member_probabilities=np.array([0.5, 0.5]),
                         non_member_labels=np.array([9, 0]))
    message = str(caught.value)
    for name in ("member_probabilities", "non_member_labels", "claimed_epsilon", "delta",
                 "confidence"):
        assert name in message


@pytest.mark.parametrize(("build", "match"), [
    (lambda: make_report(attacks=()), r"AuditReport: attacks must not be empty"),
    (lambda: make_report(delta=1.0), r"AuditReport: delta must be in \[0, 1\); got 1\.0"),
    (lambda: make_attack(epsilon_lower_bound=-0.1),
     r"AttackResult: epsilon_lower_bound must be finite and >= 0; got -0\.1"),
    (lambda: make_attack(auc=1.2), r"AttackResult: auc must be in \[0, 1\]; got 1\.2"),
])
def test_report_and_attack_result_reject_bad_fields(build: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()
