"""DP-readiness: how much noise a site's updates will carry, before it joins a run.

Given the rows a site keeps, the run's target epsilon, delta, rounds, batch size and
local epochs, :func:`assess_readiness` computes the noise multiplier the site's own
calibration will pick (the same :func:`calibrate_noise_multiplier` the site runs) and the
noise-to-signal ratio of its average clipped update: one DP-SGD step adds Gaussian noise
of standard deviation ``sigma * C / (q * n)`` per weight to an average of clipped
per-example gradients whose norm is at most ``C``.

The ratio against ``C`` alone (per weight) understates the problem: the noise lands on
every one of the model's ``d`` weights, while the clipped update's norm ``C`` is shared
among them, and over the run's ``T`` steps the signal adds up ``T`` times while the noise
grows as ``sqrt(T)``. The verdict therefore uses
``sigma * sqrt(d) / (q * n * sqrt(T))``: the run's accumulated noise norm over the largest
accumulated signal. It is an order of magnitude, not a prediction of accuracy.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from fedcare.privacy.accounting import calibrate_noise_multiplier, plan_round

MOSTLY_NOISE = 1.0
"""Accumulated noise at or above the largest possible signal: mostly noise."""
NOISY = 0.3
"""Above this share of the signal, learning is slow and unsteady."""


@dataclass(frozen=True, kw_only=True)
class DpReadiness:
    """One site's expected DP noise for one planned run (``noise_multiplier`` is ``None``
    when the target cannot be reached: the site would refuse)."""

    site: str
    train_rows: int
    target_epsilon: float | None
    delta: float
    rounds: int
    batch_size: int
    local_epochs: int
    clip_norm: float
    accountant: str
    sampling: str
    parameters: int
    noise_multiplier: float | None
    sampling_rate: float
    steps: int
    per_weight_ratio: float
    run_ratio: float
    verdict: str

    def lines(self) -> list[str]:
        target = (f"eps {self.target_epsilon:g} (this run, at this site)"
                  if self.target_epsilon is not None else "the given noise multiplier")
        head = (f"DP readiness of {self.site}: {self.train_rows} training rows, {target}, "
                f"delta {self.delta:g}, {self.rounds} rounds x {self.local_epochs} local "
                f"epoch(s), batch {self.batch_size}, clip norm {self.clip_norm:g}, "
                f"{self.accountant.upper()} accountant, add/remove-one-row adjacency, "
                f"{self.sampling} sampling")
        if self.noise_multiplier is None:
            return [head, f"  verdict: {self.verdict}"]
        return [
            head,
            f"  noise multiplier sigma = {self.noise_multiplier:.3g} (q = "
            f"{self.sampling_rate:.3g}, {self.steps} steps in the run)",
            f"  noise of the average clipped update per step: sigma*C/(q*n) = "
            f"{self.per_weight_ratio:.3g} x C per weight; over the model's {self.parameters} "
            f"weights and {self.steps} steps the noise is about {self.run_ratio:.3g} x the "
            "largest possible signal",
            f"  verdict: {self.verdict} (an order of magnitude, not an accuracy estimate)",
        ]


def model_parameters(input_dim: int, hidden_units: tuple[int, ...]) -> int:
    """Weights of fedcare's MLP: Dense layers ``input -> hidden... -> 1`` with biases."""
    sizes = (input_dim, *hidden_units, 1)
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes))


def assess_readiness(*, site: str, train_rows: int, target_epsilon: float | None,
                     noise_multiplier: float | None = None, delta: float, rounds: int,
                     batch_size: int, local_epochs: int, clip_norm: float,
                     accountant: str, sampling: str, parameters: int) -> DpReadiness:
    """The noise this site will get. Give ``target_epsilon`` (calibrated as the site
    does) or a fixed ``noise_multiplier``."""
    spend = plan_round(num_examples=max(train_rows, 1), batch_size=batch_size,
                       local_epochs=local_epochs, noise_multiplier=1.0, sampling=sampling)
    steps = spend.steps * rounds
    common: dict[str, Any] = dict(
        site=site, train_rows=train_rows, target_epsilon=target_epsilon, delta=delta,
        rounds=rounds, batch_size=batch_size, local_epochs=local_epochs, clip_norm=clip_norm,
        accountant=accountant, sampling=sampling, parameters=parameters,
        sampling_rate=spend.sampling_rate, steps=steps)
    sigma = noise_multiplier
    if train_rows < 1:
        return DpReadiness(**common, noise_multiplier=None, per_weight_ratio=math.inf,
                           run_ratio=math.inf,
                           verdict="no training rows: this site cannot take part")
    if sigma is None:
        try:
            sigma = calibrate_noise_multiplier(
                target_epsilon=float(target_epsilon or 0), delta=delta, num_examples=train_rows,
                batch_size=batch_size, local_epochs=local_epochs, rounds=rounds,
                accountant=accountant, sampling=sampling)
        except ValueError as err:
            return DpReadiness(**common, noise_multiplier=None, per_weight_ratio=math.inf,
                               run_ratio=math.inf,
                               verdict=f"the target cannot be met, so this site would refuse "
                                       f"to train ({err})")
    expected_batch = spend.sampling_rate * train_rows
    per_weight = sigma / expected_batch
    run_ratio = per_weight * math.sqrt(parameters) / math.sqrt(steps)
    eps_words = f"at eps {target_epsilon:g}" if target_epsilon is not None else "at this noise"
    if run_ratio >= MOSTLY_NOISE:
        verdict = (f"this site's updates will be mostly noise {eps_words}; consider a larger "
                   "eps, fewer rounds, or joining with personalisation only")
    elif run_ratio >= NOISY:
        verdict = (f"noisy {eps_words}: the site's updates carry signal, but expect slower, "
                   "less steady learning than without DP")
    else:
        verdict = f"the noise is small next to the site's clipped updates {eps_words}"
    return DpReadiness(**common, noise_multiplier=sigma, per_weight_ratio=per_weight,
                       run_ratio=run_ratio, verdict=verdict)
