"""Site side of SecAgg+: Flower's ``secaggplus_mod`` around the same train/evaluate code.

Flower 1.23's SecAgg+ workflow speaks the legacy message format (``fitins.*`` in,
``fitres.*`` out); fedcare's ClientApp speaks the Message API (``arrays``/``config`` in,
``arrays``/``metrics``/``site`` out). :func:`legacy_format_mod` translates both ways so
the handlers stay one; :func:`secure_aggregation_mod` adds Flower's ``secaggplus_mod``
for SecAgg+ rounds. Plain Message-API messages pass through untouched.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    MessageType,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from fedcare.common.formats import CLIPPING_RANGE
from fedcare.flower_compat.legacy import RECORD_KEY_CONFIGS, ClientAppCallable
from fedcare.flower_compat.legacy import recorddict_compat as compat

logger = logging.getLogger(__name__)

LEGACY_KEYS = {MessageType.TRAIN: "fitins", MessageType.EVALUATE: "evaluateins"}


def _is_legacy(msg: Message) -> bool:
    prefix = LEGACY_KEYS.get(msg.metadata.message_type)
    return prefix is not None and f"{prefix}.parameters" in msg.content.array_records


def _flat_metrics(reply: RecordDict) -> dict[str, bool | bytes | float | int | str]:
    out: dict[str, bool | bytes | float | int | str] = {}
    for record in reply.metric_records.values():
        out.update({k: v for k, v in record.items() if isinstance(v, (int, float))})
    if "site" in reply.config_records:
        site = reply.config_records["site"]
        out["site-name"] = str(site["name"])
        out.update({k: str(v) for k, v in site.items() if k != "name"})
    return out


def legacy_format_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Run a legacy ``fitins``/``evaluateins`` message through the Message-API handler."""
    if not _is_legacy(msg):
        return call_next(msg, ctxt)
    original = msg.content
    is_train = msg.metadata.message_type == MessageType.TRAIN
    ins = (compat.recorddict_to_fitins(original, keep_input=True) if is_train
           else compat.recorddict_to_evaluateins(original, keep_input=True))
    msg.content = RecordDict({"arrays": ArrayRecord(parameters_to_ndarrays(ins.parameters)),
                              "config": ConfigRecord(dict(ins.config))})  # type: ignore[arg-type]
    try:
        reply = call_next(msg, ctxt)
    finally:
        msg.content = original
    if reply.has_error():
        return reply
    metrics = _flat_metrics(reply.content)
    num_examples = int(metrics.get("num-examples", 0))
    ok = Status(code=Code.OK, message="")
    if is_train:
        weights = reply.content.array_records["arrays"].to_numpy_ndarrays()
        _warn_if_clipped(weights)
        # float64: SecAgg+ quantises to 2**26 levels, finer than float32 resolves near 2**25
        wide = [np.asarray(w, dtype=np.float64) for w in weights]
        content = compat.fitres_to_recorddict(
            FitRes(ok, ndarrays_to_parameters(wide), num_examples, metrics), keep_input=True)
    else:
        loss = float(metrics.get("loss", float("nan")))
        content = compat.evaluateres_to_recorddict(
            EvaluateRes(ok, loss, num_examples, metrics))
    return Message(content, reply_to=msg)


def _warn_if_clipped(weights: list[np.ndarray]) -> None:
    largest = max((float(np.max(np.abs(w))) for w in weights if w.size), default=0.0)
    if largest > CLIPPING_RANGE:
        logger.warning("SecAgg+ clips weights to +-%g before masking; this site's largest is "
                       "%.3g: the aggregate will be distorted", CLIPPING_RANGE, largest)


def secure_aggregation_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable
                           ) -> Message:
    """SecAgg+ rounds go through Flower's ``secaggplus_mod``; the rest passes through."""
    if (msg.metadata.message_type == MessageType.TRAIN
            and RECORD_KEY_CONFIGS in msg.content.config_records):
        return secaggplus_mod(msg, ctxt, lambda m, c: _masked_update(m, c, call_next))
    return legacy_format_mod(msg, ctxt, call_next)


def _masked_update(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """SecAgg+'s collect-masked-vectors stage: the round's training, whose result
    ``secaggplus_mod`` masks before it leaves the site."""
    logger.info("SecAgg+ masked update: training for round %s", msg.metadata.group_id)
    return legacy_format_mod(msg, ctxt, call_next)
