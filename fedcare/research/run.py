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

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError
from fedcare.common.files import write_json_atomic
from fedcare.data.site_check import preflight_simulation
from fedcare.flower_compat.simulation import FAST_POLL_SECONDS, run_engine
from fedcare.server.federation import default_run_name
from fedcare.server.report import REPORT_FILENAME, STATUS_REFUSED
from fedcare.site.faults import SIMULATION_ENV

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# One TensorFlow thread pool per virtual-site worker: 2 workers on 2 cores do not fight.
_WORKER_ENV = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
               "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def simulation_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def ray_backend_config(workers: int | None = None) -> dict[str, Any]:
    """One CPU per virtual-site worker, ``workers`` workers (default: one per core)."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": workers or simulation_workers(), "include_dashboard": False,
                      "logging_level": logging.WARNING, "log_to_driver": True},
    }


def run_simulation(config: RunConfig, *, num_sites: int, workers: int | None = None,
                   poll_seconds: float = FAST_POLL_SECONDS, audit: bool = True
                   ) -> dict[str, Any]:
    """Simulate ``num_sites`` sites; return the run report (also written to the run dir)."""
    from fedcare.server.app import app as server_app
    from fedcare.site.app import app as client_app

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
    for key, value in _WORKER_ENV.items():
        os.environ.setdefault(key, value)
    # Lets virtual sites accept malicious-sites / fail-sites (refused anywhere else).
    os.environ[SIMULATION_ENV] = "1"
    backend_config = ray_backend_config(workers)
    logger.info("simulating %d sites (%s), %d rounds, run %s", num_sites, config.dataset,
                config.num_rounds, config.run_name)
    with _refusal_is_a_result(run_dir / REPORT_FILENAME):
        run_engine(client_app=client_app, server_app=server_app, num_sites=num_sites,
                   run_config=config.to_run_config(), backend_config=backend_config,
                   app_dir=str(PROJECT_ROOT), poll_seconds=poll_seconds)
    report_path = run_dir / REPORT_FILENAME
    if not report_path.is_file():
        raise RuntimeError(f"simulation finished without a report at {report_path}; "
                           "see the log above for the server's error")
    from fedcare.research.audit import SITES_KEY, audit_run

    report = dict(json.loads(report_path.read_text()))
    report[SITES_KEY] = num_sites  # so a later `fedcare audit` uses the run's own sites
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

