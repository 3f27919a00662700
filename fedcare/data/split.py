"""One seeded train/test split of a validated site table."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedcare.data.validate import SiteTable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitData:
    """One site's train/test split (features still raw, labels int64 0/1)."""

    x_train: pd.DataFrame
    y_train: np.ndarray
    x_test: pd.DataFrame
    y_test: np.ndarray


def split_train_test(table: SiteTable, *, test_fraction: float, seed: int) -> SplitData:
    """One seeded train/test split of a site, stratified by label when possible.

    Test size follows scikit-learn: ``ceil(test_fraction * n)``. Stratified when every
    class has at least 2 rows and both parts can hold one row of each class; otherwise a
    plain shuffled split (logged at INFO).
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not (
        0.0 < test_fraction < 1.0
    ):
        raise ValueError(f"test_fraction must be a number in (0, 1); got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    n = len(table.labels)
    n_test = math.ceil(test_fraction * n)
    if n_test < 1 or n_test >= n:
        raise ValueError(
            f"{table.report.source}: test_fraction {test_fraction} must leave at least one "
            f"train row and one test row; got {n} rows ({n_test} would be test rows)"
        )
    classes, class_counts = np.unique(table.labels, return_counts=True)
    stratify = (
        len(classes) > 1
        and int(class_counts.min()) >= 2
        and n_test >= len(classes)
        and n - n_test >= len(classes)
    )
    logger.info(
        "%s: %s split of %d rows, %d test (seed %d)",
        table.report.source, "stratified" if stratify else "unstratified", n, n_test, seed,
    )
    train, test = split_indices(table.labels, n_test=n_test, seed=int(seed),
                                stratify=stratify)
    labels = np.asarray(table.labels)
    return SplitData(
        x_train=table.features.iloc[train], y_train=labels[train].astype(np.int64),
        x_test=table.features.iloc[test], y_test=labels[test].astype(np.int64),
    )


def split_indices(labels: np.ndarray, *, n_test: int, seed: int,
                  stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices, exactly those of scikit-learn's
    ``train_test_split(..., test_size=n_test, random_state=seed, stratify=labels if
    stratify else None)`` (scikit-learn's ``ShuffleSplit`` / ``StratifiedShuffleSplit``
    with a ``RandomState(seed)``; tests compare the two), without importing scikit-learn:
    ~21 MB a site process would hold only for this split and the AUC."""
    n = len(labels)
    n_train = n - n_test
    rng = np.random.RandomState(seed)
    if not stratify:
        order = rng.permutation(n)
        return order[n_test:], order[:n_test]
    _, y_indices, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(y_indices, kind="stable"),
                             np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i, count in enumerate(class_counts):
        rows = class_indices[i].take(rng.permutation(count), mode="clip")
        train.extend(rows[:n_i[i]])
        test.extend(rows[n_i[i]:n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(class_counts: np.ndarray, n_draws: int,
                      rng: np.random.RandomState) -> np.ndarray:
    """How many of ``n_draws`` rows each class gets (scikit-learn's
    ``utils.extmath._approximate_mode``): the floored proportional share, plus one for the
    largest remainders, ties broken by ``rng`` (drawn even when all tied classes get one,
    as scikit-learn does, so that the random stream stays the same)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add_now = min(len(tied), need_to_add)
            floored[rng.choice(tied, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)
