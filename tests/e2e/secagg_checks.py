"""Checking a SecAgg+ aggregate against the plain weighted mean of the very same updates.

The plain mean is computed independently, by replaying each site's round in the test's
process: seeded sampling and seeded noise (``secure-noise = false``) make the same update.
Shared by the simulation and the deployment SecAgg+ tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedcare.common.config import RunConfig
from fedcare.common.formats import CLIPPING_RANGE, MAX_WEIGHT, QUANTIZATION_RANGE
from fedcare.common.model import build_model, weights_of
from fedcare.site.site import SiteSpec, train_round


def initial_weights(config: RunConfig, input_dim: int) -> list[np.ndarray]:
    """The server's initial model for ``config`` (same seed: same weights)."""
    return weights_of(build_model(input_dim=input_dim, hidden_units=config.hidden_layer_sizes,
                                  seed=config.seed))


def replay_round(config: RunConfig, sites: Sequence[SiteSpec], weights: list[np.ndarray], *,
                 server_round: int = 1) -> tuple[list[list[np.ndarray]], list[int]]:
    """Each site's update and example count for ``server_round``, trained in this process."""
    updates, counts = [], []
    for site in sites:
        outcome = train_round(config, site, weights, run_id="replay",
                              server_round=server_round, proximal_mu=0.0)
        updates.append(outcome.weights)
        counts.append(outcome.num_examples)
    return updates, counts


def quantisation_bound(num_sites: int, total_examples: int) -> float:
    """SecAgg+'s worst-case error per weight (see fedcare.server.secure_aggregation): each of
    ``num_sites`` summed updates is off by at most one quantisation step, 2 x clipping range
    / levels, then the sum is divided by the total weight (examples / MAX_WEIGHT)."""
    return num_sites * (2 * CLIPPING_RANGE / QUANTIZATION_RANGE) / (total_examples / MAX_WEIGHT)


@dataclass(frozen=True)
class Comparison:
    error: float  # max |secure - plain| over every weight
    bound: float  # quantisation_bound for these sites
    moved: float  # max |plain - initial|: how far the round moved the model


def compare(secure: Sequence[np.ndarray], initial: Sequence[np.ndarray],
            updates: Sequence[Sequence[np.ndarray]], counts: Sequence[int]) -> Comparison:
    """The SecAgg+ aggregate ``secure`` against the plain weighted mean of ``updates``."""
    total = sum(counts)
    plain = [sum(n * u[k] for n, u in zip(counts, updates, strict=True)) / total
             for k in range(len(initial))]
    return Comparison(
        error=max(float(np.max(np.abs(s - p))) for s, p in zip(secure, plain, strict=True)),
        bound=quantisation_bound(len(counts), total),
        moved=max(float(np.max(np.abs(p - w0))) for p, w0 in zip(plain, initial, strict=True)))


def assert_matches_plain_mean(result: Comparison) -> None:
    assert result.moved > 100 * result.bound  # the round really changed the model ...
    # ... and SecAgg+ summed the same updates (+ float32 rounding of the saved model)
    assert result.error <= result.bound + 1e-6, result
    print(f"SecAgg+ vs plain aggregate: max |diff| {result.error:.2e} "
          f"(bound {result.bound:.2e}); update size {result.moved:.2e}")
