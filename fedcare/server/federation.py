"""One federated run, from initial model to report, as a plain function of a grid and a config."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.server import Grid
from flwr.serverapp.strategy import Strategy

from fedcare import __version__
from fedcare.common.config import RunConfig
from fedcare.common.datasets import schema_for
from fedcare.common.model import build_model, weights_of
from fedcare.server.checkpoint import CheckpointWriter
from fedcare.server.personalisation import (
    apply_finetune_privacy,
    format_personalisation,
    personalisation_section,
    run_finetune,
)
from fedcare.server.report import (
    RunRecorder,
    format_global,
    format_site_table,
    summarize_evaluation,
    write_report,
)
from fedcare.server.site_dp import SiteLevelDP, site_level_epsilon
from fedcare.server.strategies import RecordingStrategy, make_strategy

logger = logging.getLogger(__name__)

# How long the server waits for a round's replies before going on with those it has.
ROUND_TIMEOUT_SECONDS = 600.0


def default_run_name() -> str:
    return datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S")


def site_level_statement(config: RunConfig, rounds: int) -> dict[str, Any]:
    """The whole-run site-level guarantee (server-side clipping and noise)."""
    epsilon = site_level_epsilon(rounds=rounds, noise_multiplier=config.site_noise_multiplier,
                                 delta=config.site_delta, accountant=config.accountant)
    return {"epsilon": epsilon, "delta": config.site_delta, "rounds": rounds,
            "noise-multiplier": config.site_noise_multiplier,
            "clip-norm": config.site_clip_norm, "sites-per-round": config.min_sites,
            "adjacency": "add/remove one site's whole contribution (a removed site counts as a "
                         "zero update, so the denominator stays at sites-per-round)",
            "short": f"site-level eps={epsilon:.3f} at delta={config.site_delta:g} (whole run, "
                     f"{rounds} aggregated rounds, {config.accountant.upper()}, one whole site "
                     "added/removed, every site every round: no sampling amplification)"}


def run_federation(grid: Grid, config: RunConfig) -> dict[str, Any]:
    """Train ``config.num_rounds`` rounds; write checkpoints, model, manifest and report."""
    run_name = config.run_name or default_run_name()
    run_dir = Path(config.output_dir) / run_name
    schema = schema_for(config.dataset)
    features = schema.encoded_feature_names()
    model = build_model(input_dim=len(features), hidden_units=config.hidden_layer_sizes,
                        seed=config.seed)
    if not config.dp_enabled:
        logger.warning("DP is OFF for this run (dp-mode=off): site updates carry no privacy "
                       "guarantee")
    checkpoints = CheckpointWriter(run_dir, model)
    recorder = RunRecorder(run_name=run_name, run_config=config.replace(run_name=run_name)
                           .to_run_config())

    def on_new_global(server_round: int, arrays: ArrayRecord) -> None:
        checkpoints.save_round(server_round, arrays.to_numpy_ndarrays())

    inner: Strategy | None = None
    if config.secure_aggregation == "secaggplus":  # Flower's legacy SecAgg+ workflow
        from fedcare.server.secure_aggregation import run_secaggplus_rounds

        final_weights = run_secaggplus_rounds(
            grid, config, initial=weights_of(model), run_name=run_name, recorder=recorder,
            on_new_global=on_new_global, timeout=ROUND_TIMEOUT_SECONDS)
    else:
        inner = make_strategy(config)
        strategy = RecordingStrategy(inner, recorder, on_new_global=on_new_global)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(weights_of(model)),
                                num_rounds=config.num_rounds, timeout=ROUND_TIMEOUT_SECONDS,
                                train_config=ConfigRecord({"run-name": run_name}),
                                evaluate_config=ConfigRecord({"run-name": run_name}))
        final_weights = (result.arrays.to_numpy_ndarrays() if len(result.arrays)
                         else weights_of(model))
    finetune = run_finetune(grid, config, run_name=run_name, arrays=ArrayRecord(final_weights),
                            recorder=recorder, timeout=ROUND_TIMEOUT_SECONDS)
    last_eval = next((r.evaluate for r in sorted(recorder.rounds.values(),
                                                 key=lambda r: -r.server_round) if r.evaluate), {})
    final = summarize_evaluation(last_eval) if last_eval else {}
    report = recorder.to_dict(final=final)
    if config.personalisation != "none":
        apply_finetune_privacy(report, finetune, recorder)
        report["personalisation"] = personalisation_section(config, report, finetune)
        logger.info("global vs personalised models (held-out rows at each site):\n%s",
                    format_personalisation(report["personalisation"]))
    if isinstance(inner, SiteLevelDP):
        report["site-level-privacy"] = site_level_statement(config, inner.rounds_aggregated)
        logger.info("site-level DP: %s", report["site-level-privacy"]["short"])
    checkpoints.save_final(final_weights, {
        "run": run_name, "fedcare-version": __version__, "dataset": config.dataset,
        "schema": schema.name, "features": list(features),
        "hidden-units": list(config.hidden_layer_sizes),
        "rounds": config.num_rounds,
        "preprocessing": "site-local: each site keeps preprocessor.json in its state dir",
        "privacy": {site: {"epsilon": row.get("epsilon"), "delta": row.get("delta"),
                           "statement": report["privacy"].get(site)}
                    for site, row in report["sites"].items()},
        "site-level-privacy": report.get("site-level-privacy")})
    path = write_report(run_dir, report)
    logger.info("final global model: %s", format_global(final))
    logger.info("per-site results (epsilon = whole run at that site, at delta):\n%s",
                format_site_table(report))
    logger.info("report written to %s", path)
    return report
