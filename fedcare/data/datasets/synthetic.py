"""Synthetic clinical-style data: as many virtual sites as a scale study needs, no patients.

No file and no download: each virtual site's rows are drawn in memory from a generator
seeded by ``(partition-seed, site number)``, so site ``k`` gets the same rows whichever
worker asks and however many sites the run has (making site ``k`` costs the same at 10
sites as at 1000; no pooled table is built and cut). Every site holds
``ROWS_PER_SITE`` rows.

The model (known, so results can be judged): the label is drawn first (outcome 1 with
probability ``POSITIVE_SHARE``, or the site's own share, below), then ten latent
Gaussian scores with unit variance whose means move by ``SIGNAL`` (per score, signed)
for outcome 1; each score becomes one column (heart-disease-shaped: numeric columns are
scaled into a plausible range, binary ones are the score's sign, categorical ones its
quantile bin). A linear model of the scores is Bayes-optimal, so a small network can
learn the task and accuracy/AUC mean something; the columns are *not* real clinical
measurements and every report names the data set ``synthetic``.

Partitioning: ``iid``: every site draws from the same distribution. ``dirichlet``: each
site's share of outcome 1 is drawn from ``Beta(alpha, alpha)`` (the two-class Dirichlet)
by its own generator: small ``alpha`` gives sites of mostly one class, large ``alpha``
sites near the pooled 50 %. (For the bundled datasets ``dirichlet`` spreads each class's
pooled rows over sites instead; here there is no pool.) ``natural`` does not apply.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedcare.data.schemas import (
    SYNTHETIC,
    SYNTHETIC_BINARY,
    SYNTHETIC_CATEGORICAL,
    SYNTHETIC_NUMERIC,
)
from fedcare.data.validate import LoadReport, SiteTable

NAME = "synthetic"
LABEL = "outcome"
SOURCE = "synthetic (generated in memory, no real patients)"
ROWS_PER_SITE = 200
"""Rows of every virtual site (150 train / 50 test at the default test-fraction 0.25)."""
POSITIVE_SHARE = 0.45
"""Share of outcome 1 at an iid site."""
SIGNAL = 0.4
"""How far each latent score's mean moves for outcome 1 (in standard deviations): on the
ten scores a linear model's best AUC is Phi(SIGNAL * sqrt(10 / 2)) ~ 0.81; the rounded and
binned columns keep a little less."""
_MIN_SHARE = 0.02
"""A dirichlet site keeps at least this share of each class (so a split can stratify)."""

SCHEMA = SYNTHETIC


def site_positive_share(*, partition_id: int, partitioning: str, dirichlet_alpha: float,
                        partition_seed: int) -> float:
    """The share of outcome 1 at virtual site ``partition_id``."""
    if partitioning != "dirichlet":
        return POSITIVE_SHARE
    rng = np.random.default_rng([partition_seed, partition_id, 1])
    share = float(rng.beta(dirichlet_alpha, dirichlet_alpha))
    return min(max(share, _MIN_SHARE), 1 - _MIN_SHARE)


def site_table(*, partition_id: int, partitioning: str, dirichlet_alpha: float,
               partition_seed: int, rows: int = ROWS_PER_SITE) -> SiteTable:
    """Virtual site ``partition_id``'s rows: the same arguments always give the same rows."""
    share = site_positive_share(partition_id=partition_id, partitioning=partitioning,
                                dirichlet_alpha=dirichlet_alpha, partition_seed=partition_seed)
    rng = np.random.default_rng([partition_seed, partition_id])
    positives = max(1, min(rows - 1, round(share * rows)))  # both classes, for the split
    labels = np.zeros(rows, dtype=np.int64)
    labels[rng.permutation(rows)[:positives]] = 1
    signs = np.array([s for *_, s in SYNTHETIC_NUMERIC] + [s for _, s in SYNTHETIC_BINARY] +
                     [s for *_, s in SYNTHETIC_CATEGORICAL])
    scores = rng.standard_normal((rows, len(signs))) + SIGNAL * signs * labels[:, None]
    columns: dict[str, np.ndarray] = {}
    for j, (name, low, high, centre, spread, _) in enumerate(SYNTHETIC_NUMERIC):
        columns[name] = np.clip(np.round(centre + spread * scores[:, j], 1), low, high)
    j = len(SYNTHETIC_NUMERIC)
    for name, _ in SYNTHETIC_BINARY:
        columns[name] = (scores[:, j] > 0).astype(np.float64)
        j += 1
    for name, cats, _ in SYNTHETIC_CATEGORICAL:
        # Equal-probability bins of a standard normal score (the outcome shifts the mix).
        edges = _normal_quantiles(len(cats))
        columns[name] = np.asarray(cats, dtype=np.float64)[np.searchsorted(edges,
                                                                            scores[:, j])]
        j += 1
    features = pd.DataFrame({c.name: columns[c.name] for c in SCHEMA.features})
    source = (f"{SOURCE}: site {partition_id}, {partitioning} "
              f"(partition-seed {partition_seed})")
    return SiteTable(features=features, labels=labels,
                     report=LoadReport(source=source, rows_read=rows, rows_kept=rows,
                                       rows_dropped_missing=0, missing_by_column={}))


def _normal_quantiles(bins: int) -> np.ndarray:
    """The ``bins - 1`` inner edges cutting a standard normal into equal-probability bins."""
    from statistics import NormalDist

    return np.array([NormalDist().inv_cdf(k / bins) for k in range(1, bins)])
