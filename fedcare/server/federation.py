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
from fedcare.common.errors import ConfigError
from fedcare.common.mlp import initial_weights
from fedcare.data.schemas import schema_for
from fedcare.flower_compat import deployment_poller
from fedcare.server.checkpoint import CheckpointWriter
from fedcare.server.node_names import NodeNames
from fedcare.server.personalisation import (
    apply_finetune_privacy,
    format_personalisation,
    personalisation_section,
    run_finetune,
)
from fedcare.server.preflight import (
    Preflight,
    RunRefused,
    SiteGrid,
    remember_outcome,
    run_preflight,
    screen_history,
)
from fedcare.server.report import (
    STATUS_REFUSED,
    RunRecorder,
    format_global,
    format_site_table,
    prefetch_plotting,
    summarize_evaluation,
    write_report,
)
from fedcare.server.resume import (
    RESUME_FILENAME,
    attempt_run_id,
    check_same_run,
    load_state,
    next_attempt,
    restore_strategy,
    save_state,
)
from fedcare.server.site_dp import SiteLevelDP, site_level_epsilon
from fedcare.server.site_registry import SiteRegistry
from fedcare.server.strategies import RecordingStrategy, make_strategy
from fedcare.server.validation import UpdateValidator

logger = logging.getLogger(__name__)


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
            "short": f"site-level eps={epsilon:.3f} at delta={config.site_delta:g} (this run, "
                     f"{rounds} aggregated rounds, {config.accountant.upper()}, one whole site "
                     "added/removed, every site every round: no sampling amplification)"}


def refuse_run(run_dir: Path, recorder: RunRecorder, preflight: Preflight,
               min_sites: int) -> None:
    """Too few sites accepted: write a report that says so (no model) and stop."""
    accepted = preflight.sites()
    why = (f"run: at least min-sites={min_sites} site(s) must accept in pre-flight; got "
           f"{len(accepted)} ({', '.join(accepted) or 'none'})")
    report = recorder.to_dict(final={})
    report["status"] = STATUS_REFUSED
    report["refusal-reason"] = f"{why}; nothing was trained, no model was saved"
    path = write_report(run_dir, report, plots=False)  # nothing trained: nothing to plot
    raise RunRefused(f"{why}; refusals:\n  " + "\n  ".join(preflight.lines())
                     + f"\nreport: {path}", run_dir=run_dir)


def mark_refused(report: dict[str, Any]) -> None:
    """No site trained in any round: say so, with each site's reasons (no model is saved,
    so nothing untrained can be mistaken for a result)."""
    reasons: dict[str, list[str]] = {}
    for rnd in report["rounds"]:
        for failure in rnd["failures"]:
            if failure.get("phase") == "train":
                seen = reasons.setdefault(failure["site"], [])
                if failure["reason"] not in seen:
                    seen.append(failure["reason"])
    report["status"] = STATUS_REFUSED
    report["refusals"] = reasons
    report["refusal-reason"] = (
        f"refused: no site trained in any round ({len(reasons)} site(s) refused or failed); "
        "no model was saved")


