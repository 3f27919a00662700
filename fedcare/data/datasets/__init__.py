"""Datasets, one module each, behind one interface: :func:`load_federated_site`.

A site's data is split once (seeded, stratified when possible) and preprocessed with a
:class:`~fedcare.data.validate.Preprocessor` fitted on that site's own train rows only.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedcare.common.config import DATASETS, PARTITIONINGS
from fedcare.common.errors import ConfigError, DataValidationError
from fedcare.data import schemas
from fedcare.data.datasets import breast_cancer, heart_disease, synthetic
from fedcare.data.partition import dirichlet_partition, iid_partition
from fedcare.data.preprocess import Preprocessor
from fedcare.data.schema import TabularSchema
from fedcare.data.split import SplitData, split_train_test
from fedcare.data.validate import LoadReport, SiteTable, load_site_csv

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class SiteData:
    """One site's ready-to-train arrays (float32) and how they were made."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]
    preprocessor: Preprocessor
    report: LoadReport

    @property
    def num_features(self) -> int:
        return len(self.feature_names)


def schema_for(dataset: str) -> TabularSchema:
    """The schema of a named dataset (:func:`fedcare.data.schemas.schema_for`)."""
    return schemas.schema_for(dataset)


def prepare_site(
    name: str, table: SiteTable, *, schema: TabularSchema, split_seed: int, test_fraction: float
) -> SiteData:
    """Split one site's table, fit a Preprocessor on its train rows, transform both parts."""
    split = split_train_test(table, test_fraction=test_fraction, seed=split_seed)
    preprocessor = Preprocessor(schema).fit(split.x_train)
    return SiteData(
        name=name,
        x_train=preprocessor.transform(split.x_train),
        y_train=split.y_train.astype(np.float32),
        x_test=preprocessor.transform(split.x_test),
        y_test=split.y_test.astype(np.float32),
        feature_names=schema.encoded_feature_names(),
        preprocessor=preprocessor,
        report=table.report,
    )


def _pooled_table(dataset: str, data_dir: str) -> SiteTable:
    if dataset == "breast-cancer":
        return breast_cancer.load_table()
    tables = list(heart_disease.load_sites(data_dir).values())
    reports = [t.report for t in tables]
    missing: dict[str, int] = {}
    for report in reports:
        for column, count in report.missing_by_column.items():
            missing[column] = missing.get(column, 0) + count
    return SiteTable(
        features=pd.concat([t.features for t in tables], ignore_index=True),
        labels=np.concatenate([t.labels for t in tables]),
        report=LoadReport(
            source=f"{heart_disease.NAME} (pooled: {', '.join(heart_disease.SITES)})",
            rows_read=sum(r.rows_read for r in reports),
            rows_kept=sum(r.rows_kept for r in reports),
            rows_dropped_missing=sum(r.rows_dropped_missing for r in reports),
            missing_by_column=missing,
        ),
    )


def _subset(table: SiteTable, rows: np.ndarray, source: str) -> SiteTable:
    return SiteTable(
        features=table.features.iloc[rows].reset_index(drop=True),
        labels=table.labels[rows],
        report=LoadReport(source=source, rows_read=len(rows), rows_kept=len(rows),
                          rows_dropped_missing=0, missing_by_column={}),
    )


