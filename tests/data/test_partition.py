"""Seeded partitions: properties, label skew, argument errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.data.partition import dirichlet_partition, iid_partition, label_skew

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
FAST = settings(max_examples=60, deadline=None)


def assert_is_partition(parts: list[np.ndarray], num_rows: int, num_sites: int) -> None:
    assert len(parts) == num_sites
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)  # sorted, no repeats
    everything = np.concatenate(parts)
    assert len(everything) == num_rows  # disjoint ...
    assert np.array_equal(np.sort(everything), np.arange(num_rows))  # ... and covering


@st.composite
def rows_and_sites(draw: st.DrawFn, max_rows: int = 400) -> tuple[int, int]:
    num_rows = draw(st.integers(min_value=1, max_value=max_rows))
    return num_rows, draw(st.integers(min_value=1, max_value=min(num_rows, 12)))


@st.composite
def labels_and_sites(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    num_rows, num_sites = draw(rows_and_sites(max_rows=300))
    classes = draw(st.integers(min_value=1, max_value=4))
    labels = draw(st.lists(st.integers(0, classes - 1), min_size=num_rows, max_size=num_rows))
    return np.asarray(labels), num_sites


# --------------------------------------------------------------------------- iid


@FAST
@given(rows_and_sites(), SEEDS)
def test_iid_partition_is_a_balanced_partition(shape: tuple[int, int], seed: int) -> None:
    num_rows, num_sites = shape

    parts = iid_partition(num_rows, num_sites=num_sites, seed=seed)

    assert_is_partition(parts, num_rows, num_sites)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@FAST
@given(rows_and_sites(), SEEDS)
def test_iid_partition_is_fixed_by_its_seed(shape: tuple[int, int], seed: int) -> None:
    num_rows, num_sites = shape

    first = iid_partition(num_rows, num_sites=num_sites, seed=seed)
    again = iid_partition(num_rows, num_sites=num_sites, seed=seed)

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


@FAST
@given(st.integers(min_value=50, max_value=400), SEEDS, SEEDS)
def test_iid_partitions_differ_between_seeds(num_rows: int, seed: int, other: int) -> None:
    if seed == other:
        return
    first = iid_partition(num_rows, num_sites=3, seed=seed)
    second = iid_partition(num_rows, num_sites=3, seed=other)

    assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


# --------------------------------------------------------------------------- dirichlet


@FAST
@given(labels_and_sites(), st.floats(min_value=0.05, max_value=100.0), SEEDS)
def test_dirichlet_partition_is_a_partition_and_fixed_by_its_seed(
    data: tuple[np.ndarray, int], alpha: float, seed: int
) -> None:
    labels, num_sites = data

    parts = dirichlet_partition(labels, num_sites=num_sites, alpha=alpha, seed=seed, min_rows=0)
    again = dirichlet_partition(labels, num_sites=num_sites, alpha=alpha, seed=seed, min_rows=0)

    assert_is_partition(parts, len(labels), num_sites)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@FAST
@given(st.integers(min_value=100, max_value=300), st.integers(min_value=2, max_value=5),
       st.floats(min_value=0.3, max_value=50.0), SEEDS)
def test_dirichlet_partition_gives_every_site_min_rows(
    num_rows: int, num_sites: int, alpha: float, seed: int
) -> None:
    labels = np.arange(num_rows) % 2

    parts = dirichlet_partition(labels, num_sites=num_sites, alpha=alpha, seed=seed, min_rows=10)

    assert_is_partition(parts, num_rows, num_sites)
    assert min(len(p) for p in parts) >= 10


@FAST
@given(SEEDS, SEEDS)
def test_dirichlet_partitions_differ_between_seeds(seed: int, other: int) -> None:
    if seed == other:
        return
    labels = np.arange(200) % 2

    first = dirichlet_partition(labels, num_sites=4, alpha=1.0, seed=seed)
    second = dirichlet_partition(labels, num_sites=4, alpha=1.0, seed=other)

    assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_label_skew_by_hand() -> None:
    labels = np.array([0, 0, 1, 1])

    # Pooled mix (0.5, 0.5). Sites (1, 0) and (0, 1): total variation 0.5 each.
    assert label_skew(labels, [np.array([0, 1]), np.array([2, 3])]) == 0.5
    assert label_skew(labels, [np.array([0, 2]), np.array([1, 3])]) == 0.0


def test_small_alpha_skews_labels_far_more_than_large_alpha() -> None:
    labels = np.arange(1000) % 2  # 500 of each class

    def mean_skew(alpha: float) -> float:
        return float(np.mean([
            label_skew(labels, dirichlet_partition(labels, num_sites=5, alpha=alpha, seed=s))
            for s in range(10)
        ]))

    skewed, near_iid = mean_skew(0.1), mean_skew(100.0)

    assert skewed > 0.3
    assert near_iid < 0.05
    assert skewed > 5 * near_iid


def test_impossible_min_rows_fails_after_bounded_draws_with_advice() -> None:
    labels = np.zeros(20, dtype=int)  # one class, 2 sites of >= 10 rows: needs an exact 10/10 cut

    with pytest.raises(ValueError, match="raise alpha, or lower num_sites or min_rows"):
        dirichlet_partition(labels, num_sites=2, alpha=0.001, seed=0, min_rows=10)


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_rows": 0}, "num_rows must be an integer >= 1; got 0"),
        ({"num_rows": 2.5}, "num_rows must be an integer >= 1; got 2.5"),
        ({"num_sites": 0}, "num_sites must be an integer >= 1; got 0"),
        ({"num_sites": 11}, r"num_sites must be <= the number of rows \(10\); got 11"),
        ({"num_sites": True}, "num_sites must be an integer >= 1; got True"),
        ({"seed": -1}, "seed must be an integer >= 0; got -1"),
    ],
)
def test_iid_partition_rejects_bad_arguments(kwargs: dict[str, Any], fragment: str) -> None:
    args: dict[str, Any] = {"num_rows": 10, "num_sites": 2, "seed": 0, **kwargs}

    with pytest.raises(ValueError, match=fragment):
        iid_partition(args.pop("num_rows"), **args)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"alpha": 0.0}, "alpha must be a finite number > 0; got 0.0"),
        ({"alpha": -1.0}, "alpha must be a finite number > 0; got -1.0"),
        ({"alpha": float("nan")}, "alpha must be a finite number > 0; got nan"),
        ({"alpha": float("inf")}, "alpha must be a finite number > 0; got inf"),
        ({"num_sites": 0}, "num_sites must be an integer >= 1; got 0"),
        ({"num_sites": 21}, r"num_sites must be <= the number of rows \(20\); got 21"),
        ({"min_rows": 11}, r"min_rows must be <= num_rows / num_sites \(20 / 2\); got 11"),
        ({"min_rows": -1}, "min_rows must be an integer >= 0; got -1"),
        ({"labels": np.zeros((4, 2))}, r"labels must be a non-empty 1-D array; got shape \(4, 2\)"),
        ({"labels": np.array([])}, "labels must be a non-empty 1-D array"),
    ],
)
def test_dirichlet_partition_rejects_bad_arguments(kwargs: dict[str, Any], fragment: str) -> None:
    args: dict[str, Any] = {"labels": np.arange(20) % 2, "num_sites": 2, "alpha": 1.0, "seed": 0,
                            "min_rows": 1, **kwargs}

    with pytest.raises(ValueError, match=fragment):
        dirichlet_partition(args.pop("labels"), **args)
