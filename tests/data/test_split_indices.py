"""fedcare's split is scikit-learn's train_test_split, row for row, without scikit-learn
in the site process (the same seeds give the same splits as before)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from fedcare.data.split import _approximate_mode, split_indices


def _labels(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(n * 7 + seed)
    if kind == "balanced":
        return rng.integers(0, 2, n)
    if kind == "skewed":
        return (rng.random(n) < 0.2).astype(np.int64)
    return rng.integers(0, 3, n)  # three classes: ties in the proportional shares


@pytest.mark.parametrize("kind", ["balanced", "skewed", "three"])
@pytest.mark.parametrize("n", [5, 11, 30, 150, 303])
@pytest.mark.parametrize("fraction", [0.2, 0.25, 0.5])
@pytest.mark.parametrize("seed", [0, 42])
@pytest.mark.parametrize("stratify", [True, False])
def test_indices_equal_scikit_learns(kind: str, n: int, fraction: float, seed: int,
                                     stratify: bool) -> None:
    # Arrange
    labels = _labels(kind, n, seed)
    _, counts = np.unique(labels, return_counts=True)
    n_test = math.ceil(fraction * n)
    if stratify and (counts.min() < 2 or min(n_test, n - n_test) < len(counts)):
        pytest.skip("scikit-learn cannot stratify this one (fedcare does not ask it to)")

    # Act
    train, test = split_indices(labels, n_test=n_test, seed=seed, stratify=stratify)
    want_train, want_test = train_test_split(np.arange(n), test_size=fraction,
                                             random_state=seed,
                                             stratify=labels if stratify else None)

    # Assert
    np.testing.assert_array_equal(train, want_train)
    np.testing.assert_array_equal(test, want_test)


def test_shares_follow_the_proportions_and_ties_draw_from_the_generator() -> None:
    # 3 draws from classes of 4 and 2 rows: 2 and 1 (no tie)
    assert _approximate_mode(np.array([4, 2]), 3, np.random.RandomState(0)).tolist() == [2, 1]
    # 2 draws from 2, 2, 2, 1: three classes tie for two places; seed 0 picks the last two
    # (scikit-learn's own documented example)
    assert _approximate_mode(np.array([2, 2, 2, 1]), 2,
                             np.random.RandomState(0)).tolist() == [0, 1, 1, 0]
