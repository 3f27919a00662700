"""fedcare ServerApp: the consortium's coordinator. Thin: parse config once, run the federation."""

from __future__ import annotations

from logging import ERROR, INFO
from pathlib import Path

from flwr.app import Context
from flwr.common import log
from flwr.server import Grid
from flwr.serverapp import ServerApp

from fedcare.common.config import RunConfig
from fedcare.server.federation import run_federation
from fedcare.server.preflight import RunRefused
from fedcare.server.report import STATUS_REFUSED
from fedcare.server.summary import SUMMARY_FILENAME

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_mapping(context.run_config)
    try:
        report = run_federation(grid, config)
    except RunRefused as refused:
        if refused.run_dir is None:  # not a pre-flight verdict: a fault, Flower reports it
            raise
        # A refusal is the run's result, not a crash: the reasons and the report, then a
        # normal end (no traceback, no Flower exit code 201); summary.txt says "refused".
        log(ERROR, "\n%s\n\n%s", refused, (refused.run_dir / SUMMARY_FILENAME).read_text())
        return
    run_dir = Path(config.output_dir) / str(report["run"])
    # through Flower's logger: the operator's `flwr run --stream` shows it
    log(ERROR if report.get("status") == STATUS_REFUSED else INFO, "\n%s",
        (run_dir / SUMMARY_FILENAME).read_text())
