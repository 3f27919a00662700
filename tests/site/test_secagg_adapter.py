"""The legacy-format adapter that lets Flower's SecAgg+ workflow drive fedcare's handlers."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import EvaluateIns, FitIns, ndarrays_to_parameters
from flwr.common import recorddict_compat as compat

from fedcare.site.secure_aggregation import legacy_format_mod, secure_aggregation_mod

WEIGHTS = [np.full((2, 3), 0.5, dtype=np.float32), np.arange(3, dtype=np.float32)]


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def _handler(seen: list[Message], views: list[RecordDict] | None = None
             ):  # type: ignore[no-untyped-def]
    def handle(msg: Message, ctxt: Context) -> Message:
        seen.append(msg)
        if views is not None:
            views.append(msg.content)  # what the handler saw (the adapter restores it after)
        arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
        content = RecordDict({"arrays": ArrayRecord([a + 1 for a in arrays]),
                              "metrics": MetricRecord({"num-examples": 42, "loss": 0.25,
                                                       "epsilon": 0.7}),
                              "site": ConfigRecord({"name": "alpha", "audit-hash": "abc"})})
        return Message(content, reply_to=msg)
    return handle


def test_legacy_train_message_reaches_the_handler_in_message_api_form() -> None:
    ins = FitIns(ndarrays_to_parameters(WEIGHTS), {"server-round": 3, "run-name": "r"})
    msg = Message(compat.fitins_to_recorddict(ins, keep_input=True), dst_node_id=7,
                  message_type="train")
    views: list[RecordDict] = []

    reply = legacy_format_mod(msg, _context(), _handler([], views))

    (inner,) = views
    assert inner.config_records["config"]["server-round"] == 3
    np.testing.assert_array_equal(inner.array_records["arrays"].to_numpy_ndarrays()[1],
                                  WEIGHTS[1])
    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    assert fitres.num_examples == 42
    assert fitres.metrics["site-name"] == "alpha" and fitres.metrics["audit-hash"] == "abc"
    from flwr.common import parameters_to_ndarrays

    sent = parameters_to_ndarrays(fitres.parameters)
    assert all(a.dtype == np.float64 for a in sent)  # fine quantisation needs float64
    np.testing.assert_allclose(sent[0], WEIGHTS[0] + 1)
    assert "fitins.parameters" in msg.content.array_records  # the original is restored


def test_legacy_evaluate_message_replies_with_loss_and_count() -> None:
    ins = EvaluateIns(ndarrays_to_parameters(WEIGHTS), {"server-round": 1})
    msg = Message(compat.evaluateins_to_recorddict(ins, keep_input=True), dst_node_id=7,
                  message_type="evaluate")
    reply = legacy_format_mod(msg, _context(), _handler([]))
    res = compat.recorddict_to_evaluateres(reply.content)
    assert res.loss == 0.25 and res.num_examples == 42


def test_message_api_messages_pass_through_untouched() -> None:
    content = RecordDict({"arrays": ArrayRecord(WEIGHTS), "config": ConfigRecord({})})
    msg = Message(content, dst_node_id=7, message_type="train")
    seen: list[Message] = []
    reply = secure_aggregation_mod(msg, _context(), _handler(seen))
    assert seen == [msg]
    assert "arrays" in reply.content.array_records
