"""What a site puts in its replies: plain functions behind the thin ClientApp.

Only shared arrays and small records leave the site: the private part of a personalised
model stays in the site's state dir, and fine-tuning replies carry scores, not arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedcare.common.errors import (
    LedgerCorrupted,
    PolicyRefused,
    PrivacyBudgetExceeded,
    RoundAlreadyRecorded,
)
from fedcare.site.site import SiteSpec, TrainOutcome
from fedcare.site.training import EvalResult

# Error codes a site replies with (Flower's own codes are below 100).
PRIVACY_BUDGET_EXHAUSTED = 100
LEDGER_UNUSABLE = 101
ROUND_ALREADY_SPENT = 102
POLICY_REFUSED = 103
UNNAMED_RUN = "unnamed-run"
REFUSALS: dict[type[Exception], int] = {PrivacyBudgetExceeded: PRIVACY_BUDGET_EXHAUSTED,
                                        LedgerCorrupted: LEDGER_UNUSABLE,
                                        RoundAlreadyRecorded: ROUND_ALREADY_SPENT,
                                        PolicyRefused: POLICY_REFUSED}
REFUSABLE = tuple(REFUSALS)


def run_name_of(round_config: Mapping[str, Any]) -> str:
    return str(round_config.get("run-name", UNNAMED_RUN))


def ledger_run_id(round_config: Mapping[str, Any]) -> str:
    """The id this attempt's spends are recorded under (``run`` or ``run/attempt-N``)."""
    return str(round_config.get("ledger-run-id", run_name_of(round_config)))


def refusal(err: Exception, msg: Message) -> Message:
    """An error reply for a refusal the site made on purpose (budget, ledger, replay)."""
    code = next(c for kind, c in REFUSALS.items() if isinstance(err, kind))
    return Message(Error(code=code, reason=str(err)), reply_to=msg)


def scores(result: EvalResult, prefix: str = "") -> dict[str, Any]:
    return {f"{prefix}accuracy": result.accuracy, f"{prefix}auc": result.auc,
            f"{prefix}loss": result.loss}


def _site_info(site: SiteSpec, outcome: TrainOutcome) -> dict[str, Any]:
    info: dict[str, Any] = {"name": site.name}
    if outcome.statement is not None:
        info["privacy"] = outcome.statement.short()
    return info


def train_content(site: SiteSpec, outcome: TrainOutcome,
                  sent: Sequence[np.ndarray]) -> RecordDict:
    """The shared arrays only, the metrics, and the audit anchors of this round."""
    info = _site_info(site, outcome)
    if outcome.audit is not None:
        # The audit entry's hash and the update digest let the server anchor the site's
        # hash-chained log from outside (report.json keeps them).
        info.update({"audit-hash": outcome.audit.hash, "audit-length": outcome.audit.index + 1,
                     "update-sha256": outcome.audit.update_sha256})
    return RecordDict({"arrays": ArrayRecord(list(sent)),
                       "metrics": MetricRecord(dict(outcome.metrics())),
                       "site": ConfigRecord(info)})


def finetune_content(site: SiteSpec, outcome: TrainOutcome, personal: EvalResult,
                     refined: Mapping[str, float] | None = None) -> RecordDict:
    """Scores of the personalised model (and, after a site-only refinement, of each
    candidate and the index of the chosen one) and the whole-run statement: no arrays."""
    metrics = {**outcome.metrics(), **scores(personal, "personal-"),
               "test-rows": personal.num_examples, **(refined or {})}
    return RecordDict({"metrics": MetricRecord(metrics),
                       "site": ConfigRecord(_site_info(site, outcome))})


def evaluate_content(site: SiteSpec, result: EvalResult,
                     personal: EvalResult | None) -> RecordDict:
    metrics: dict[str, Any] = {"num-examples": result.num_examples, "unit-weight": 1,
                               **scores(result), "positives": result.positives}
    if personal is not None:
        metrics.update(scores(personal, "personal-"))
    return RecordDict({"metrics": MetricRecord(metrics),
                       "site": ConfigRecord({"name": site.name})})
