"""A site's answer to the server's pre-flight question: will it take part in this run?

The site checks the run it would actually train (its own reading of the run config, and
the bundle verdict of its worker) against its own policy, and the whole run's planned
spend (every round and the fine-tuning) against its ledger: composed, never summed.
Nothing is trained or recorded here; a refusal lists every reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError, FedcareError, PolicyRefused
from fedcare.common.preflight import (
    KIND_DEPLOYED,
    KIND_VIRTUAL,
    PreflightAnswer,
    parse_known_head,
)
from fedcare.common.runid import run_of
from fedcare.privacy import PrivacyLedger
from fedcare.site.policy import check_spend
from fedcare.site.site import (
    SiteSpec,
    admit,
    load_site,
    planned_spends,
    spend_figures,
)
from fedcare.site.site_state import history_for_server

logger = logging.getLogger(__name__)

DP_OFF_NOTE = "DP is off for this run (allowed by this site's policy): no privacy guarantee"


def answer_preflight(config: RunConfig, site: SiteSpec, *, rounds: int, run_id: str,
                     known: Mapping[str, str] | None = None) -> PreflightAnswer:
    """Accept or refuse the run; ``rounds`` is how many rounds the server plans (a resumed
    run plans only the rest), capped at the run's ``num-rounds``."""
    assert site.policy is not None
    base = {"site": site.name, "kind": KIND_DEPLOYED if site.deployed else KIND_VIRTUAL,
            "policy": site.policy.source, "bundle_hash": site.bundle_hash}
    try:
        admit(config, site)  # before any data file is opened
    except PolicyRefused as err:
        return PreflightAnswer(accepted=False, reasons=err.reasons, **base)  # type: ignore[arg-type]
    privacy = config.privacy
    if privacy is None:
        return PreflightAnswer(accepted=True, reasons=(DP_OFF_NOTE,), **base)  # type: ignore[arg-type]
    head = parse_known_head((known or {}).get(site.name, ""))
    try:
        # ledger, audit log and marker cross-checked first (a tampered state refuses)
        history = history_for_server(site.state_dir, site=site.name, delta=privacy.delta,
                                     accountant=privacy.accountant, known=head)
        ledger = PrivacyLedger(site.state_dir, site=site.name)
        entries = ledger.entries
        rows = len(load_site(config, site).y_train)
    except (FedcareError, ValueError, OSError) as err:
        reason = str(err) if isinstance(err, (ConfigError, FedcareError)) else \
            f"site state or data must be readable; got {type(err).__name__}"
        return PreflightAnswer(accepted=False, reasons=(reason,), **base)  # type: ignore[arg-type]
    planned = planned_spends(config, rows, rounds=max(0, min(rounds, config.num_rounds)))
    run_eps, before, after = spend_figures(
        [e.spend for e in entries],
        [e.spend for e in entries if run_of(e.run_id) == run_of(run_id)], planned,
        delta=privacy.delta, accountant=privacy.accountant)
    sigma = planned[0].noise_multiplier if planned else privacy.noise_multiplier or 0.0
    reasons = check_spend(site.policy, noise_multiplier=sigma, run_epsilon=run_eps,
                          lifetime_before=before, lifetime_after=after,
                          lifetime_budget=site.epsilon_budget, delta=privacy.delta,
                          accountant=privacy.accountant)
    answer = PreflightAnswer(
        accepted=not reasons, reasons=tuple(reasons), rows=rows, noise_multiplier=sigma,
        epsilon_run=run_eps, epsilon_lifetime_before=before, epsilon_lifetime_after=after,
        lifetime_budget=site.epsilon_budget, delta=privacy.delta,
        accountant=privacy.accountant,
        runs_at_site=len({run_of(e.run_id) for e in entries} - {run_of(run_id)}),
        history=history, **base)  # type: ignore[arg-type]
    logger.info("pre-flight: %s", answer.line())
    return answer
