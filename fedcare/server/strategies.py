"""Flower strategies, wrapped (not copied) so fedcare sees every reply of every round.

:class:`RecordingStrategy` delegates all decisions to the wrapped Flower strategy
and adds what a consortium needs: per-site metrics and refusals recorded for the
report, and the global model checkpointed after every aggregation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.server import Grid
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from fedcare.common.config import RunConfig
from fedcare.server.report import RunRecorder, summarize_evaluation
from fedcare.server.site_dp import UNIT_WEIGHT_KEY, SiteLevelDP
from fedcare.server.validation import UpdateValidator

logger = logging.getLogger(__name__)

WEIGHT_KEY = "num-examples"


def aggregate_train_metrics(replies: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """What Flower logs after a training round. Epsilon is never averaged across sites:
    only the largest site's lifetime figure is given, under a name that says so."""
    metrics = [next(iter(r.metric_records.values())) for r in replies]
    out: dict[str, Any] = {
        "sites": len(metrics),
        WEIGHT_KEY: int(sum(_number(m[WEIGHT_KEY]) for m in metrics))}
    epsilons = [_number(m["epsilon"]) for m in metrics if "epsilon" in m]
    if epsilons:
        out["epsilon-lifetime-most-spent-site"] = max(epsilons)
    return MetricRecord(out)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric must be a number; got {value!r}")
    return float(value)


def aggregate_evaluate_metrics(replies: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    per_site = {str(i): dict(next(iter(r.metric_records.values())).items())
                for i, r in enumerate(replies)}
    return MetricRecord(summarize_evaluation(per_site))  # type: ignore[arg-type]


def make_strategy(config: RunConfig) -> Strategy:
    """The Flower strategy named by ``config.strategy``, with fedcare's metric aggregation;
    wrapped in site-level DP (equal site weights) when ``config.site_dp``."""
    common: dict[str, Any] = {
        "fraction_train": config.fraction_train, "fraction_evaluate": 1.0,
        "min_train_nodes": config.min_sites, "min_evaluate_nodes": config.min_sites,
        "min_available_nodes": config.min_sites,
        "weighted_by_key": UNIT_WEIGHT_KEY if config.site_dp else WEIGHT_KEY,
        "train_metrics_aggr_fn": aggregate_train_metrics,
        "evaluate_metrics_aggr_fn": aggregate_evaluate_metrics,
    }
    factories: dict[str, Callable[[], Strategy]] = {
        "fedavg": lambda: FedAvg(**common),
        "fedprox": lambda: FedProx(proximal_mu=config.proximal_mu, **common),
        "fedadam": lambda: FedAdam(eta=config.server_learning_rate, **common),
        "fedyogi": lambda: FedYogi(eta=config.server_learning_rate, **common),
        "fedmedian": lambda: FedMedian(**common),
        "fedtrimmedavg": lambda: FedTrimmedAvg(beta=config.trimmed_beta, **common),
        "krum": lambda: Krum(num_malicious_nodes=config.krum_byzantine, **common),
    }
    inner = factories[config.strategy]()
    if not config.site_dp:
        return inner
    return SiteLevelDP(inner, noise_multiplier=config.site_noise_multiplier,
                       clipping_norm=config.site_clip_norm, num_sampled_clients=config.min_sites)


class RecordingStrategy(Strategy):
    """Delegate to ``inner``; screen and record every reply; checkpoint every new global model.

    ``validator`` screens replies before ``inner`` sees them (see
    :mod:`fedcare.server.validation`); a round is aggregated only when at least
    ``min_sites`` updates were accepted. ``round_offset`` shifts Flower's round numbers
    (which restart at 1 in every ``start``) to the run's, so a resumed run goes on from
    the round after its last checkpoint; ``on_round_end`` gets each completed round's
    global model (the one just evaluated).
    """

    def __init__(self, inner: Strategy, recorder: RunRecorder,
                 on_new_global: Callable[[int, ArrayRecord], None], *,
                 validator: UpdateValidator | None = None, min_sites: int = 1,
                 round_offset: int = 0,
                 on_round_end: Callable[[int, ArrayRecord], None] | None = None) -> None:
        self.inner = inner
        self.recorder = recorder
        self.on_new_global = on_new_global
        self.validator = validator
        self.min_sites = min_sites
        self.round_offset = round_offset
        self.on_round_end = on_round_end
        self._evaluated: ArrayRecord | None = None
        self._global: list[np.ndarray] = []
        self._names: list[str] = []
        self._sent: dict[tuple[int, str], set[int]] = {}

    def summary(self) -> None:
        logger.info("fedcare recording wrapper around %s", type(self.inner).__name__)
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self.recorder.start_round(server_round)
        self._names = list(arrays.keys())
        self._global = arrays.to_numpy_ndarrays()
        return self._remember(server_round, "train",
                              self.inner.configure_train(server_round, arrays, config, grid))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        replies = self._screen(server_round, "train", list(replies))
        self.recorder.record_replies(server_round, "train", replies)
        accepted = sum(1 for m in replies if not m.has_error())
        if accepted < self.min_sites:
            logger.warning("round %d: %d accepted update(s), fewer than min-sites=%d: not "
                           "aggregated; the global model is unchanged", server_round, accepted,
                           self.min_sites)
            return None, None
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is None:
            logger.warning("round %d: no update was aggregated; the global model is unchanged",
                           server_round)
        else:
            self.on_new_global(server_round, arrays)
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self._evaluated = arrays
        return self._remember(server_round, "evaluate",
                              self.inner.configure_evaluate(server_round, arrays, config, grid))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        server_round += self.round_offset
        replies = self._screen(server_round, "evaluate", list(replies))
        self.recorder.record_replies(server_round, "evaluate", replies)
        metrics = (self.inner.aggregate_evaluate(server_round, replies)
                   if any(not m.has_error() for m in replies) else None)
        self.recorder.end_round(server_round)
        if self.on_round_end is not None and self._evaluated is not None:
            self.on_round_end(server_round, self._evaluated)  # the round is complete
        return metrics

    def _remember(self, server_round: int, phase: str, messages: Iterable[Message]
                  ) -> list[Message]:
        messages = list(messages)
        self._sent[(server_round, phase)] = {m.metadata.dst_node_id for m in messages}
        return messages

    def _screen(self, server_round: int, phase: str, replies: list[Message]) -> list[Message]:
        """Name the sites that did not reply in time; drop replies that fail validation."""
        self.recorder.record_unanswered(server_round, phase,
                                        self._sent.pop((server_round, phase), set()), replies)
        if self.validator is None:
            return replies
        screened = (self.validator.screen_train(server_round, replies, self._global, self._names)
                    if phase == "train" else
                    self.validator.screen_evaluate(server_round, replies))
        self.recorder.record_rejections(server_round, screened.rejections, screened.capped,
                                        screened.norms)
        return screened.replies
