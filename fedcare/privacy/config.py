"""The DP settings of a run at a site: one frozen object, validated once, where it is parsed.

A run's ``[tool.flwr.app.config]`` (or CLI flags) holds the privacy keys flat:
``dp-mode``, ``target-epsilon``, ``noise-multiplier``, ``clip-norm``, ``delta``,
``epsilon-budget``, ``accountant``. :class:`~fedcare.common.config.RunConfig` parses them
once into a :class:`PrivacyConfig` (``RunConfig.privacy``; ``None`` when DP is off), and
every consumer reads that object. As in Opacus there are two ways in, and exactly one is
taken: a fixed noise (:meth:`PrivacyConfig.with_noise`) or a target epsilon from which the
noise is calibrated per site (:meth:`PrivacyConfig.with_target_epsilon`).

Every problem is collected and raised as one :class:`~fedcare.common.errors.ConfigError`
naming the config key (kebab-case, as the user wrote it) and the value. Nothing weakens
privacy silently: neither or both ways in is an error, and so is a noise multiplier that is
zero, negative, NaN or infinite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedcare.common.errors import ConfigError, describe_value
from fedcare.common.values import is_real

__all__ = ["ACCOUNTANTS", "DEFAULT_ACCOUNTANT", "UPPER_BOUND_ACCOUNTANT", "PrivacyConfig",
           "describe_value"]

#: Privacy accountants fedcare knows how to run (both from ``dp_accounting``).
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld")
#: The accountant noise is calibrated with and epsilons are reported in, unless a run or a
#: command names another: PLD (privacy loss distributions) is the tighter of the two, so a
#: site calibrated with it keeps less of its budget unused (docs/privacy.md, "Accountants").
DEFAULT_ACCOUNTANT = "pld"
#: Reported beside a PLD figure as its looser, independently derived upper bound.
UPPER_BOUND_ACCOUNTANT = "rdp"

_WHERE = "config"


def _key(name: str) -> str:
    return name.replace("_", "-")


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """DP-SGD settings for one site.

    Exactly one of ``noise_multiplier`` (train with this noise) or ``target_epsilon``
    (calibrate the noise multiplier per site so that the planned rounds, on top of what the
    ledger already holds, end at or below this epsilon: the whole run's figure).

    ``epsilon_budget`` is the hard per-site cap across everything the site's privacy ledger
    holds, over all runs; ``delta`` is the delta every epsilon is stated at; ``clip_norm``
    bounds each example's gradient. Float fields accept ints (TOML ``10`` arrives as
    ``int``) and store them as ``float``.
    """

    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    clip_norm: float
    delta: float
    epsilon_budget: float
    accountant: str = DEFAULT_ACCOUNTANT

    def __post_init__(self) -> None:
        problems: list[str] = []

        def positive_finite(name: str, *, optional: bool) -> None:
            value = getattr(self, name)
            if value is None and optional:
                return
            if not is_real(value) or not math.isfinite(value) or value <= 0:
                problems.append(f"{_WHERE}: {_key(name)} must be a finite number > 0; "
                                f"got {describe_value(value)}")
                return
            object.__setattr__(self, name, float(value))

        if self.noise_multiplier is None and self.target_epsilon is None:
            problems.append(
                f"{_WHERE}: exactly one of noise-multiplier or target-epsilon must be set "
                "(a partial DP config must not train without noise); got neither")
        elif self.noise_multiplier is not None and self.target_epsilon is not None:
            problems.append(
                f"{_WHERE}: exactly one of noise-multiplier or target-epsilon must be set; "
                f"got both (noise-multiplier={describe_value(self.noise_multiplier)}, "
                f"target-epsilon={describe_value(self.target_epsilon)})")
        positive_finite("noise_multiplier", optional=True)
        positive_finite("target_epsilon", optional=True)
        positive_finite("clip_norm", optional=False)

        delta = self.delta
        if not is_real(delta) or not math.isfinite(delta) or not 0 < delta < 1:
            problems.append(f"{_WHERE}: delta must be a number with 0 < delta < 1; "
                            f"got {describe_value(delta)}")
        else:
            object.__setattr__(self, "delta", float(delta))

        positive_finite("epsilon_budget", optional=False)

        # Compare only once both are known to be valid numbers (now floats).
        target, budget = self.target_epsilon, self.epsilon_budget
        if (isinstance(target, float) and isinstance(budget, float) and math.isfinite(target)
                and math.isfinite(budget) and 0 < budget < target):
            problems.append(f"{_WHERE}: target-epsilon must be <= epsilon-budget ({budget:g}, "
                            f"lifetime at this site); got {target:g}")

        if not isinstance(self.accountant, str) or self.accountant not in ACCOUNTANTS:
            problems.append(f"{_WHERE}: accountant must be one of {', '.join(ACCOUNTANTS)}; "
                            f"got {describe_value(self.accountant)}")

        if problems:
            raise ConfigError(problems)

    @classmethod
    def with_noise(cls, noise_multiplier: Any, **common: Any) -> PrivacyConfig:
        """Train with this noise multiplier (noise std / clip norm) at every site."""
        return cls(noise_multiplier=noise_multiplier, **common)

    @classmethod
    def with_target_epsilon(cls, target_epsilon: Any, **common: Any) -> PrivacyConfig:
        """Calibrate each site's noise so the whole run spends at most ``target_epsilon``."""
        return cls(target_epsilon=target_epsilon, **common)

    @property
    def calibrate(self) -> bool:
        """True when the noise multiplier is to be calibrated from ``target_epsilon``."""
        return self.noise_multiplier is None
