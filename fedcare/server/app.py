"""fedcare ServerApp: the consortium's coordinator. Thin: parse config once, run the federation."""

from __future__ import annotations

from logging import INFO
from pathlib import Path

from flwr.app import Context
from flwr.common import log
from flwr.server import Grid
from flwr.serverapp import ServerApp

from fedcare.common.config import RunConfig
from fedcare.server.federation import run_federation
from fedcare.server.summary import SUMMARY_FILENAME

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_mapping(context.run_config)
    report = run_federation(grid, config)
    run_dir = Path(config.output_dir) / str(report["run"])
    # through Flower's logger: the operator's `flwr run --stream` shows it
    log(INFO, "\n%s", (run_dir / SUMMARY_FILENAME).read_text())
