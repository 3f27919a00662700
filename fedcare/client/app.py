"""fedcare ClientApp: a hospital site. Thin: read the message, call plain functions, reply."""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcare.client.faults import maybe_attack, maybe_fail
from fedcare.client.secure_aggregation import legacy_format_mod, secure_aggregation_mod
from fedcare.client.site import (
    SiteSpec,
    evaluate_personalised,
    evaluate_round,
    finetune_site,
    resolve_site,
    train_round,
)
from fedcare.client.training import EvalResult
from fedcare.common.config import RunConfig
from fedcare.common.errors import LedgerCorrupted, PrivacyBudgetExceeded, RoundAlreadyRecorded
from fedcare.common.wire import decode_arrays

# Error codes this app replies with (Flower's own codes are below 100).
PRIVACY_BUDGET_EXHAUSTED = 100
LEDGER_UNUSABLE = 101
ROUND_ALREADY_SPENT = 102
UNNAMED_RUN = "unnamed-run"
_REFUSALS = {PrivacyBudgetExceeded: PRIVACY_BUDGET_EXHAUSTED, LedgerCorrupted: LEDGER_UNUSABLE,
             RoundAlreadyRecorded: ROUND_ALREADY_SPENT}
_REFUSABLE = tuple(_REFUSALS)

app = ClientApp()


def _read(msg: Message, context: Context) -> tuple[RunConfig, SiteSpec, Any, list[Any]]:
    config = RunConfig.from_mapping(context.run_config)
    round_config = msg.content.config_records["config"]
    site = resolve_site(config, context.node_config,
                        run_name=str(round_config.get("run-name", UNNAMED_RUN)))
    # Numbers only: an object array or pickle from the server is refused, never loaded.
    weights = decode_arrays(msg.content.array_records["arrays"], where="global model")
    return config, site, round_config, weights


def _scores(result: EvalResult, prefix: str = "") -> dict[str, Any]:
    return {f"{prefix}accuracy": result.accuracy, f"{prefix}auc": result.auc,
            f"{prefix}loss": result.loss}


@app.train(mods=[secure_aggregation_mod])  # SecAgg+ rounds; plain ones pass
def train(msg: Message, context: Context) -> Message:
    config, site, round_config, weights = _read(msg, context)
    server_round = int(round_config["server-round"])
    maybe_fail(config, site, server_round)  # simulation only (fail-sites)
    try:
        outcome = train_round(config, site, weights,
                              run_id=str(round_config.get("ledger-run-id",
                                                          round_config.get("run-name",
                                                                           UNNAMED_RUN))),
                              server_round=server_round,
                              proximal_mu=float(round_config.get("proximal-mu", 0.0)))
    except _REFUSABLE as err:
        code = next(c for kind, c in _REFUSALS.items() if isinstance(err, kind))
        return Message(Error(code=code, reason=str(err)), reply_to=msg)
    assert outcome.audit is not None
    # The audit entry's hash and the update digest let the server anchor the site's
    # hash-chained log from outside (report.json keeps them).
    site_info: dict[str, Any] = {"name": site.name, "audit-hash": outcome.audit.hash,
                                 "update-sha256": outcome.audit.update_sha256}
    if outcome.statement is not None:
        site_info["privacy"] = outcome.statement.short()
    # Only the shared arrays: the site's private part stays in its state dir.
    sent = maybe_attack(config, site, outcome.weights, weights, server_round)  # simulation only
    content = RecordDict({"arrays": ArrayRecord(sent),
                          "metrics": MetricRecord(dict(outcome.metrics())),
                          "site": ConfigRecord(site_info)})
    return Message(content=content, reply_to=msg)


@app.train("finetune")
def finetune(msg: Message, context: Context) -> Message:
    """After the last round: personalise at the site under DP; reply with scores only."""
    config, site, round_config, weights = _read(msg, context)
    try:
        outcome, personal = finetune_site(
            config, site, weights, run_id=str(round_config.get("run-name", UNNAMED_RUN)),
            server_round=int(round_config["server-round"]))
    except _REFUSABLE as err:
        code = next(c for kind, c in _REFUSALS.items() if isinstance(err, kind))
        return Message(Error(code=code, reason=str(err)), reply_to=msg)
    site_info: dict[str, Any] = {"name": site.name}
    if outcome.statement is not None:
        site_info["privacy"] = outcome.statement.short()
    metrics = {**outcome.metrics(), **_scores(personal, "personal-"),
               "test-rows": personal.num_examples}
    return Message(RecordDict({"metrics": MetricRecord(metrics),
                               "site": ConfigRecord(site_info)}), reply_to=msg)


@app.evaluate(mods=[legacy_format_mod])
def evaluate(msg: Message, context: Context) -> Message:
    config, site, round_config, weights = _read(msg, context)
    result = evaluate_round(config, site, weights)
    metrics: dict[str, Any] = {"num-examples": result.num_examples, "unit-weight": 1,
                               **_scores(result), "positives": result.positives}
    personal = evaluate_personalised(config, site, weights, run_id=str(
        round_config.get("run-name", UNNAMED_RUN)))
    if personal is not None:
        metrics.update(_scores(personal, "personal-"))
    content = RecordDict({"metrics": MetricRecord(metrics),
                          "site": ConfigRecord({"name": site.name})})
    return Message(content=content, reply_to=msg)
