"""Seeded partitions of a pooled dataset into simulated sites.

Every function returns one sorted ``int64`` array of row indices per site; the arrays are
disjoint and together cover every row. The same arguments always give the same result.
"""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

MAX_DIRICHLET_DRAWS = 1000
"""How many Dirichlet draws ``dirichlet_partition`` tries before giving up."""


def _check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _check_sites(num_sites: object, num_rows: int) -> int:
    sites = _check_int("num_sites", num_sites, minimum=1)
    if sites > num_rows:
        raise ValueError(
            f"num_sites must be <= the number of rows ({num_rows}); got {sites}"
        )
    return sites


def iid_partition(num_rows: int, *, num_sites: int, seed: int) -> list[np.ndarray]:
    """Shuffle ``range(num_rows)`` and cut it into ``num_sites`` near-equal parts.

    Site sizes differ by at most one row.
    """
    rows = _check_int("num_rows", num_rows, minimum=1)
    sites = _check_sites(num_sites, rows)
    _check_int("seed", seed, minimum=0)
    order = np.random.default_rng(seed).permutation(rows)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, sites)]


def dirichlet_partition(
    labels: np.ndarray,
    *,
    num_sites: int,
    alpha: float,
    seed: int,
    min_rows: int = 10,
) -> list[np.ndarray]:
    """Label-skewed partition: each class is spread over sites by a Dirichlet(alpha) draw.

    For every class, site shares are drawn from ``Dirichlet(alpha * ones(num_sites))``
    and that class's shuffled rows are cut at those shares (Hsu et al. 2019). Small
    ``alpha`` concentrates each class on few sites; large ``alpha`` approaches an iid
    split. Draws are repeated (from the same seeded generator, at most
    ``MAX_DIRICHLET_DRAWS`` times) until every site has at least ``min_rows`` rows; if
    none qualifies, ``ValueError`` explains what to change.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array; got shape {y.shape}")
    n = len(y)
    sites = _check_sites(num_sites, n)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not (
        math.isfinite(alpha) and alpha > 0
    ):
        raise ValueError(f"alpha must be a finite number > 0; got {alpha!r}")
    _check_int("seed", seed, minimum=0)
    floor = _check_int("min_rows", min_rows, minimum=0)
    if floor * sites > n:
        raise ValueError(
            f"min_rows must be <= num_rows / num_sites ({n} / {sites}); got {floor}"
        )

    rng = np.random.default_rng(seed)
    _, codes = np.unique(y, return_inverse=True)
    by_class = [np.flatnonzero(codes == k) for k in range(int(codes.max()) + 1)]
    smallest = 0
    for draw in range(1, MAX_DIRICHLET_DRAWS + 1):
        parts: list[list[np.ndarray]] = [[] for _ in range(sites)]
        for rows in by_class:
            shuffled = rng.permutation(rows)
            shares = rng.dirichlet(np.full(sites, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(shuffled)).astype(np.int64)
            for site, piece in enumerate(np.split(shuffled, cuts)):
                parts[site].append(piece)
        result = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        smallest = min(len(r) for r in result)
        if smallest >= floor:
            if draw > 1:
                logger.info("dirichlet_partition: draw %d gave every site >= %d rows",
                            draw, floor)
            return result
    raise ValueError(
        f"dirichlet_partition: could not give every one of {sites} sites at least "
        f"{floor} rows in {MAX_DIRICHLET_DRAWS} draws with alpha={alpha} over {n} rows "
        f"(last draw's smallest site: {smallest}); raise alpha, or lower num_sites or "
        "min_rows"
    )


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each site's label mix and the pooled mix.

    0 means every site has the pooled class proportions; values near 1 mean sites hold
    (almost) disjoint classes. Empty sites are ignored.
    """
    y = np.asarray(labels)
    classes, codes = np.unique(y, return_inverse=True)
    pooled = np.bincount(codes, minlength=len(classes)) / len(y)
    distances = []
    for part in parts:
        if len(part):
            mix = np.bincount(codes[part], minlength=len(classes)) / len(part)
            distances.append(0.5 * float(np.abs(mix - pooled).sum()))
    return float(np.mean(distances)) if distances else 0.0
