"""The synthetic dataset: seeded per site, valid under its own schema, any number of sites."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedcare.common.errors import ConfigError
from fedcare.data.datasets import (
    federated_site_tables,
    load_federated_site,
    schema_for,
    synthetic,
)
from fedcare.data.validate import validate_frame


def table(**overrides: Any) -> Any:
    args: dict[str, Any] = {"partition_id": 0, "partitioning": "iid", "dirichlet_alpha": 0.5,
                            "partition_seed": 0}
    return synthetic.site_table(**{**args, **overrides})


def test_same_seed_and_site_give_the_same_rows() -> None:
    first, again = table(partition_id=7), table(partition_id=7)

    assert first.features.equals(again.features)
    assert np.array_equal(first.labels, again.labels)


@pytest.mark.parametrize("other", [{"partition_id": 8}, {"partition_seed": 1}])
def test_another_site_or_seed_gives_other_rows(other: dict[str, Any]) -> None:
    assert not table(partition_id=7).features.equals(table(**{"partition_id": 7, **other})
                                                     .features)


def test_rows_pass_the_schema_checks_a_hospital_file_gets() -> None:
    site = table(partition_id=3)
    frame = site.features.copy()
    frame[synthetic.LABEL] = site.labels

    checked = validate_frame(frame, synthetic.SCHEMA, source="synthetic", missing="keep")

    assert len(checked) == synthetic.ROWS_PER_SITE and checked.report.rows_dropped_missing == 0
    assert not checked.features.isna().any().any()
    assert list(site.features.columns) == list(synthetic.SCHEMA.feature_names())
    assert "synthetic" in site.report.source and schema_for("synthetic") is synthetic.SCHEMA


def test_iid_site_has_the_stated_share_of_outcome_1() -> None:
    site = table(partition_id=2)

    assert site.labels.sum() == round(synthetic.POSITIVE_SHARE * synthetic.ROWS_PER_SITE)  # 90


def test_outcome_1_shifts_each_score_in_its_stated_direction() -> None:
    pooled = [table(partition_id=k) for k in range(20)]
    features = np.concatenate([t.features.to_numpy() for t in pooled])
    labels = np.concatenate([t.labels for t in pooled])
    age = list(synthetic.SCHEMA.feature_names()).index("age")
    thalach = list(synthetic.SCHEMA.feature_names()).index("thalach")

    def mean_gap(column: int) -> float:
        return float(features[labels == 1, column].mean() - features[labels == 0, column].mean())

    # age: +0.4 sd of 9 years (~3.6); thalach: -0.4 sd of 23 (~ -9.2); 4000 rows
    assert 2.0 < mean_gap(age) < 5.0
    assert -12.0 < mean_gap(thalach) < -6.0


def test_dirichlet_sites_differ_in_their_class_mix_and_keep_both_classes() -> None:
    shares = [table(partition_id=k, partitioning="dirichlet", dirichlet_alpha=0.1).labels.mean()
              for k in range(30)]

    assert min(shares) <= 0.05 and max(shares) >= 0.95  # alpha 0.1: mostly one class each
    assert all(0 < s < 1 for s in shares)


def test_site_k_is_the_same_at_10_and_at_1000_sites() -> None:
    args = {"dataset": "synthetic", "partitioning": "iid", "data_dir": "", "split_seed": 43,
            "test_fraction": 0.25, "dirichlet_alpha": 0.5, "partition_seed": 0,
            "partition_id": 4}

    small = load_federated_site(num_partitions=10, **args)
    large = load_federated_site(num_partitions=1000, **args)

    assert np.array_equal(small.x_train, large.x_train)
    assert (small.name, len(small.y_train), len(small.y_test)) == ("site-4", 150, 50)


def test_simulation_check_names_every_site_in_order() -> None:
    tables = federated_site_tables(dataset="synthetic", num_partitions=3, partitioning="iid",
                                   data_dir="", dirichlet_alpha=0.5, partition_seed=0)

    assert [name for name, _ in tables] == ["site-0", "site-1", "site-2"]
    assert tables[1][1].features.equals(table(partition_id=1).features)


def test_natural_partitioning_is_refused_for_synthetic_data() -> None:
    with pytest.raises(ConfigError, match="iid or dirichlet for synthetic"):
        load_federated_site(dataset="synthetic", partition_id=0, num_partitions=4,
                            partitioning="natural", data_dir="", split_seed=43,
                            test_fraction=0.25, dirichlet_alpha=0.5, partition_seed=0)
