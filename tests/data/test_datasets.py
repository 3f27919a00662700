"""The two datasets and the one interface that hands a site its data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcare.common.errors import ConfigError
from fedcare.data.datasets import (
    SiteData,
    breast_cancer,
    heart_disease,
    load_federated_site,
    load_site_from_csv,
    schema_for,
)
from fedcare.data.split import split_train_test
from fedcare.data.validate import load_site_csv
from tests.data_factories import write_heart_dir

REAL_HEART = heart_disease.resolve_data_dir(None)
needs_heart_data = pytest.mark.skipif(
    not heart_disease.data_available(None),
    reason=f"heart-disease files not found in {REAL_HEART} (set {heart_disease.DATA_DIR_ENV})",
)
SYNTHETIC_SIZES = {"cleveland": 40, "hungary": 30, "switzerland": 20, "va-long-beach": 25}


def site_args(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "dataset": "breast-cancer", "partition_id": 0, "num_partitions": 3,
        "partitioning": "iid", "data_dir": "", "split_seed": 43, "test_fraction": 0.34,
        "dirichlet_alpha": 0.5, "partition_seed": 0,
    }
    return {**args, **overrides}


# --------------------------------------------------------------------------- breast cancer


@pytest.fixture(scope="module")
def breast_table() -> Any:
    return breast_cancer.load_table()


def test_breast_cancer_has_569_rows_212_malignant(breast_table: Any) -> None:
    assert len(breast_table) == 569
    assert int(breast_table.labels.sum()) == 212  # sklearn's target 0 (malignant) became 1
    assert breast_table.features.shape == (569, 30)
    assert breast_table.report.rows_dropped_missing == 0


def test_breast_cancer_columns_are_csv_friendly() -> None:
    names = breast_cancer.SCHEMA.feature_names()

    assert names[0] == "mean_radius" and "mean_concave_points" in names
    assert all(n == n.lower() and " " not in n for n in names)
    assert breast_cancer.SCHEMA.label.name == "diagnosis_malignant"


def test_breast_cancer_csv_round_trips_through_the_csv_checks(
    tmp_path: Path, breast_table: Any
) -> None:
    path = tmp_path / "breast.csv"

    breast_cancer.write_csv(path)
    from_file = load_site_csv(path, breast_cancer.SCHEMA)

    assert path.read_text().splitlines()[0].endswith(",diagnosis_malignant")
    np.testing.assert_array_equal(from_file.features.to_numpy(), breast_table.features.to_numpy())
    np.testing.assert_array_equal(from_file.labels, breast_table.labels)


# --------------------------------------------------------------------------- heart disease


@needs_heart_data
@pytest.mark.parametrize(("site", "rows", "positive", "test_rows"), [
    ("cleveland", 303, 139, 104),
    ("hungary", 261, 98, 89),
    ("switzerland", 46, 45, 16),
    ("va-long-beach", 130, 101, 45),
])
def test_heart_protocol_keeps_the_published_rows_and_test_sizes(
    site: str, rows: int, positive: int, test_rows: int
) -> None:
    table = heart_disease.load_site(None, site)

    split = split_train_test(table, test_fraction=0.34, seed=43)

    assert (len(table), int(table.labels.sum())) == (rows, positive)
    assert heart_disease.EXPECTED_ROWS[site] == (rows, positive)
    assert len(split.y_test) == test_rows
    assert list(table.features.columns) == list(heart_disease.SCHEMA.feature_names())


@needs_heart_data
@pytest.mark.parametrize(("site", "rows"), [
    ("cleveland", 303), ("hungary", 294), ("switzerland", 123), ("va-long-beach", 200),
])
def test_heart_ranges_accept_every_value_in_the_real_files(site: str, rows: int) -> None:
    table = load_site_csv(heart_disease.site_path(None, site), heart_disease.SCHEMA,
                          missing="keep")

    assert len(table) == rows


def test_heart_data_dir_comes_from_argument_then_env_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(heart_disease.DATA_DIR_ENV, str(tmp_path / "from-env"))

    assert heart_disease.resolve_data_dir(str(tmp_path)) == tmp_path
    assert heart_disease.resolve_data_dir("") == tmp_path / "from-env"
    assert heart_disease.site_path(None, "hungary") == tmp_path / "from-env" / "hungary.csv"
    monkeypatch.delenv(heart_disease.DATA_DIR_ENV)
    assert heart_disease.resolve_data_dir(None) == (
        heart_disease.REPO_ROOT / heart_disease.DEFAULT_DATA_DIR
    ).resolve()


def test_unknown_heart_site_is_rejected() -> None:
    with pytest.raises(ValueError, match="site must be one of cleveland, hungary"):
        heart_disease.site_path(None, "boston")


# --------------------------------------------------------------------------- federated sites


def assert_site_consistent(site: SiteData, width: int) -> None:
    assert site.x_train.dtype == site.x_test.dtype == np.float32
    assert site.y_train.dtype == site.y_test.dtype == np.float32
    assert site.x_train.shape == (len(site.y_train), width)
    assert site.x_test.shape == (len(site.y_test), width)
    assert set(np.unique(np.concatenate([site.y_train, site.y_test]))) <= {0.0, 1.0}
    assert len(site.feature_names) == width
    assert np.isfinite(site.x_train).all() and np.isfinite(site.x_test).all()


def test_natural_heart_sites_share_one_width_and_keep_their_rows(tmp_path: Path) -> None:
    data_dir = write_heart_dir(tmp_path, SYNTHETIC_SIZES)

    sites = [load_federated_site(**site_args(dataset="heart-disease", partitioning="natural",
                                             num_partitions=4, partition_id=k,
                                             data_dir=str(data_dir)))
             for k in range(4)]

    assert [s.name for s in sites] == list(heart_disease.SITES)
    for site, rows in zip(sites, SYNTHETIC_SIZES.values(), strict=True):
        assert_site_consistent(site, 15)
        assert len(site.y_train) + len(site.y_test) == rows
    assert {s.feature_names for s in sites} == {heart_disease.SCHEMA.encoded_feature_names()}


@needs_heart_data
def test_natural_heart_sites_on_the_real_files_have_the_protocol_shapes() -> None:
    sites = [load_federated_site(**site_args(dataset="heart-disease", partitioning="natural",
                                             num_partitions=4, partition_id=k))
             for k in range(4)]

    assert [(len(s.y_train), len(s.y_test)) for s in sites] == [
        (199, 104), (172, 89), (30, 16), (85, 45)
    ]
    for site in sites:
        assert_site_consistent(site, 15)


@pytest.mark.parametrize("partitioning", ["iid", "dirichlet"])
def test_pooled_breast_cancer_sites_cover_all_rows_with_one_width(partitioning: str) -> None:
    sites = [load_federated_site(**site_args(partitioning=partitioning, partition_id=k))
             for k in range(3)]

    assert [s.name for s in sites] == ["site-0", "site-1", "site-2"]
    assert sum(len(s.y_train) + len(s.y_test) for s in sites) == 569
    for site in sites:
        assert_site_consistent(site, 30)


def test_pooled_heart_sites_are_drawn_from_all_four_files(tmp_path: Path) -> None:
    data_dir = write_heart_dir(tmp_path, SYNTHETIC_SIZES)

    sites = [load_federated_site(**site_args(dataset="heart-disease", partition_id=k,
                                             num_partitions=2, data_dir=str(data_dir)))
             for k in range(2)]

    assert sum(len(s.y_train) + len(s.y_test) for s in sites) == sum(SYNTHETIC_SIZES.values())
    assert sites[0].report.rows_kept == 58  # iid: 115 rows -> 58 + 57


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"partitioning": "natural"}, "no natural sites"),
        ({"dataset": "heart-disease", "partitioning": "natural"},
         "num_partitions must be 4 for heart-disease"),
        ({"dataset": "mnist"}, "dataset must be one of breast-cancer, heart-disease"),
        ({"partitioning": "random"}, "partitioning must be one of natural, iid, dirichlet"),
        ({"partition_id": 3}, r"partition_id must be < num_partitions \(3\); got 3"),
        ({"partition_id": -1}, "partition_id must be an integer >= 0"),
        ({"partitioning": "dirichlet", "dirichlet_alpha": 0}, "dirichlet_alpha must be"),
        ({"test_fraction": 1.0}, r"test_fraction must be a number in \(0, 1\)"),
    ],
)
def test_bad_site_arguments_raise_config_error(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_federated_site(**site_args(**overrides))


def test_all_bad_site_arguments_are_reported_together() -> None:
    with pytest.raises(ConfigError) as caught:
        load_federated_site(**site_args(dataset="mnist", partitioning="x", test_fraction=2))

    assert len(caught.value.problems) == 3


def test_hospital_csv_is_loaded_split_and_preprocessed(tmp_path: Path) -> None:
    write_heart_dir(tmp_path, {"my-hospital": 50})

    site = load_site_from_csv(path=tmp_path / "my-hospital.csv", dataset="heart-disease",
                              site_name="my-hospital", split_seed=1, test_fraction=0.2)

    assert site.name == "my-hospital"
    assert (len(site.y_train), len(site.y_test)) == (40, 10)
    assert_site_consistent(site, 15)
    assert site.preprocessor.to_dict()["schema"] == "heart-disease"


def test_schema_for_names_the_known_datasets() -> None:
    assert schema_for("heart-disease") is heart_disease.SCHEMA
    assert schema_for("breast-cancer") is breast_cancer.SCHEMA
    with pytest.raises(ValueError, match="dataset must be one of"):
        schema_for("mnist")


def test_a_process_reads_and_partitions_the_pool_once_for_all_its_sites(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import fedcare.data.datasets as datasets

    reads: list[str] = []
    real = datasets._pooled_table

    def counting(dataset: str, data_dir: str) -> Any:
        reads.append(dataset)
        return real(dataset, data_dir)

    monkeypatch.setattr(datasets, "_pooled_table", counting)
    datasets._pooled_parts.cache_clear()
    args = site_args(num_partitions=5, partition_seed=11)

    sites = [load_federated_site(**{**args, "partition_id": k}) for k in range(5)]

    assert reads == ["breast-cancer"]
    assert sum(len(s.y_train) + len(s.y_test) for s in sites) == 569  # still disjoint, complete
    datasets._pooled_parts.cache_clear()


def test_the_loaders_use_the_pandas_free_schemas_and_unknown_names_are_refused() -> None:
    from fedcare.data import schemas
    from fedcare.data.datasets import breast_cancer, heart_disease, synthetic

    assert schema_for("breast-cancer") is schemas.schema_for("breast-cancer") is \
        breast_cancer.SCHEMA
    assert schemas.schema_for("heart-disease") is heart_disease.SCHEMA
    assert schemas.schema_for("synthetic") is synthetic.SCHEMA
    with pytest.raises(ValueError, match=r"dataset must be one of .*; got 'mnist'"):
        schemas.schema_for("mnist")
