"""Flower strategies, wrapped (not copied) so fedcare sees every reply of every round.

:class:`RecordingStrategy` delegates all decisions to the wrapped Flower strategy
and adds what a consortium needs: per-site metrics and refusals recorded for the
report, and the global model checkpointed after every aggregation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

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

logger = logging.getLogger(__name__)

WEIGHT_KEY = "num-examples"


def aggregate_train_metrics(replies: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """What Flower logs after a training round. Epsilon is never averaged across sites:
    only the largest site's whole-run figure is given, under a name that says so."""
    metrics = [next(iter(r.metric_records.values())) for r in replies]
    out: dict[str, Any] = {
        "sites": len(metrics),
        WEIGHT_KEY: int(sum(_number(m[WEIGHT_KEY]) for m in metrics))}
    epsilons = [_number(m["epsilon"]) for m in metrics if "epsilon" in m]
    if epsilons:
        out["epsilon-of-most-spent-site"] = max(epsilons)
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
    """Delegate to ``inner``; record every reply; checkpoint every new global model."""

    def __init__(self, inner: Strategy, recorder: RunRecorder,
                 on_new_global: Callable[[int, ArrayRecord], None]) -> None:
        self.inner = inner
        self.recorder = recorder
        self.on_new_global = on_new_global

    def summary(self) -> None:
        logger.info("fedcare recording wrapper around %s", type(self.inner).__name__)
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.recorder.start_round(server_round)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.recorder.record_replies(server_round, "train", replies)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is None:
            logger.warning("round %d: no update was aggregated; the global model is unchanged",
                           server_round)
        else:
            self.on_new_global(server_round, arrays)
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        replies = list(replies)
        self.recorder.record_replies(server_round, "evaluate", replies)
        metrics = self.inner.aggregate_evaluate(server_round, replies)
        self.recorder.end_round(server_round)
        return metrics
