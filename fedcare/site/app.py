"""fedcare ClientApp: a hospital site. Thin: read the message, call plain functions, reply."""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedcare.common.config import RunConfig
from fedcare.common.errors import LedgerCorrupted, PolicyRefused
from fedcare.common.preflight import ANSWER_RECORD, KNOWN_RECORD, REQUEST_RECORD
from fedcare.common.wire import decode_arrays
from fedcare.site.faults import maybe_attack, maybe_fail
from fedcare.site.preflight import answer_preflight
from fedcare.site.refinement import refine_at_site
from fedcare.site.replies import (
    REFUSABLE,
    evaluate_content,
    finetune_content,
    ledger_run_id,
    refusal,
    run_name_of,
    train_content,
)
from fedcare.site.secure_aggregation import legacy_format_mod, secure_aggregation_mod
from fedcare.site.site import (
    SiteSpec,
    admit,
    evaluate_personalised,
    evaluate_round,
    finetune_site,
    record_refusal,
    resolve_site,
    train_round,
    withhold_metrics,
)

app = ClientApp()


def _site(msg: Message, context: Context) -> tuple[RunConfig, SiteSpec, Any]:
    config = RunConfig.from_mapping(context.run_config)
    round_config = msg.content.config_records[REQUEST_RECORD]
    site = resolve_site(config, context.node_config, run_name=run_name_of(round_config))
    return config, site, round_config


def _weights(msg: Message, config: RunConfig, site: SiteSpec) -> list[Any]:
    """The global model, once the site's policy admits the run (before any data file is
    opened; raises ``PolicyRefused`` otherwise)."""
    admit(config, site)
    # Numbers only: an object array or pickle from the server is refused, never loaded.
    return decode_arrays(msg.content.array_records["arrays"], where="global model")


def _refuse(err: Exception, msg: Message, site: SiteSpec, round_config: Any,
            phase: str) -> Message:
    """An error reply with the reasons, also written to a deployed site's audit log."""
    if not isinstance(err, LedgerCorrupted):  # a broken log is not extended
        reasons = err.reasons if isinstance(err, PolicyRefused) else (str(err),)
        record_refusal(site, run_id=ledger_run_id(round_config), phase=phase, reasons=reasons)
    return refusal(err, msg)


@app.train(mods=[secure_aggregation_mod])  # SecAgg+ rounds; plain ones pass
def train(msg: Message, context: Context) -> Message:
    config, site, round_config = _site(msg, context)
    server_round = int(round_config["server-round"])
    try:
        weights = _weights(msg, config, site)
        maybe_fail(config, site, server_round)  # simulation only (fail-sites)
        outcome = train_round(config, site, weights, run_id=ledger_run_id(round_config),
                              server_round=server_round,
                              proximal_mu=float(round_config.get("proximal-mu", 0.0)))
    except REFUSABLE as err:
        return _refuse(err, msg, site, round_config, "round")
    sent = maybe_attack(config, site, outcome.weights, weights, server_round)  # simulation only
    return Message(train_content(site, outcome, sent), reply_to=msg)


@app.train("finetune")
def finetune(msg: Message, context: Context) -> Message:
    """After the last round: personalise at the site under DP; reply with scores only."""
    config, site, round_config = _site(msg, context)
    try:
        weights = _weights(msg, config, site)
        outcome, personal = finetune_site(config, site, weights,
                                          run_id=ledger_run_id(round_config),
                                          server_round=int(round_config["server-round"]))
        refined = refine_at_site(config, site, weights, run_id=ledger_run_id(round_config))
    except REFUSABLE as err:
        return _refuse(err, msg, site, round_config, "finetune")
    return Message(finetune_content(site, outcome, personal, refined), reply_to=msg)


@app.evaluate(mods=[legacy_format_mod])
def evaluate(msg: Message, context: Context) -> Message:
    config, site, round_config = _site(msg, context)
    try:
        weights = _weights(msg, config, site)
        withhold_metrics(site)
    except REFUSABLE as err:
        return _refuse(err, msg, site, round_config, "evaluate")
    result = evaluate_round(config, site, weights)
    personal = evaluate_personalised(config, site, weights, run_id=run_name_of(round_config))
    return Message(evaluate_content(site, result, personal), reply_to=msg)


@app.query("preflight")
def preflight(msg: Message, context: Context) -> Message:
    """Before round 1: accept or refuse the whole run, with reasons and planned figures."""
    config, site, round_config = _site(msg, context)
    known: Any = msg.content.config_records.get(KNOWN_RECORD, {})
    answer = answer_preflight(config, site, rounds=int(round_config.get("rounds-planned",
                                                                         config.num_rounds)),
                              run_id=ledger_run_id(round_config),
                              known={str(k): str(v) for k, v in known.items()})
    if not answer.accepted:
        record_refusal(site, run_id=ledger_run_id(round_config), phase="preflight",
                       reasons=answer.reasons)
    return Message(RecordDict({ANSWER_RECORD: ConfigRecord(answer.to_record())}), reply_to=msg)
