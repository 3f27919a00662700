"""Run N virtual hospital sites on Flower's simulation engine, in this process.

The ServerApp and ClientApp are the very objects ``flwr run .`` loads; settings reach
them the same way (``pyproject.toml`` defaults fused with overrides), so a simulation
exercises the production code path.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedcare.common.config import SIMULATION_ENV, RunConfig
from fedcare.common.errors import ConfigError
from fedcare.common.files import write_json_atomic
from fedcare.data.site_check import preflight_simulation
from fedcare.flower_compat import CLIENTAPP_COMPONENT
from fedcare.flower_compat.simulation import FAST_POLL_SECONDS, AppByName, run_engine
from fedcare.research.cluster import EngineConfig, engine_session, local_workers
from fedcare.research.terminal import RunBar, RunLog, tame_flower
from fedcare.server.federation import default_run_name
from fedcare.server.report import REPORT_FILENAME, STATUS_REFUSED

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Report key: where the run's site messages ran (Ray address, nodes, messages per node).
ENGINE_KEY = "engine"


def simulation_workers() -> int:
    return local_workers()


def ray_backend_config(workers: int | None = None) -> dict[str, Any]:
    """Flower's own backend config for a private local Ray (the Flower template app of
    ``fedcare perf``, which runs on Flower's unmodified engine)."""
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": workers or local_workers(), "include_dashboard": False,
                          "logging_level": logging.WARNING, "log_to_driver": False,
                          "address": "local"}}


def run_simulation(config: RunConfig, *, num_sites: int, workers: int | None = None,
                   poll_seconds: float = FAST_POLL_SECONDS, audit: bool = True,
                   engine: EngineConfig | None = None, keep_bar: bool = True
                   ) -> dict[str, Any]:
    """Simulate ``num_sites`` sites; return the run report (also written to the run dir).

    The engine is the open :func:`engine_session` (a sweep's), else one started for
    this run from ``engine`` (default: a private local Ray with ``workers`` CPUs). Its
    log records go to ``run.log`` in the run folder; with a research display open, a
    progress bar shows the rounds (``keep_bar=False`` removes it when the run ends).
    """
    run_log = RunLog()
    try:
        return _simulate(config, num_sites=num_sites, workers=workers,
                         poll_seconds=poll_seconds, audit=audit, engine=engine,
                         run_log=run_log, keep_bar=keep_bar)
    finally:
        run_log.close()


def _simulate(config: RunConfig, *, num_sites: int, workers: int | None, poll_seconds: float,
              audit: bool, engine: EngineConfig | None, run_log: RunLog, keep_bar: bool
              ) -> dict[str, Any]:
    from fedcare.server.app import app as server_app

    # by name: the sites' code (and TensorFlow) is imported in the workers, not here
    client_app = AppByName.of(CLIENTAPP_COMPONENT)
    tame_flower()

    if num_sites < max(1, config.min_sites):
        raise ConfigError([f"simulation: sites must be >= min-sites ({config.min_sites}); "
                           f"got {num_sites}"])
    if not (PROJECT_ROOT / "pyproject.toml").is_file():
        raise ConfigError([f"simulation: needs the fedcare project folder (pyproject.toml) at "
                           f"{PROJECT_ROOT}; install fedcare in editable mode"])
    if not config.run_name:
        config = config.replace(run_name=default_run_name())
    run_dir = Path(config.output_dir) / config.run_name
    if run_dir.exists() and not config.resume:
        # Its report, model and (virtual) sites' ledgers belong to an earlier run.
        raise ConfigError([f"simulation: run folder {run_dir} exists already; choose another "
                           "run-name or output-dir, or resume it (nothing is overwritten)"])
    if config.resume and not run_dir.is_dir():
        raise ConfigError([f"simulation: resume needs the run folder {run_dir}; got no such "
                           "folder"])
    # Every site's file is read and checked here, before the engine starts: a missing or
    # broken file fails with its own message, and each site's data quality is logged once.
    preflight_simulation(config, num_sites)
    # Lets virtual sites accept malicious-sites / fail-sites (refused anywhere else); the
    # site workers get it through their runtime environment (research.cluster).
    os.environ[SIMULATION_ENV] = "1"
    if engine is None and workers is not None:
        engine = EngineConfig(workers=workers)
    logger.info("simulating %d sites (%s), %d rounds, run %s", num_sites, config.dataset,
                config.num_rounds, config.run_name)
    run_log.open(run_dir)
    bar = RunBar(f"run {config.run_name}", rounds=config.num_rounds, sites=num_sites,
                 delta=config.delta if config.dp_enabled else None, keep=keep_bar)
    with engine_session(engine) as session:
        session.check_shared_folder(Path(config.state_dir or config.output_dir))
        with session.run(bar.on_reply) as backend_config, \
                _refusal_is_a_result(run_dir / REPORT_FILENAME):
            run_engine(client_app=client_app, server_app=server_app, num_sites=num_sites,
                       run_config=config.to_run_config(), backend_config=backend_config,
                       app_dir=str(PROJECT_ROOT), poll_seconds=poll_seconds)
        placement = session.placement()
    bar.finish()
    report_path = run_dir / REPORT_FILENAME
    if not report_path.is_file():
        raise RuntimeError(f"simulation finished without a report at {report_path}; "
                           "see the log above for the server's error")
    from fedcare.research.audit import SITES_KEY, audit_run

    report = dict(json.loads(report_path.read_text()))
    report[SITES_KEY] = num_sites  # so a later `fedcare audit` uses the run's own sites
    report[ENGINE_KEY] = placement
    write_json_atomic(report_path, report)
    if not audit or report.get("status") == STATUS_REFUSED:  # a refused run trained nothing
        return report
    # Virtual sites' data is at hand here, so each site's membership audit joins the report.
    return audit_run(run_dir, num_sites=num_sites)


@contextmanager
def _refusal_is_a_result(report_path: Path) -> Iterator[None]:
    """A run every site refused in pre-flight ends the ServerApp with ``RunRefused``, which
    Flower's simulation re-raises as a bare RuntimeError; its report says "refused"."""
    try:
        yield
    except RuntimeError:
        if not (report_path.is_file() and
                json.loads(report_path.read_text()).get("status") == STATUS_REFUSED):
            raise

