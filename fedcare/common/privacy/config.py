"""The site's differential-privacy settings: one frozen, validated object.

A :class:`PrivacyConfig` is parsed once (from ``[tool.flwr.app.config]``, CLI flags
or a test) and then passed around read-only. Validation collects every problem and
raises a single :class:`~fedcare.common.errors.ConfigError`, so a user fixes the
whole config in one pass.

Nothing here weakens privacy silently: a partial DP config (neither a noise
multiplier nor a target epsilon, or both) is an error, and so is a noise
multiplier that is zero, negative, NaN or infinite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fedcare.common.errors import ConfigError, describe_value
from fedcare.common.values import is_int as _is_int
from fedcare.common.values import is_real as _is_real

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

_WHERE = "privacy"


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """DP-SGD settings for one site.

    Give exactly one of ``noise_multiplier`` (train with this noise) or
    ``target_epsilon`` (calibrate the noise multiplier per site so that the planned
    rounds, on top of what the ledger already holds, end at or below this epsilon).

    ``epsilon_budget`` is the hard per-site cap across everything the site's
    privacy ledger holds, over all runs; ``delta`` is the delta every epsilon is
    stated at. Float fields accept ints (TOML ``10`` arrives as ``int``) and store
    them as ``float``.
    """

    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    clip_norm: float
    batch_size: int
    local_epochs: int
    delta: float
    epsilon_budget: float
    accountant: str = DEFAULT_ACCOUNTANT

    def __post_init__(self) -> None:
        problems: list[str] = []

        def positive_finite(name: str, *, optional: bool) -> None:
            value = getattr(self, name)
            if value is None and optional:
                return
            if not _is_real(value) or not math.isfinite(value) or value <= 0:
                problems.append(
                    f"{_WHERE}: {name} must be a finite number > 0; got {describe_value(value)}"
                )
                return
            object.__setattr__(self, name, float(value))

        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                problems.append(
                    f"{_WHERE}: {name} must be an integer >= 1; got {describe_value(value)}"
                )

        if self.noise_multiplier is None and self.target_epsilon is None:
            problems.append(
                f"{_WHERE}: exactly one of noise_multiplier or target_epsilon must be set "
                "(a partial DP config must not train without noise); got neither"
            )
        elif self.noise_multiplier is not None and self.target_epsilon is not None:
            problems.append(
                f"{_WHERE}: exactly one of noise_multiplier or target_epsilon must be set; "
                f"got both (noise_multiplier={describe_value(self.noise_multiplier)}, "
                f"target_epsilon={describe_value(self.target_epsilon)})"
            )
        positive_finite("noise_multiplier", optional=True)
        positive_finite("target_epsilon", optional=True)
        positive_finite("clip_norm", optional=False)
        positive_int("batch_size")
        positive_int("local_epochs")

        delta = self.delta
        if not _is_real(delta) or not math.isfinite(delta) or not 0 < delta < 1:
            problems.append(
                f"{_WHERE}: delta must be a number with 0 < delta < 1; got {describe_value(delta)}"
            )
        else:
            object.__setattr__(self, "delta", float(delta))

        positive_finite("epsilon_budget", optional=False)

        # Compare only once both are known to be valid numbers (now floats).
        target, budget = self.target_epsilon, self.epsilon_budget
        if (
            isinstance(target, float)
            and isinstance(budget, float)
            and math.isfinite(target)
            and math.isfinite(budget)
            and target > 0
            and budget > 0
            and target > budget
        ):
            problems.append(
                f"{_WHERE}: target_epsilon must be <= epsilon_budget ({budget}); got {target}"
            )

        if not isinstance(self.accountant, str) or self.accountant not in ACCOUNTANTS:
            problems.append(
                f"{_WHERE}: accountant must be one of {', '.join(ACCOUNTANTS)}; "
                f"got {describe_value(self.accountant)}"
            )

        if problems:
            raise ConfigError(problems)

    @property
    def calibrate(self) -> bool:
        """True when the noise multiplier is to be calibrated from ``target_epsilon``."""
        return self.noise_multiplier is None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PrivacyConfig:
        """Build a config from a flat mapping (a TOML table, a Flower run config).

        Unknown keys, missing keys and bad values are all reported together in one
        :class:`ConfigError` (a missing key reads as ``got nothing``).
        """
        known = [f.name for f in fields(cls)]
        problems = [
            f"{_WHERE}: {key} must be one of the known keys ({', '.join(known)}); "
            f"got unknown key {key!r}"
            for key in sorted(str(k) for k in data if k not in known)
        ]
        required = ("clip_norm", "batch_size", "local_epochs", "delta", "epsilon_budget")
        kwargs: dict[str, Any] = {key: None for key in required}
        kwargs.update({key: value for key, value in data.items() if key in known})
        try:
            config = cls(**kwargs)
        except ConfigError as err:
            raise ConfigError([*problems, *err.problems]) from None
        if problems:
            raise ConfigError(problems)
        return config
