"""SecAgg+ rounds: the server learns only the weighted sum of the site updates.

Flower 1.23 offers SecAgg+ only as the legacy ``SecAggPlusWorkflow`` (inside
``DefaultWorkflow``, driving a legacy ``flwr.server.strategy`` strategy); the Message-API
strategies in ``flwr.serverapp.strategy`` have no secure-aggregation variant. So this
mode runs the legacy workflow with Flower's legacy FedAvg/FedProx, wrapped (not copied)
to record the same per-site metrics and per-round checkpoints as the plain mode; the
rest of the run (model, manifest, report) is shared with
:func:`fedcare.server.federation.run_federation`.

What the server still sees: each site's example count and its metrics (epsilon, loss,
audit hash), in the clear. What it no longer sees: any single site's weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import (
    Context,
    EvaluateRes,
    FitRes,
    MessageType,
    Parameters,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg, FedProx
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from fedcare.common.config import RunConfig
from fedcare.common.formats import CLIPPING_RANGE, MAX_WEIGHT, QUANTIZATION_RANGE
from fedcare.flower_compat.legacy import SECAGG_STAGES, ClientProxy, secaggplus_stage
from fedcare.server.preflight import GridWrapper
from fedcare.server.report import NO_REPLY_REASON, RunRecorder

logger = logging.getLogger(__name__)


def secaggplus_parameters(num_sites: int) -> tuple[int, int]:
    """Every site shares with every other (n shares); any 2/3 of them reconstruct."""
    return num_sites, max(2, math.ceil(2 * num_sites / 3))


class StageGrid(GridWrapper):
    """The run's grid as Flower's SecAgg+ workflow sees it.

    The workflow keeps a dropped site only as an anonymous exception; this records each
    site that fails a stage (an error reply, e.g. the SuperLink's "node unavailable" for a
    dead site, or no reply within the stage's timeout) in the run's report, by site and
    with the stage it missed. Flower's evaluate step waits without a timeout; here every
    exchange waits at most ``timeout`` seconds (the run's round-timeout).
    """

    def __init__(self, grid: Grid, recorder: RunRecorder, timeout: float) -> None:
        super().__init__(grid)
        self._recorder = recorder
        self._timeout = timeout

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        timeout = self._timeout if timeout is None else min(timeout, self._timeout)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        if not messages:
            return replies
        first = messages[0]
        server_round = int(first.metadata.group_id)
        if first.metadata.message_type == MessageType.EVALUATE:
            phase, what = "evaluate", "evaluation"
        else:
            stage = secaggplus_stage(first.content)
            phase, what = "train", f"SecAgg+ {SECAGG_STAGES.get(str(stage), stage)}"
        for reply in replies:
            if reply.has_error():
                self._recorder.record_failure(server_round, phase, reply.metadata.src_node_id,
                                              code=reply.error.code,
                                              reason=f"{what}: {reply.error.reason}")
        self._recorder.record_unanswered(
            server_round, phase, [m.metadata.dst_node_id for m in messages], replies,
            reason=f"{what}: {NO_REPLY_REASON} ({timeout:g} s)")
        return replies


def _fit_message(fitres: FitRes, phase: str) -> Message:
    """A legacy reply as the Message the shared RunRecorder reads."""
    metrics = dict(fitres.metrics)
    site = {"name": str(metrics.pop("site-name", "unknown"))}
    for key in ("audit-hash", "update-sha256", "privacy"):
        if key in metrics:
            site[key] = str(metrics.pop(key))
    numbers = {k: v for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return Message(RecordDict({"metrics": MetricRecord(numbers),  # type: ignore[arg-type]
                               "site": ConfigRecord(site)}),  # type: ignore[arg-type]
                   dst_node_id=0, message_type=phase)


def _recording(base: type[FedAvg]) -> type[FedAvg]:
    class Recording(base):  # type: ignore[valid-type, misc]
        """Legacy strategy that reports replies to the RunRecorder and checkpoints."""

        recorder: RunRecorder
        on_new_global: Callable[[int, ArrayRecord], None]

        def configure_fit(self, server_round: int, parameters: Parameters,
                          client_manager: Any) -> list[tuple[ClientProxy, Any]]:
            self.recorder.start_round(server_round)  # before any stage records a dropout
            return list(super().configure_fit(server_round, parameters, client_manager))

        def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                          failures: list[Any]) -> tuple[Parameters | None, dict[str, Any]]:
            self.recorder.record_replies(server_round, "train",
                                         [_fit_message(r, "train") for _, r in results])
            parameters, metrics = super().aggregate_fit(server_round, results, failures)
            if parameters is None:
                return None, metrics
            # sites send float64 for SecAgg+'s quantisation; the model stays float32
            weights = [w.astype(np.float32) for w in parameters_to_ndarrays(parameters)]
            self.on_new_global(server_round, ArrayRecord(weights))
            return ndarrays_to_parameters(weights), metrics

        def aggregate_evaluate(self, server_round: int,
                               results: list[tuple[ClientProxy, EvaluateRes]],
                               failures: list[Any]) -> tuple[float | None, dict[str, Any]]:
            replies = [_fit_message(FitRes(r.status, Parameters([], ""), r.num_examples,
                                           r.metrics), "evaluate") for _, r in results]
            self.recorder.record_replies(server_round, "evaluate", replies)
            self.recorder.end_round(server_round)
            return super().aggregate_evaluate(server_round, results, failures)

    return Recording


def run_secaggplus_rounds(grid: Grid, config: RunConfig, *, initial: list[np.ndarray],
                          run_name: str, recorder: RunRecorder,
                          on_new_global: Callable[[int, ArrayRecord], None],
                          timeout: float) -> list[np.ndarray]:
    """``config.num_rounds`` SecAgg+ rounds; returns the final global weights."""
    round_config = {"run-name": run_name, "proximal-mu": config.proximal_mu
                    if config.strategy == "fedprox" else 0.0}
    common: dict[str, Any] = {
        "fraction_fit": config.fraction_train, "fraction_evaluate": 1.0,
        "min_fit_clients": config.min_sites, "min_evaluate_clients": config.min_sites,
        "min_available_clients": config.min_sites,
        "initial_parameters": ndarrays_to_parameters(initial),
        "on_fit_config_fn": lambda rnd: {**round_config, "server-round": rnd},
        "on_evaluate_config_fn": lambda rnd: {**round_config, "server-round": rnd},
        "fit_metrics_aggregation_fn": lambda _: {},
        "evaluate_metrics_aggregation_fn": lambda _: {}}
    strategy_class = _recording(FedProx if config.strategy == "fedprox" else FedAvg)
    extra: dict[str, Any] = ({"proximal_mu": config.proximal_mu}
                             if config.strategy == "fedprox" else {})
    strategy: Any = strategy_class(**common, **extra)
    strategy.recorder = recorder
    strategy.on_new_global = on_new_global
    shares, threshold = secaggplus_parameters(config.min_sites)
    logger.info("SecAgg+: %d shares, reconstruction threshold %d, clipping range %g, "
                "%d quantisation levels", shares, threshold, CLIPPING_RANGE, QUANTIZATION_RANGE)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=shares, reconstruction_threshold=threshold, max_weight=MAX_WEIGHT,
        clipping_range=CLIPPING_RANGE, quantization_range=QUANTIZATION_RANGE,
        timeout=timeout))
    context = LegacyContext(
        context=Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                        run_config={}),
        config=ServerConfig(num_rounds=config.num_rounds, round_timeout=timeout),
        strategy=strategy)
    workflow(StageGrid(grid, recorder, timeout), context)
    from fedcare.flower_compat.legacy import MAIN_PARAMS_RECORD

    return context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
