"""fedcare ServerApp: the consortium's coordinator. Thin: parse config once, run the federation."""

from __future__ import annotations

from flwr.app import Context
from flwr.server import Grid
from flwr.serverapp import ServerApp

from fedcare.common.config import RunConfig
from fedcare.server.federation import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_mapping(context.run_config)
    run_federation(grid, config)
