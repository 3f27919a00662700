"""The template's ServerApp: Flower's FedAvg from an initial model, for num-rounds."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context
from flwr.server import Grid
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import FedAvg

from fedcare.research.baseline_app.task import load_data, load_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    num_rounds = int(context.run_config.get("num-rounds", 10))  # type: ignore[call-overload]
    input_dim = load_data(0, 1).x_train.shape[1]
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(load_model(input_dim).get_weights()),
                   num_rounds=num_rounds)