def run_federation(grid: Grid, config: RunConfig) -> dict[str, Any]:
    """Train ``config.num_rounds`` rounds; write checkpoints, model, manifest and report."""
    run_name = config.run_name or default_run_name()
    run_dir = Path(config.output_dir) / run_name
    schema = schema_for(config.dataset)
    features = schema.encoded_feature_names()
    if not config.dp_enabled:
        logger.warning("DP is OFF for this run (dp-mode=off): site updates carry no privacy "
                       "guarantee")
    run_config = config.replace(run_name=run_name).to_run_config()
    if not config.resume and (run_dir / RESUME_FILENAME).exists():
        raise ConfigError([f"run: run-name {run_name!r} must be new unless resume = true; got "
                           f"a run folder {run_dir} holding rounds already (nothing is "
                           "overwritten)"])
    resumed = load_state(run_dir) if config.resume else None
    if config.resume and resumed is None and not run_dir.is_dir():
        raise ConfigError([f"resume: run folder {run_dir} must exist to resume run "
                           f"{run_name!r}; got no such folder"])
    attempt = next_attempt(run_dir)
    recorder = RunRecorder(run_name=run_name, run_config=run_config)
    validator = UpdateValidator(max_update_norm=config.max_update_norm,
                                max_examples_per_site=config.max_examples_per_site)
    secagg = config.secure_aggregation == "secaggplus"
    if secagg and config.resume:
        # Flower's SecAgg+ workflow runs its own round loop: fedcare cannot checkpoint it.
        raise ConfigError(["resume: resume must be false with secure-aggregation = "
                           "secaggplus; got true"])
    inner: Strategy | None = None if secagg else make_strategy(config)
    # Keras's initial weights, bit for bit, without importing TensorFlow (common/mlp.py)
    weights = initial_weights(input_dim=len(features), hidden_units=config.hidden_layer_sizes,
                              seed=config.seed)
    done = 0
    if resumed is not None:
        assert inner is not None
        check_same_run(resumed.config, run_config)
        restore_strategy(inner, resumed.strategy_arrays, resumed.strategy)
        recorder.restore(resumed.report)
        validator.restore(resumed.validation)
        weights, done = resumed.weights, resumed.server_round
        logger.warning("resuming run %s (attempt %d) after round %d of %d: sites record "
                       "redone rounds as new privacy spends", run_name, attempt, done,
                       config.num_rounds)
    elif attempt:
        logger.warning("run %s: attempt %d starts from round 1 (no completed round to "
                       "resume from)", run_name, attempt)

    poller = deployment_poller(grid, config.server_poll_interval)
    registry = SiteRegistry.in_output_dir(config.output_dir)
    node_names = NodeNames.in_output_dir(config.output_dir)
    preflight = run_preflight(grid, config, run_name=run_name,
                              ledger_run_id=attempt_run_id(run_name, attempt),
                              rounds=config.num_rounds - done, poller=poller,
                              known_heads=registry.known_heads(),
                              node_history={node: known.label() for node, known
                                            in node_names.known().items()})
    node_names.remember(preflight.deployed_sites_by_node(), run=run_name)
    screen_history(preflight, registry, run_name=run_name,
                   accept_site_resets=config.accept_site_resets)
    recorder.preflight = preflight.to_report()
    recorder.site_of_node.update({n: a.site for n, a in preflight.answers.items()})
    if len(preflight.accepted_nodes) < config.min_sites:
        refuse_run(run_dir, recorder, preflight, config.min_sites)
    prefetch_plotting()  # for the report's plots, while the rounds run
    grid = SiteGrid(grid, preflight.accepted_nodes, poller, min_online=config.min_sites,
                    wait_limit=config.round_timeout)
    checkpoints = CheckpointWriter(run_dir, input_dim=len(features),
                                   hidden_units=config.hidden_layer_sizes, seed=config.seed)

    def on_new_global(server_round: int, arrays: ArrayRecord) -> None:
        checkpoints.save_round(server_round, arrays.to_numpy_ndarrays())

    if inner is None:  # Flower's legacy SecAgg+ workflow; no per-update validation possible
        from fedcare.server.secure_aggregation import run_secaggplus_rounds

        final_weights = run_secaggplus_rounds(
            grid, config, initial=weights, run_name=run_name, recorder=recorder,
            on_new_global=on_new_global, timeout=config.round_timeout)
    else:
        strategy_state = inner

        def on_round_end(server_round: int, arrays: ArrayRecord) -> None:
            save_state(run_dir, server_round=server_round, weights=arrays.to_numpy_ndarrays(),
                       strategy=strategy_state, report=recorder.state(),
                       validation=validator.state(), config=run_config)

        strategy = RecordingStrategy(inner, recorder, on_new_global=on_new_global,
                                     validator=validator, min_sites=config.min_sites,
                                     round_offset=done, on_round_end=on_round_end)

        def round_config() -> ConfigRecord:
            return ConfigRecord({"run-name": run_name, "attempt": attempt,
                                 "ledger-run-id": attempt_run_id(run_name, attempt)})

        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(weights),
                                num_rounds=config.num_rounds - done,
                                timeout=config.round_timeout,
                                train_config=round_config(), evaluate_config=round_config())
        final_weights = result.arrays.to_numpy_ndarrays() if len(result.arrays) else weights
    remember_outcome(preflight, registry, recorder.to_dict(final={})["rounds"],
                     run_name=run_name)
    finetune = run_finetune(grid, config, run_name=run_name, arrays=ArrayRecord(final_weights),
                            recorder=recorder, timeout=config.round_timeout,
                            ledger_run_id=attempt_run_id(run_name, attempt))
    last_eval = next((r.evaluate for r in sorted(recorder.rounds.values(),
                                                 key=lambda r: -r.server_round) if r.evaluate), {})
    trained = any(r.train for r in recorder.rounds.values())
    # Evaluations of a model no site trained are not results: leave them out of "final".
    final = summarize_evaluation(last_eval) if last_eval and trained else {}
    report = recorder.to_dict(final=final)
    if not trained:
        mark_refused(report)
        write_report(run_dir, report, plots=False)  # nothing trained: nothing to plot
        logger.error("run %s: %s", run_name, report["refusal-reason"])
        return report
    report["attempts"] = attempt + 1
    report["resumed-after-round"] = done if resumed is not None else None
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
    logger.info("per-site results (eps run = this run; eps life = lifetime at that site; at "
                "delta):\n%s",
                format_site_table(report))
    logger.info("report written to %s", path)
    return report
