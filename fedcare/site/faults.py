"""Simulated hostile and failing sites, for robustness experiments. SIMULATION ONLY.

``malicious-sites`` names virtual sites (partition ids) whose updates are replaced by an
attack before they are sent: ``sign-flip`` (``w_g - s * (w - w_g)``), ``scale``
(``w_g + s * (w - w_g)``), ``noise`` (``w + N(0, s^2)``) or ``nan``; ``s`` is
``attack-scale``. ``fail-sites`` names virtual sites that fail while training from round
``fail-round`` on: ``fail-mode = "crash"`` raises, ``"hang"`` stays silent for three round
timeouts (then raises), so the server must go on without its reply.

This can never switch on in a deployment by accident: it is refused unless the site is
a virtual one (a partition of a simulation) *and* the process runs under fedcare's
simulation runner (which sets :data:`SIMULATION_ENV`); and every use is logged loudly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import numpy as np

from fedcare.common.config import SIMULATION_ENV, RunConfig
from fedcare.common.errors import ConfigError, FedcareError
from fedcare.site.site import SiteSpec
from fedcare.site.training import derive_seed

logger = logging.getLogger(__name__)


class SimulatedSiteFailure(FedcareError, RuntimeError):
    """A virtual site crashing on purpose (``fail-sites``)."""


def _planned(config: RunConfig) -> bool:
    return bool(config.malicious_partitions or config.fail_partitions)


def check_allowed(config: RunConfig, site: SiteSpec) -> None:
    """Refuse attack/failure settings anywhere but a virtual site of a fedcare simulation."""
    if not _planned(config):
        return
    if site.partition_id is None or os.environ.get(SIMULATION_ENV) != "1":
        raise ConfigError([f"site {site.name}: malicious-sites and fail-sites must be empty "
                           "outside fedcare's simulation runner; got "
                           f"malicious-sites={config.malicious_sites!r} "
                           f"fail-sites={config.fail_sites!r}"])


def maybe_fail(config: RunConfig, site: SiteSpec, server_round: int) -> None:
    check_allowed(config, site)
    if site.partition_id in config.fail_partitions and server_round >= config.fail_round:
        logger.error("SIMULATED FAILURE: site %s %ss in round %d (fail-sites)", site.name,
                     config.fail_mode, server_round)
        if config.fail_mode == "hang":  # silent past the server's round timeout
            time.sleep(3 * config.round_timeout)
        raise SimulatedSiteFailure(f"site {site.name}: simulated {config.fail_mode} in round "
                                   f"{server_round}")


def maybe_attack(config: RunConfig, site: SiteSpec, sent: Sequence[np.ndarray],
                 received: Sequence[np.ndarray], server_round: int) -> list[np.ndarray]:
    """The update this site sends: ``sent``, or an attack on it if the site is malicious."""
    check_allowed(config, site)
    if site.partition_id not in config.malicious_partitions:
        return list(sent)
    logger.error("SIMULATED ATTACK: site %s sends a %s update (scale %g) in round %d",
                 site.name, config.attack, config.attack_scale, server_round)
    return attack(config.attack, sent, received, scale=config.attack_scale,
                  seed=derive_seed(config.seed, site.name, server_round, "attack"))


def attack(kind: str, sent: Sequence[np.ndarray], received: Sequence[np.ndarray], *,
           scale: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for w, g in zip(sent, received, strict=True):
        if kind == "sign-flip":
            a = g - scale * (w - g)
        elif kind == "scale":
            a = g + scale * (w - g)
        elif kind == "noise":
            a = w + rng.normal(0.0, scale, size=w.shape)
        elif kind == "nan":
            a = np.full_like(w, np.nan)
        else:
            raise ValueError(f"attack: kind must be sign-flip, scale, noise or nan; got {kind!r}")
        out.append(np.asarray(a, dtype=w.dtype))
    return out
