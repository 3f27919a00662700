"""Site-level DP: server-side clipping of whole site updates plus Gaussian noise.

Example-level DP (each site's DP-SGD) protects one patient row. This option adds a
second, coarser guarantee, protecting a whole hospital's contribution, by wrapping the
aggregation strategy in Flower's ``DifferentialPrivacyServerSideFixedClipping``
(DP-FedAvg, McMahan et al. 2018): each site's update is clipped to L2 norm ``C``, the
updates are averaged with *equal* weights, and Gaussian noise of standard deviation
``sigma * C / m`` is added, ``m`` being the configured number of sites per round.

Made fail-closed where Flower's wrapper is not:

* Equal weights. Flower would let the inner strategy weight sites by their claimed
  example counts, so one site could carry far more than ``1/m`` of the average while the
  noise assumes ``1/m``. fedcare builds the inner strategy with unit weights.
* A fixed denominator. Flower aggregates (with a warning) when fewer than ``m`` sites
  reply, which shrinks the noise relative to each update. Here a round with any failed
  reply, or not exactly ``m`` replies, is not aggregated: the global model stays as it
  was, and no site-level privacy is spent.
* An unchanged model. Flower's clipping divides by the update norm; a zero update would
  raise ``ZeroDivisionError``. Here a zero update is left as it is (it is within ``C``).

Accounting: adjacency is adding or removing one site's contribution, a removed site
counting as a zero update (so ``m`` stays fixed); every site takes part in every round,
so there is no amplification by sampling. Each aggregated round is one Gaussian
mechanism with noise multiplier ``sigma``; the whole-run site-level epsilon is their
composition (:func:`site_level_epsilon`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

from fedcare.privacy.config import DEFAULT_ACCOUNTANT

logger = logging.getLogger(__name__)

UNIT_WEIGHT_KEY = "unit-weight"


def clip_update(sent: list[np.ndarray], base: list[np.ndarray], clip_norm: float
                ) -> list[np.ndarray]:
    """``base + (sent - base) * min(1, C / ||sent - base||)``; a zero update stays zero."""
    update = [np.subtract(s, b, dtype=np.float64) for s, b in zip(sent, base, strict=True)]
    norm = float(np.sqrt(sum(float(np.sum(u * u)) for u in update)))
    scale = 1.0 if norm <= clip_norm else clip_norm / norm
    return [(b + u * scale).astype(s.dtype) for s, b, u in zip(sent, base, update, strict=True)]


def site_level_epsilon(*, rounds: int, noise_multiplier: float, delta: float,
                       accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """Whole-run site-level epsilon after ``rounds`` aggregated rounds."""
    from fedcare.privacy.accounting import RoundSpend, compose_epsilon  # with SciPy: on use

    if rounds == 0:
        return 0.0
    return compose_epsilon([RoundSpend(sampling_rate=1.0, noise_multiplier=noise_multiplier,
                                       steps=rounds)], delta=delta, accountant=accountant)


class SiteLevelDP(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping, fail-closed (see the module docstring)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rounds_aggregated = 0

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        good = [m for m in replies if not m.has_error()]
        if len(good) != len(replies) or len(good) != self.num_sampled_clients:
            logger.warning("round %d: site-level DP needs exactly %d successful site updates; "
                           "got %d of %d replies: not aggregated (global model unchanged)",
                           server_round, self.num_sampled_clients, len(good), len(replies))
            return None, None
        base = self.current_arrays.to_numpy_ndarrays()
        for reply in good:
            for name, record in list(reply.content.array_records.items()):
                clipped = clip_update(record.to_numpy_ndarrays(), base, self.clipping_norm)
                reply.content[name] = ArrayRecord(OrderedDict(
                    (k, Array(v)) for k, v in zip(record.keys(), clipped, strict=True)))
        arrays, metrics = self.strategy.aggregate_train(server_round, good)
        if arrays is None:
            return None, metrics
        self.rounds_aggregated += 1
        return self._add_noise_to_aggregated_arrays(arrays), metrics
