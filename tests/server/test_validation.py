"""Validate before you aggregate: hostile updates never reach the global model.

Every aggregate below is computed by hand. Two honest sites send w=1 (10 examples) and
w=3 (30 examples); FedAvg of the two is (10*1 + 30*3) / 40 = 2.5.
"""

from __future__ import annotations

import io
import pathlib
from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian

from fedcare.common.config import RunConfig
from fedcare.server.report import RunRecorder
from fedcare.server.strategies import RecordingStrategy, make_strategy
from fedcare.server.validation import UpdateValidator

NAMES = ["kernel", "bias"]
GLOBAL = [np.zeros((2, 1), np.float32), np.zeros(1, np.float32)]


class FakeGrid:
    """Just enough of a Flower Grid for ``configure_train`` (node ids 1..n)."""

    def __init__(self, nodes: int) -> None:
        self.nodes = list(range(1, nodes + 1))

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _request(node: int) -> Message:
    return Message(content=RecordDict(), dst_node_id=node, message_type="train")


def reply(node: int, value: float, examples: float, *, site: str | None = None,
          arrays: ArrayRecord | None = None, metrics: dict | None = None) -> Message:
    record = arrays if arrays is not None else ArrayRecord(OrderedDict(
        (n, Array(np.full_like(g, value))) for n, g in zip(NAMES, GLOBAL)))
    content = RecordDict({
        "arrays": record,
        "metrics": MetricRecord(metrics if metrics is not None else
                                {"num-examples": examples, "unit-weight": 1, "epsilon": 0.5}),
        "site": ConfigRecord({"name": site or f"site-{node}"})})
    return Message(content=content, reply_to=_request(node))


def _wrapped(inner=None, *, max_norm: float = 50.0, max_examples: int = 100_000,
             min_sites: int = 1) -> RecordingStrategy:
    recorder = RunRecorder(run_name="t", run_config={})
    strategy = RecordingStrategy(
        inner or FedAvg(min_train_nodes=1, min_available_nodes=1), recorder,
        on_new_global=lambda r, a: None, min_sites=min_sites,
        validator=UpdateValidator(max_update_norm=max_norm,
                                  max_examples_per_site=max_examples))
    return strategy


def _round(strategy: RecordingStrategy, server_round: int, replies: list[Message],
           nodes: int = 3) -> np.ndarray | None:
    list(strategy.configure_train(server_round, ArrayRecord(OrderedDict(
        (n, Array(g)) for n, g in zip(NAMES, GLOBAL))), ConfigRecord(), FakeGrid(nodes)))
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return None if arrays is None else arrays.to_numpy_ndarrays()[0]


def _honest() -> list[Message]:
    return [reply(1, 1.0, 10), reply(2, 3.0, 30)]


def _rejected(strategy: RecordingStrategy, server_round: int) -> list[dict]:
    return strategy.recorder.rounds[server_round].rejected


def _pickled_object_array(marker: pathlib.Path) -> Array:
    """An object-dtype .npy whose unpickling would create ``marker``."""

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (pathlib.Path.touch, (marker,))

    buffer = io.BytesIO()
    np.save(buffer, np.array([Boom(), Boom()], dtype=object), allow_pickle=True)
    return Array(dtype="object", shape=(2, 1), stype="numpy.ndarray", data=buffer.getvalue())


def test_honest_updates_aggregate_to_the_hand_computed_weighted_mean() -> None:
    out = _round(_wrapped(), 1, _honest())

    np.testing.assert_allclose(out, [[2.5], [2.5]])


@pytest.mark.parametrize("case", ["nan", "inf", "wrong-shape", "extra-array", "int-dtype",
                                  "float64", "huge-norm", "zero-count", "negative-count",
                                  "fractional-count", "list-count", "no-metrics",
                                  "renamed-array", "torch-stype"])
