"""Issue 16 item 8: data that passes validation but should not pass quietly; DP readiness."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedcare.common.config import RunConfig
from fedcare.common.errors import DataValidationError
from fedcare.data.datasets import heart_disease
from fedcare.data.datasets.heart_disease import SCHEMA as HEART
from fedcare.data.quality import assess_quality
from fedcare.data.site_check import check_csv_file, readiness_for, train_rows
from fedcare.data.validate import load_site_csv
from fedcare.privacy import readiness as readiness_mod
from fedcare.privacy.readiness import assess_readiness, model_parameters
from tests.data_factories import HEART_HEADER, csv_text, heart_rows, write_text

needs_heart_data = pytest.mark.skipif(not heart_disease.data_available(None),
                                      reason="heart-disease files not found")


def quality_of(tmp_path: Path, rows: list[dict[str, str]]) -> dict[str, str]:
    path = write_text(tmp_path, "site.csv", csv_text(rows, HEART_HEADER))
    report = assess_quality(load_site_csv(path, HEART), HEART)
    return {f"{f.kind}:{f.column}": f.message for f in report.findings}


def test_a_healthy_file_has_no_warnings(tmp_path: Path) -> None:
    assert quality_of(tmp_path, heart_rows(60, seed=0)) == {}


def test_a_column_mostly_zero_outside_its_clinical_range_is_a_sentinel(tmp_path: Path) -> None:
    rows = heart_rows(60, seed=0)
    for row in rows[:31]:  # 31 of 60 > 50 %
        row["chol"] = "0"

    found = quality_of(tmp_path, rows)

    assert found["sentinel:chol"].startswith("is 0 in 31 of 60 rows, and 0 is outside its "
                                             "clinical range (the data's documentation says 0 "
                                             "means not measured)")


def test_half_zero_is_not_yet_a_sentinel(tmp_path: Path) -> None:
    rows = heart_rows(60, seed=0)
    for row in rows[:30]:  # exactly 50 %
        row["chol"] = "0"

    assert "sentinel:chol" not in quality_of(tmp_path, rows)


def test_a_label_of_one_class_is_flagged(tmp_path: Path) -> None:
    found = quality_of(tmp_path, heart_rows(60, seed=0, positive_share=1.0))

    assert found["one-class:num"].startswith("every one of the 60 rows is class 1")


def test_a_label_over_95_percent_one_class_is_flagged(tmp_path: Path) -> None:
    rows = heart_rows(60, seed=0, positive_share=1.0)
    rows[0]["num"] = "0"  # 59 of 60 = 98 %

    assert quality_of(tmp_path, rows)["majority-class:num"].startswith(
        "59 of 60 rows (98%) are class 1")


def test_200_identical_rows_are_duplicates_and_constant(tmp_path: Path) -> None:
    found = quality_of(tmp_path, heart_rows(1, seed=0) * 200)

    assert found["duplicates:None"].startswith("199 of 200 rows (100%) repeat an earlier row")
    assert "constant:age" in found


def test_a_one_row_file_is_flagged_as_too_small_to_split(tmp_path: Path) -> None:
    found = quality_of(tmp_path, heart_rows(1, seed=0))

    assert found["few-rows:None"].startswith("1 row(s) left after cleaning; a site needs at "
                                             "least 2")


def test_strict_mode_turns_warnings_into_one_data_error(tmp_path: Path) -> None:
    path = write_text(tmp_path, "site.csv", csv_text(heart_rows(1, seed=0), HEART_HEADER))
    report = assess_quality(load_site_csv(path, HEART), HEART)

    with pytest.raises(DataValidationError) as err:
        report.raise_if_warned()

    assert err.value.total == len(report.findings) >= 1
    assert all("data quality:" in str(p) for p in err.value.problems)


@needs_heart_data
def test_switzerland_warns_of_its_unmeasured_cholesterol_and_one_sided_label() -> None:
    check = check_csv_file(heart_disease.site_path(None, "switzerland"),
                           RunConfig(dataset="heart-disease"))

    kinds = {(f.kind, f.column) for f in check.quality.findings}
    assert kinds == {("sentinel", "chol"), ("majority-class", "num"), ("few-rows", None)}
    assert (check.quality.rows_read, check.quality.rows_kept) == (123, 46)
    assert check.readiness is not None and "mostly noise" in check.readiness.verdict


# ----------------------------------------------------------------------- DP readiness


def test_model_parameters_counts_weights_and_biases() -> None:
    # 10 inputs -> 4 hidden -> 1 output: (10 + 1) * 4 + (4 + 1) * 1
    assert model_parameters(10, (4,)) == 49


def test_readiness_at_a_fixed_noise_multiplier_is_hand_computable() -> None:
    readiness = assess_readiness(site="s", train_rows=100, target_epsilon=None,
                                 noise_multiplier=2.0, delta=1e-3, rounds=1, batch_size=10,
                                 local_epochs=1, clip_norm=1.0, accountant="rdp",
                                 sampling="poisson", parameters=49)

    # q = 10/100, 10 steps; sigma/(q n) = 2/10; run ratio = 0.2 * sqrt(49) / sqrt(10)
    assert readiness.sampling_rate == pytest.approx(0.1)
    assert readiness.steps == 10
    assert readiness.per_weight_ratio == pytest.approx(0.2)
    assert readiness.run_ratio == pytest.approx(0.2 * 7 / math.sqrt(10))
    assert readiness.verdict.startswith("noisy")


def test_a_tiny_site_at_a_small_epsilon_is_told_it_will_be_mostly_noise() -> None:
    readiness = assess_readiness(site="s", train_rows=34, target_epsilon=1.0, delta=1e-3,
                                 rounds=10, batch_size=32, local_epochs=1, clip_norm=1.0,
                                 accountant="rdp", sampling="poisson", parameters=3137)

    assert readiness.noise_multiplier is not None and readiness.noise_multiplier > 5
    assert readiness.verdict.startswith("this site's updates will be mostly noise at eps 1; "
                                        "consider a larger eps, fewer rounds, or joining with "
                                        "personalisation only")


def test_an_unreachable_target_says_the_site_would_refuse(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(**kwargs: object) -> float:
        raise ValueError("target_epsilon needs a noise multiplier above 10000")

    monkeypatch.setattr(readiness_mod, "calibrate_noise_multiplier", unreachable)

    readiness = assess_readiness(site="s", train_rows=2, target_epsilon=1e-6, delta=1e-3,
                                 rounds=100, batch_size=1, local_epochs=1, clip_norm=1.0,
                                 accountant="rdp", sampling="poisson", parameters=49)

    assert readiness.noise_multiplier is None
    assert readiness.verdict.startswith("the target cannot be met, so this site would refuse")


def test_a_site_without_training_rows_cannot_take_part() -> None:
    readiness = assess_readiness(site="s", train_rows=0, target_epsilon=1.0, delta=1e-3,
                                 rounds=1, batch_size=1, local_epochs=1, clip_norm=1.0,
                                 accountant="rdp", sampling="poisson", parameters=49)

    assert readiness.verdict == "no training rows: this site cannot take part"


def test_readiness_uses_the_rows_left_after_the_held_out_split() -> None:
    config = RunConfig(test_fraction=0.25)

    assert train_rows(config, 46) == 34  # ceil(0.25 * 46) = 12 held out
    assert readiness_for(config.replace(dp_mode="off"), site="s", rows=46) is None
