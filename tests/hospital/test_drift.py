"""Drift check: a batch like training passes, a shifted feature (and only it) is flagged,
PSI agrees with a hand computation, and bad shapes fail loudly."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from fedcare.common.files import strict_json_loads
from fedcare.hospital.drift import (
    KIND_BINNED,
    KIND_CATEGORICAL,
    PSI_EPSILON,
    DriftReport,
    check_drift,
    training_profile,
)

NAMES = ("age", "chol", "thalach", "sex", "cp=1", "cp=2", "cp=3")
SAME_DISTRIBUTION_PSI = 0.06
"""Tolerance: with 10 bins, 600 new and 3000 training rows, PSI under no drift averages
about 9 * (1/600 + 1/3000) = 0.018; 0.06 leaves room for the seed's draw."""
SAME_DISTRIBUTION_SHIFT = 0.15  # SD; the sampling SD of a 600-row mean is 0.04


def encoded_rows(n: int, *, seed: int, shift: dict[int, float] | None = None,
                 sex_rate: float = 0.2) -> np.ndarray:
    """Rows as a site preprocessor emits them: 3 standardized numerics, a binary column
    (rate ``sex_rate``) and a 3-way one-hot block; float32."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(n, 3))
    for column, sd in (shift or {}).items():
        numeric[:, column] += sd
    sex = (rng.random(n) < sex_rate).astype(np.float64)
    one_hot = np.eye(3)[rng.choice(3, size=n, p=(0.5, 0.3, 0.2))]
    return np.column_stack([numeric, sex, one_hot]).astype(np.float32)


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    return training_profile(encoded_rows(3000, seed=1), NAMES)


def by_name(report: DriftReport) -> dict[str, float]:
    return {f.feature: f.psi for f in report.features}


def test_profile_bins_numerics_by_decile_and_binary_columns_by_rate(
        profile: dict[str, Any]) -> None:
    features = {f["name"]: f for f in profile["features"]}

    assert profile["n"] == 3000
    assert features["age"]["kind"] == KIND_BINNED
    assert len(features["age"]["edges"]) == 9
    assert features["age"]["fractions"] == pytest.approx([0.1] * 10)
    assert features["sex"]["kind"] == KIND_CATEGORICAL
    assert features["sex"]["values"] == [0.0, 1.0]
    assert features["sex"]["fractions"][1] == pytest.approx(0.2, abs=0.02)
    assert features["sex"]["mean"] == pytest.approx(features["sex"]["fractions"][1])


def test_a_batch_from_the_training_distribution_flags_nothing(
        profile: dict[str, Any]) -> None:
    report = check_drift(profile, encoded_rows(600, seed=2))

    assert report.flagged() == ()
    assert max(f.psi for f in report.features) < SAME_DISTRIBUTION_PSI
    assert max(f.mean_shift_sd for f in report.features) < SAME_DISTRIBUTION_SHIFT
    assert report.warnings == ()
    assert "none drifted" in report.summary()


def test_a_feature_shifted_by_one_and_a_half_sd_is_flagged_and_only_it(
        profile: dict[str, Any]) -> None:
    report = check_drift(profile, encoded_rows(600, seed=3, shift={1: 1.5}))

    assert [f.feature for f in report.flagged()] == ["chol"]
    chol = next(f for f in report.features if f.feature == "chol")
    assert chol.mean_shift_sd == pytest.approx(1.5, abs=0.15)
    assert chol.psi > 0.2
    assert "chol" in report.summary()


def test_a_binary_rate_moving_from_0_2_to_0_8_is_flagged(profile: dict[str, Any]) -> None:
    report = check_drift(profile, encoded_rows(600, seed=4, sex_rate=0.8))

    assert [f.feature for f in report.flagged()] == ["sex"]
    sex = next(f for f in report.features if f.feature == "sex")
    assert sex.kind == KIND_CATEGORICAL
    assert sex.mean_new == pytest.approx(0.8, abs=0.05)


def test_binary_psi_equals_the_hand_computed_value() -> None:
    train = np.r_[np.ones(20), np.zeros(80)][:, None]  # rate 0.2
    new = np.r_[np.ones(40), np.zeros(10)][:, None]  # rate 0.8

    report = check_drift(training_profile(train, ["smoker"]), new)

    # (0.8 - 0.2) ln(0.8 / 0.2) + (0.2 - 0.8) ln(0.2 / 0.8) = 1.2 ln 4
    assert report.features[0].psi == pytest.approx(1.2 * math.log(4))
    assert report.features[0].mean_shift_sd == pytest.approx(0.6 / 0.4)


def test_empty_bins_use_the_documented_epsilon() -> None:
    train = np.arange(100, dtype=np.float64)[:, None]  # deciles: 10 rows per bin
    new = np.full((30, 1), 3.0)  # every new row in the first bin

    psi = check_drift(training_profile(train, ["x"]), new).features[0].psi

    expected = (1 - 0.1) * math.log(1 / 0.1) + 9 * (PSI_EPSILON - 0.1) * math.log(
        PSI_EPSILON / 0.1)
    assert psi == pytest.approx(expected)


def test_a_value_never_seen_in_a_constant_training_column_is_flagged() -> None:
    train = np.column_stack([np.random.default_rng(0).normal(size=2000), np.zeros(2000)])
    new = np.column_stack([np.random.default_rng(1).normal(size=500),
                           np.r_[np.ones(10), np.zeros(490)]])

    report = check_drift(training_profile(train, ["x", "rare"]), new)

    assert [f.feature for f in report.flagged()] == ["rare"]
    assert math.isinf(report.flagged()[0].mean_shift_sd)
    assert report.to_dict()["features"][1]["mean-shift-sd"] is None  # JSON has no inf
    assert "training held only 0" in report.flagged()[0].reason


def test_a_small_batch_warns_instead_of_flagging(profile: dict[str, Any]) -> None:
    report = check_drift(profile, encoded_rows(12, seed=5, shift={0: 3.0}), min_rows=20)

    assert report.flagged() == () and not report.judged
    assert any("too few rows to judge drift" in w for w in report.warnings)
    assert all(f.reason.startswith("not judged") for f in report.features)
    assert report.features[0].mean_shift_sd > 2  # the figures are still reported


def test_a_mid_sized_batch_carries_a_psi_noise_warning(profile: dict[str, Any]) -> None:
    report = check_drift(profile, encoded_rows(60, seed=6))

    assert any("PSI is noisy" in w for w in report.warnings)


def test_profile_and_report_survive_a_strict_json_round_trip(
        profile: dict[str, Any]) -> None:
    batch = encoded_rows(600, seed=7, shift={2: 1.5})

    restored = strict_json_loads(json.dumps(profile, allow_nan=False))
    report = check_drift(restored, batch)

    assert restored == profile
    assert report == check_drift(profile, batch)
    assert strict_json_loads(json.dumps(report.to_dict(), allow_nan=False))["flagged"] == [
        "thalach"]


@pytest.mark.parametrize("width", [6, 8])
def test_a_batch_of_the_wrong_width_is_refused(profile: dict[str, Any], width: int) -> None:
    batch = np.zeros((30, width))

    with pytest.raises(ValueError, match=rf"must have 7 columns .*; got {width}$"):
        check_drift(profile, batch)


def test_feature_names_in_another_order_are_refused(profile: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="feature_names must match the profile's features"):
        check_drift(profile, encoded_rows(30, seed=8), feature_names=NAMES[::-1])


@pytest.mark.parametrize(("edit", "message"), [
    ({"format": "something-else"}, "format must be 'fedcare-training-profile'"),
    ({"version": 2}, "version must be 1"),
    ({"n": 0}, "n must be an integer >= 1"),
    ({"extra": 1}, r"unknown \['extra'\]"),
])
def test_a_malformed_profile_is_refused(profile: dict[str, Any], edit: dict[str, Any],
                                        message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_drift({**profile, **edit}, encoded_rows(30, seed=9))


def test_non_finite_rows_and_bad_thresholds_are_refused(profile: dict[str, Any]) -> None:
    batch = encoded_rows(30, seed=10).astype(np.float64)
    batch[3, 2] = np.nan

    with pytest.raises(ValueError, match="got nan at row 3, column 2"):
        check_drift(profile, batch)
    with pytest.raises(ValueError, match="psi_threshold must be a finite number > 0; got 0"):
        check_drift(profile, encoded_rows(30, seed=10), psi_threshold=0)
    with pytest.raises(ValueError, match=r"feature_names must name every column .*expected 7"):
        training_profile(encoded_rows(30, seed=10), NAMES[:-1])