def _int_problem(name: str, value: object, minimum: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        return f"{name} must be an integer >= {minimum}; got {value!r}"
    return None


def load_federated_site(
    *,
    dataset: str,
    partition_id: int,
    num_partitions: int,
    partitioning: str,
    data_dir: str,
    split_seed: int,
    test_fraction: float,
    dirichlet_alpha: float,
    partition_seed: int,
) -> SiteData:
    """The data of simulated site ``partition_id`` of ``num_partitions``.

    ``partitioning="natural"``: heart-disease's four hospitals (``num_partitions`` must be
    4); breast-cancer has no natural split. ``"iid"`` / ``"dirichlet"``: the dataset's rows
    are pooled (heart-disease: the four files under the protocol, in ``SITES`` order) and
    partitioned with ``partition_seed``; sites are named ``site-<k>``. ``synthetic``: site
    ``k``'s rows are generated in memory (:mod:`.synthetic`), for any number of sites. Raises
    :class:`ConfigError` (a ``ValueError``) listing every bad argument.
    """
    problems: list[str] = []
    if dataset not in DATASETS:
        problems.append(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    if partitioning not in PARTITIONINGS:
        problems.append(
            f"partitioning must be one of {', '.join(PARTITIONINGS)}; got {partitioning!r}"
        )
    for problem in (
        _int_problem("num_partitions", num_partitions, 1),
        _int_problem("partition_id", partition_id, 0),
        _int_problem("partition_seed", partition_seed, 0),
        _int_problem("split_seed", split_seed, 0),
    ):
        if problem:
            problems.append(problem)
    if not problems and partition_id >= num_partitions:
        problems.append(
            f"partition_id must be < num_partitions ({num_partitions}); got {partition_id}"
        )
    if partitioning == "natural":
        if dataset in ("breast-cancer", synthetic.NAME):
            problems.append(
                f"partitioning must be iid or dirichlet for {dataset} (it has no natural "
                "sites); got 'natural'"
            )
        elif dataset == "heart-disease" and num_partitions != len(heart_disease.SITES):
            problems.append(
                f"num_partitions must be {len(heart_disease.SITES)} for heart-disease with "
                f"natural partitioning (one per hospital: {', '.join(heart_disease.SITES)}); "
                f"got {num_partitions!r}"
            )
    if partitioning == "dirichlet" and (
        isinstance(dirichlet_alpha, bool)
        or not isinstance(dirichlet_alpha, (int, float))
        or not dirichlet_alpha > 0
        or dirichlet_alpha == float("inf")
    ):
        problems.append(f"dirichlet_alpha must be a finite number > 0; got {dirichlet_alpha!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not (
        0 < test_fraction < 1
    ):
        problems.append(f"test_fraction must be a number in (0, 1); got {test_fraction!r}")
    if problems:
        raise ConfigError(problems)

    name, table = _federated_site_table(
        dataset=dataset, partition_id=partition_id, num_partitions=num_partitions,
        partitioning=partitioning, data_dir=data_dir, dirichlet_alpha=dirichlet_alpha,
        partition_seed=partition_seed)
    site_data = prepare_site(name, table, schema=schema_for(dataset), split_seed=split_seed,
                             test_fraction=test_fraction)
    logger.info("%s: %d train / %d test rows, %d features", name, len(site_data.y_train),
                len(site_data.y_test), site_data.num_features)
    return site_data


def federated_site_split(*, dataset: str, partition_id: int, num_partitions: int,
                         partitioning: str, data_dir: str, split_seed: int, test_fraction: float,
                         dirichlet_alpha: float, partition_seed: int) -> SplitData:
    """The same site's *raw* train/test rows as :func:`load_federated_site` uses, before
    preprocessing (for reports that need raw columns, such as age bands)."""
    _, table = _federated_site_table(
        dataset=dataset, partition_id=partition_id, num_partitions=num_partitions,
        partitioning=partitioning, data_dir=data_dir, dirichlet_alpha=dirichlet_alpha,
        partition_seed=partition_seed)
    return split_train_test(table, test_fraction=test_fraction, seed=split_seed)


def federated_site_tables(*, dataset: str, num_partitions: int, partitioning: str,
                          data_dir: str, dirichlet_alpha: float, partition_seed: int
                          ) -> list[tuple[str, SiteTable]]:
    """Every simulated site's validated (unsplit) table, named, in partition order: what a
    simulation checks before it starts (the data is read once, not once per site)."""
    if partitioning == "natural":
        tables: list[tuple[str, SiteTable]] = []
        failed: list[DataValidationError] = []
        for site in heart_disease.SITES[:num_partitions]:
            try:
                tables.append((site, heart_disease.load_site(data_dir, site)))
            except DataValidationError as err:
                failed.append(err)
        if failed:  # every site's problems at once
            raise DataValidationError(
                os.fspath(heart_disease.resolve_data_dir(data_dir)),
                [p for err in failed for p in err.problems],
                total=sum(err.total for err in failed))
        return tables
    if dataset == synthetic.NAME:  # generated per site: no pool to read and cut
        return [(f"site-{k}", synthetic.site_table(
            partition_id=k, partitioning=partitioning, dirichlet_alpha=dirichlet_alpha,
            partition_seed=partition_seed)) for k in range(num_partitions)]
    pooled, parts = _pooled_parts(dataset=dataset, num_partitions=num_partitions,
                                  partitioning=partitioning, data_dir=data_dir,
                                  dirichlet_alpha=dirichlet_alpha, partition_seed=partition_seed)
    return [(f"site-{k}", _subset(pooled, parts[k], f"{dataset} {partitioning} partition {k} "
                                  f"of {num_partitions} (seed {partition_seed})"))
            for k in range(num_partitions)]


POOL_CACHE_SIZE = 4
"""Pooled tables and their partitions kept per process: a simulation worker serving many
virtual sites read, validated and re-partitioned the whole pool for every site it loaded
(per site ~0.9 s on the loaded 2-core machine for breast-cancer); now once per setting."""


@functools.lru_cache(maxsize=POOL_CACHE_SIZE)
def _pooled_parts(*, dataset: str, num_partitions: int, partitioning: str, data_dir: str,
                  dirichlet_alpha: float, partition_seed: int
                  ) -> tuple[SiteTable, Sequence[np.ndarray]]:
    """The pooled table and every site's row indices (cached: callers only read them)."""
    pooled = _pooled_table(dataset, data_dir)
    if partitioning == "iid":
        return pooled, iid_partition(len(pooled), num_sites=num_partitions, seed=partition_seed)
    return pooled, dirichlet_partition(pooled.labels, num_sites=num_partitions,
                                       alpha=float(dirichlet_alpha), seed=partition_seed)


def _federated_site_table(*, dataset: str, partition_id: int, num_partitions: int,
                          partitioning: str, data_dir: str, dirichlet_alpha: float,
                          partition_seed: int) -> tuple[str, SiteTable]:
    if partitioning == "natural":
        site = heart_disease.SITES[partition_id]
        table = heart_disease.load_site(data_dir, site)
        name = site
    elif dataset == synthetic.NAME:
        name = f"site-{partition_id}"
        table = synthetic.site_table(partition_id=partition_id, partitioning=partitioning,
                                     dirichlet_alpha=dirichlet_alpha,
                                     partition_seed=partition_seed)
    else:
        pooled, parts = _pooled_parts(
            dataset=dataset, num_partitions=num_partitions, partitioning=partitioning,
            data_dir=data_dir, dirichlet_alpha=dirichlet_alpha, partition_seed=partition_seed)
        name = f"site-{partition_id}"
        table = _subset(
            pooled, parts[partition_id],
            f"{dataset} {partitioning} partition {partition_id} of {num_partitions} "
            f"(seed {partition_seed})",
        )
    return name, table


def load_site_from_csv(
    *,
    path: str | os.PathLike[str],
    dataset: str,
    site_name: str,
    split_seed: int,
    test_fraction: float,
) -> SiteData:
    """A hospital's own CSV (deployment), validated with the dataset's schema.

    Rows with empty cells are dropped and counted (the heart-disease protocol; the
    breast-cancer schema has no optional columns, so there an empty cell is a problem).
    """
    schema = schema_for(dataset)
    table = load_site_csv(path, schema, missing="drop")
    return prepare_site(site_name, table, schema=schema, split_seed=split_seed,
                        test_fraction=test_fraction)


__all__ = [
    "DATASETS",
    "PARTITIONINGS",
    "SiteData",
    "federated_site_tables",
    "load_federated_site",
    "load_site_from_csv",
    "prepare_site",
    "schema_for",
]
