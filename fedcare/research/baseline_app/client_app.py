"""The template's ClientApp: build, compile, load, fit (or evaluate), reply."""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcare.research.baseline_app.task import SETTINGS, load_data, load_model

app = ClientApp()


def _model_and_data(msg: Message, context: Context) -> tuple[Any, Any]:
    """As the template does it: load the partition, build and compile, set the weights."""
    data = load_data(int(context.node_config["partition-id"]),
                     int(context.node_config["num-partitions"]))
    model = load_model(data.x_train.shape[1])
    model.set_weights(msg.content.array_records["arrays"].to_numpy_ndarrays())
    return model, data


@app.train()
def train(msg: Message, context: Context) -> Message:
    model, data = _model_and_data(msg, context)
    history = model.fit(data.x_train, data.y_train, epochs=SETTINGS["local-epochs"],
                        batch_size=SETTINGS["batch-size"], verbose=0)
    metrics: dict[str, Any] = {"train_loss": float(history.history["loss"][-1]),
                               "num-examples": len(data.y_train)}
    content = RecordDict({"arrays": ArrayRecord(model.get_weights()),
                          "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    model, data = _model_and_data(msg, context)
    loss, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    metrics: dict[str, Any] = {"eval_loss": float(loss), "eval_acc": float(accuracy),
                               "num-examples": len(data.y_test)}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
