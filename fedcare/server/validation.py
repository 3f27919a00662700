"""Validate before you aggregate: every site reply is checked before any strategy sees it.

Flower's strategies trust what a site sends: the example count it claims weights its
update, a NaN poisons the average, and one reply with an unexpected metric key makes
the whole round raise. :class:`UpdateValidator` screens each training reply against
the global model the server sent:

* exactly one array record, with the global model's array names, shapes and float
  dtype, decoded without pickle (:func:`fedcare.common.wire.decode_arrays`);
* every value finite;
* ``||w_site - w_global||_2 <= max-update-norm`` (0, the default, switches the bound off);
* exactly one metric record whose ``num-examples`` is a positive whole number; it is
  *capped*, not trusted: at the count the site claimed the first time it was seen
  (its registration), and at ``max-examples-per-site``; ``unit-weight`` is forced to 1;
* one node per site name.

A failing reply is dropped with (round, site, reason) logged and returned for the run
report; it never reaches the aggregate. Accepted replies are rewritten in place (the
decoded arrays, the capped count, the metric keys all accepted replies share), so the
wrapped strategy aggregates exactly what was checked.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from fedcare.common.errors import UnsafePayload, UpdateRejected
from fedcare.common.wire import decode_arrays

logger = logging.getLogger(__name__)

COUNT_KEY = "num-examples"
UNIT_KEY = "unit-weight"
EVALUATE_KEYS = ("num-examples", "accuracy", "auc")


@dataclass(frozen=True)
class Rejection:
    server_round: int
    phase: str
    site: str
    node: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "node": self.node, "phase": self.phase,
                "reason": self.reason}


@dataclass(frozen=True)
class Screened:
    """What the strategy may see (accepted and error replies) and what was kept out."""

    replies: list[Message]
    rejections: list[Rejection]
    capped: dict[str, tuple[float, int]]  # site -> (claimed, used) example counts
    norms: dict[str, float]  # site -> ||w_site - w_global|| of each accepted update


def site_of(msg: Message) -> str:
    """The name a reply gives for its site (a claim: identity is the node id)."""
    try:
        name = msg.content["site"]["name"]
    except (KeyError, TypeError):
        return f"node-{msg.metadata.src_node_id}"
    return str(name) if isinstance(name, str) and name else f"node-{msg.metadata.src_node_id}"


def update_norm(sent: Sequence[np.ndarray], base: Sequence[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(np.subtract(s, b, dtype=np.float64))))
                         for s, b in zip(sent, base, strict=True)))


class UpdateValidator:
    """Screens replies; remembers each site's registered example count across rounds."""

    def __init__(self, *, max_update_norm: float, max_examples_per_site: int) -> None:
        if not (math.isfinite(max_update_norm) and max_update_norm >= 0):
            raise ValueError(f"validation: max-update-norm must be >= 0; got {max_update_norm}")
        if max_examples_per_site < 1:
            raise ValueError("validation: max-examples-per-site must be >= 1; "
                             f"got {max_examples_per_site}")
        self.max_update_norm = max_update_norm
        self.max_examples_per_site = max_examples_per_site
        self.registered: dict[str, int] = {}
        self._node_of_site: dict[str, int] = {}
        if max_update_norm == 0:
            # Off by default: honest DP updates range from ~0.5 (large sites, eps 1) to over
            # 100 (30-row sites, eps 0.1), so no fixed default separates them from attacks.
            logger.info("update validation: no update-norm bound (max-update-norm = 0); set "
                        "it from the update-norms report.json records to bound scaled updates")

    # -- state carried across a resume ----------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"registered": dict(sorted(self.registered.items()))}

    def restore(self, state: Mapping[str, Any]) -> None:
        registered = state.get("registered", {})
        if not isinstance(registered, Mapping) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
                for k, v in registered.items()):
            raise ValueError(f"validation: registered counts must map site names to whole "
                             f"numbers > 0; got {registered!r}")
        self.registered = dict(registered)

    # -- screening --------------------------------------------------------------------
    def screen_train(self, server_round: int, replies: Sequence[Message],
                     global_arrays: Sequence[np.ndarray], array_names: Sequence[str]
                     ) -> Screened:
        kept: list[Message] = []
        checked: list[tuple[Message, str, list[np.ndarray], Mapping[str, Any], int]] = []
        rejections: list[Rejection] = []
        seen: set[str] = set()
        for msg in replies:
            if msg.has_error():
                kept.append(msg)  # a failed site: the strategy and report see the failure
                continue
            site, node = site_of(msg), msg.metadata.src_node_id
            try:
                bound = self._node_of_site.setdefault(site, node)
                if bound != node:
                    raise UpdateRejected(f"site {site!r} belongs to node {bound}; "
                                         f"got a reply from node {node}")
                if site in seen:
                    raise UpdateRejected(f"site {site!r} must reply once per round; "
                                         "got a second reply")
                arrays = self._check_arrays(msg, global_arrays, array_names)
                metrics = _one_metric_record(msg)
                count = _positive_count(metrics.get(COUNT_KEY), COUNT_KEY)
            except (UpdateRejected, UnsafePayload) as err:
                rejections.append(self._reject(server_round, "train", site, node, str(err)))
                continue
            seen.add(site)
            checked.append((msg, site, arrays, metrics, count))
        capped: dict[str, tuple[float, int]] = {}
        norms: dict[str, float] = {}
        shared = _shared_keys([m for _, _, _, m, _ in checked])
        for msg, site, arrays, metrics, claimed in checked:
            norms[site] = update_norm(arrays, global_arrays)
            used = self._cap(site, claimed)
            if used != claimed:
                capped[site] = (claimed, used)
                logger.warning("round %d: %s claimed %d training examples; weighted as %d "
                               "(registered count / max-examples-per-site)", server_round,
                               site, claimed, used)
            values = {k: metrics[k] for k in shared}
            values[COUNT_KEY] = used
            if UNIT_KEY in values:
                values[UNIT_KEY] = 1
            record_name = next(iter(msg.content.array_records))
            msg.content[record_name] = ArrayRecord(OrderedDict(
                (name, Array(a)) for name, a in zip(array_names, arrays, strict=True)))
            msg.content[next(iter(msg.content.metric_records))] = MetricRecord(values)
            kept.append(msg)
        return Screened(replies=kept, rejections=rejections, capped=capped, norms=norms)

    def screen_evaluate(self, server_round: int, replies: Sequence[Message]) -> Screened:
        kept: list[Message] = []
        rejections: list[Rejection] = []
        checked: list[tuple[Message, Mapping[str, Any]]] = []
        for msg in replies:
            if msg.has_error():
                kept.append(msg)
                continue
            site = site_of(msg)
            try:
                metrics = _one_metric_record(msg)
                _positive_count(metrics.get(COUNT_KEY), COUNT_KEY)
                _fraction(metrics.get("accuracy"), "accuracy", allow_nan=False)
                _fraction(metrics.get("auc"), "auc", allow_nan=True)
            except UpdateRejected as err:
                rejections.append(self._reject(server_round, "evaluate", site,
                                               msg.metadata.src_node_id, str(err)))
                continue
            checked.append((msg, metrics))
        shared = _shared_keys([m for _, m in checked])
        for msg, metrics in checked:
            msg.content[next(iter(msg.content.metric_records))] = MetricRecord(
                {k: metrics[k] for k in shared})
            kept.append(msg)
        return Screened(replies=kept, rejections=rejections, capped={}, norms={})

    def _check_arrays(self, msg: Message, global_arrays: Sequence[np.ndarray],
                      array_names: Sequence[str]) -> list[np.ndarray]:
        records = msg.content.array_records
        if len(records) != 1:
            raise UpdateRejected(f"update must carry exactly one array record; "
                                 f"got {len(records)}")
        record = next(iter(records.values()))
        if list(record.keys()) != list(array_names):
            raise UpdateRejected(f"update arrays must be named {list(array_names)}; "
                                 f"got {list(record.keys())}")
        arrays = decode_arrays(record, expected=global_arrays, where="update")
        for name, a in zip(array_names, arrays, strict=True):
            if not np.all(np.isfinite(a)):
                raise UpdateRejected(f"update array {name!r} must be finite; got "
                                     f"{int(np.sum(~np.isfinite(a)))} NaN/inf values")
        if self.max_update_norm > 0:
            norm = update_norm(arrays, global_arrays)
            if norm > self.max_update_norm:
                raise UpdateRejected(f"update norm must be <= max-update-norm "
                                     f"{self.max_update_norm:g}; got {norm:.4g}")
        return arrays

    def _cap(self, site: str, claimed: int) -> int:
        registered = self.registered.setdefault(site, min(claimed, self.max_examples_per_site))
        return min(claimed, registered, self.max_examples_per_site)

    @staticmethod
    def _reject(server_round: int, phase: str, site: str, node: int, reason: str) -> Rejection:
        logger.warning("round %d %s: REJECTED reply of %s (node %d): %s", server_round, phase,
                       site, node, reason)
        return Rejection(server_round=server_round, phase=phase, site=site, node=node,
                         reason=reason)


def _one_metric_record(msg: Message) -> Mapping[str, Any]:
    records = msg.content.metric_records
    if len(records) != 1:
        raise UpdateRejected(f"reply must carry exactly one metric record; got {len(records)}")
    return dict(next(iter(records.values())).items())


def _positive_count(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value != int(value) or value < 1:
        raise UpdateRejected(f"{key} must be a whole number >= 1; got {value!r}")
    return int(value)


def _fraction(value: object, key: str, *, allow_nan: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UpdateRejected(f"{key} must be a number in [0, 1]; got {value!r}")
    if math.isnan(value) and allow_nan:
        return
    if not 0 <= value <= 1:
        raise UpdateRejected(f"{key} must be a number in [0, 1]; got {value!r}")


def _shared_keys(metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    """Metric keys every accepted reply has (Flower refuses a round whose replies differ)."""
    if not metrics:
        return []
    return [k for k in metrics[0] if all(k in m for m in metrics[1:])]