def test_a_hostile_update_is_rejected_and_the_aggregate_is_the_honest_one(case: str) -> None:
    bad = {
        "nan": lambda: reply(3, np.nan, 10),
        "inf": lambda: reply(3, np.inf, 10),
        "wrong-shape": lambda: reply(3, 0, 10, arrays=ArrayRecord(OrderedDict(
            [("kernel", Array(np.zeros((3, 1), np.float32))),
             ("bias", Array(np.zeros(1, np.float32)))]))),
        "extra-array": lambda: reply(3, 0, 10, arrays=ArrayRecord(OrderedDict(
            [*((n, Array(g)) for n, g in zip(NAMES, GLOBAL)),
             ("extra", Array(np.zeros(1, np.float32)))]))),
        "int-dtype": lambda: reply(3, 0, 10, arrays=ArrayRecord(OrderedDict(
            (n, Array(g.astype(np.int32))) for n, g in zip(NAMES, GLOBAL)))),
        "float64": lambda: reply(3, 0, 10, arrays=ArrayRecord(OrderedDict(
            (n, Array(g.astype(np.float64))) for n, g in zip(NAMES, GLOBAL)))),
        "huge-norm": lambda: reply(3, 1e6, 10),
        "zero-count": lambda: reply(3, 2.0, 0),
        "negative-count": lambda: reply(3, 2.0, -5),
        "fractional-count": lambda: reply(3, 2.0, 2.5),
        "list-count": lambda: reply(3, 2.0, 0, metrics={"num-examples": [1e9, 1e9]}),
        "no-metrics": lambda: Message(content=RecordDict({
            "arrays": ArrayRecord(OrderedDict((n, Array(g)) for n, g in zip(NAMES, GLOBAL))),
            "site": ConfigRecord({"name": "site-3"})}),
            reply_to=_request(3)),
        "renamed-array": lambda: reply(3, 0, 10, arrays=ArrayRecord(OrderedDict(
            [("a", Array(GLOBAL[0])), ("b", Array(GLOBAL[1]))]))),
        "torch-stype": lambda: reply(3, 0, 10, arrays=ArrayRecord(OrderedDict(
            (n, Array(dtype="float32", shape=tuple(g.shape), stype="torch.Tensor",
                      data=b"\0" * 8)) for n, g in zip(NAMES, GLOBAL)))),
    }[case]()
    strategy = _wrapped()

    out = _round(strategy, 1, [*_honest(), bad])

    np.testing.assert_allclose(out, [[2.5], [2.5]])
    assert [r["site"] for r in _rejected(strategy, 1)] == ["site-3"]


