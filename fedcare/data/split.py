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
    from sklearn.model_selection import train_test_split  # slow import: only when needed

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
    x_train, x_test, y_train, y_test = train_test_split(
        table.features,
        table.labels,
        test_size=test_fraction,
        random_state=int(seed),
        stratify=table.labels if stratify else None,
    )
    return SplitData(
        x_train=x_train, y_train=np.asarray(y_train, dtype=np.int64),
        x_test=x_test, y_test=np.asarray(y_test, dtype=np.int64),
    )