def test_an_object_array_or_pickle_is_refused_without_being_unpickled(
        tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "unpickled"
    as_object = ArrayRecord(OrderedDict([("kernel", _pickled_object_array(marker)),
                                         ("bias", Array(GLOBAL[1]))]))
    disguised = _pickled_object_array(marker)
    disguised.dtype = "float32"  # declares floats, carries a pickle
    as_float = ArrayRecord(OrderedDict([("kernel", disguised), ("bias", Array(GLOBAL[1]))]))
    strategy = _wrapped()

    out = _round(strategy, 1, [*_honest(), reply(3, 0, 10, arrays=as_object),
                               reply(4, 0, 10, arrays=as_float)], nodes=4)

    np.testing.assert_allclose(out, [[2.5], [2.5]])
    reasons = {r["site"]: r["reason"] for r in _rejected(strategy, 1)}
    assert "floating dtype" in reasons["site-3"]
    assert "plain numeric .npy" in reasons["site-4"]
    assert not marker.exists()


def test_an_inflated_example_count_is_capped_at_the_sites_registered_count() -> None:
    strategy = _wrapped()
    _round(strategy, 1, [reply(1, 1.0, 10), reply(2, 3.0, 30), reply(3, 20.0, 10)])

    out = _round(strategy, 2, [reply(1, 1.0, 10), reply(2, 3.0, 30), reply(3, 20.0, 1e9)])

    # Weighted as 10, not 1e9: (10*1 + 30*3 + 10*20) / 50 = 6.0 (uncapped: ~20.0).
    np.testing.assert_allclose(out, [[6.0], [6.0]], rtol=1e-6)
    assert strategy.recorder.rounds[2].capped == {"site-3": {"claimed": 1_000_000_000,
                                                             "used": 10}}


def test_a_first_claim_above_the_configured_maximum_is_capped_at_it() -> None:
    strategy = _wrapped(max_examples=40)

    out = _round(strategy, 1, [reply(1, 1.0, 10), reply(2, 3.0, 30), reply(3, 20.0, 1e9)])

    # (10*1 + 30*3 + 40*20) / 80 = 11.25; the attacker's weight is 40/80, not ~1.
    np.testing.assert_allclose(out, [[11.25], [11.25]], rtol=1e-6)


def test_unit_weight_is_forced_to_one() -> None:
    strategy = _wrapped(FedAvg(min_train_nodes=1, min_available_nodes=1,
                               weighted_by_key="unit-weight"))

    out = _round(strategy, 1, [reply(1, 1.0, 10, metrics={"num-examples": 10, "unit-weight": 1}),
                               reply(2, 3.0, 30, metrics={"num-examples": 30,
                                                          "unit-weight": 1000})])

    np.testing.assert_allclose(out, [[2.0], [2.0]])


def test_a_site_name_claimed_by_a_second_node_is_rejected() -> None:
    strategy = _wrapped()
    _round(strategy, 1, _honest())

    out = _round(strategy, 2, [reply(1, 1.0, 10), reply(2, 3.0, 30),
                               reply(3, 100.0, 30, site="site-2")])

    np.testing.assert_allclose(out, [[2.5], [2.5]])
    assert "belongs to node 2" in _rejected(strategy, 2)[0]["reason"]


def test_replies_with_different_metric_keys_do_not_crash_the_round() -> None:
    # Flower raises InconsistentMessageReplies on differing keys; the validator keeps the
    # keys every accepted reply shares.
    odd = reply(3, 2.0, 40, metrics={"num-examples": 40, "unit-weight": 1, "extra": 7})

    out = _round(_wrapped(), 1, [*_honest(), odd])

    np.testing.assert_allclose(out, [[(10 + 90 + 80) / 80]] * 2, rtol=1e-6)


def test_fewer_accepted_updates_than_min_sites_leave_the_model_unchanged() -> None:
    strategy = _wrapped(min_sites=2)

    out = _round(strategy, 1, [reply(1, 1.0, 10), reply(2, np.nan, 30)])

    assert out is None


def test_failed_and_silent_sites_are_named_in_the_report() -> None:
    strategy = _wrapped()
    failed = Message(Error(code=100, reason="budget"), reply_to=_request(3))

    out = _round(strategy, 1, [reply(1, 1.0, 10), failed], nodes=3)  # node 2 never answers

    np.testing.assert_allclose(out, [[1.0], [1.0]])
    report = strategy.recorder.to_dict(final={})
    reasons = sorted(f["reason"] for f in report["rounds"][0]["failures"])
    assert reasons == ["budget", "no reply before the round timeout"]


def test_median_with_validation_ignores_a_nan_site() -> None:
    strategy = _wrapped(FedMedian(min_train_nodes=1, min_available_nodes=1))

    out = _round(strategy, 1, [reply(1, 1.0, 10), reply(2, 3.0, 30), reply(3, 2.0, 5),
                               reply(4, np.nan, 5)], nodes=4)

    np.testing.assert_allclose(out, [[2.0], [2.0]])


def test_every_configured_strategy_survives_a_mix_of_hostile_updates() -> None:
    hostile = [reply(4, np.nan, 10), reply(5, 1e6, 10), reply(6, 2.0, -1)]
    for name in ("fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg",
                 "krum"):
        strategy = _wrapped(make_strategy(RunConfig(strategy=name, min_sites=1)))
        out = _round(strategy, 1, [reply(1, 1.0, 10), reply(2, 3.0, 30), reply(3, 2.0, 20),
                                   *hostile], nodes=6)
        assert out is not None and np.all(np.isfinite(out)), name
        assert np.all(np.abs(out) <= 3.0), name  # inside the honest range (FedOpt: a step)
        assert len(_rejected(strategy, 1)) == 3, name


def test_validator_state_round_trips_and_refuses_nonsense() -> None:
    validator = UpdateValidator(max_update_norm=1.0, max_examples_per_site=10)
    validator.registered = {"a": 3}
    other = UpdateValidator(max_update_norm=1.0, max_examples_per_site=10)

    other.restore(validator.state())

    assert other.registered == {"a": 3}
    with pytest.raises(ValueError, match="registered counts"):
        other.restore({"registered": {"a": -1}})


def test_accepted_update_norms_are_reported() -> None:
    strategy = _wrapped()

    _round(strategy, 1, _honest())

    # ||[1, 1, 1]|| = sqrt(3); ||[3, 3, 3]|| = 3 sqrt(3).
    norms = strategy.recorder.to_dict(final={})["rounds"][0]["update-norms"]
    assert norms == pytest.approx({"site-1": 3**0.5, "site-2": 3 * 3**0.5})
