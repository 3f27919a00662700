"""Model and data, as the template's ``task.py`` has them (rebuilt on every call)."""

from __future__ import annotations

from typing import Any

SETTINGS: dict[str, Any] = {"dataset": "breast-cancer", "partitioning": "iid", "split-seed": 43,
                            "test-fraction": 0.25, "batch-size": 32, "learning-rate": 0.1,
                            "local-epochs": 1, "clip-norm": 1.0, "noise-multiplier": 1.0,
                            "hidden-units": (64, 32), "seed": 0}


def load_model(input_dim: int, *, dp: bool = True) -> Any:
    import tensorflow as tf

    from fedcare.common.model import build_model

    model = build_model(input_dim=input_dim, hidden_units=SETTINGS["hidden-units"],
                        seed=SETTINGS["seed"])
    if dp:
        from tensorflow_privacy import DPKerasSGDOptimizer

        optimizer = DPKerasSGDOptimizer(l2_norm_clip=SETTINGS["clip-norm"],
                                        noise_multiplier=SETTINGS["noise-multiplier"],
                                        learning_rate=SETTINGS["learning-rate"])
        loss = tf.keras.losses.BinaryCrossentropy(reduction=tf.keras.losses.Reduction.NONE)
    else:
        optimizer = tf.keras.optimizers.SGD(SETTINGS["learning-rate"])
        loss = tf.keras.losses.BinaryCrossentropy()
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return model


def load_data(partition_id: int, num_partitions: int) -> Any:
    from fedcare.data.datasets import load_federated_site

    return load_federated_site(
        dataset=SETTINGS["dataset"], partition_id=partition_id, num_partitions=num_partitions,
        partitioning=SETTINGS["partitioning"], data_dir="", split_seed=SETTINGS["split-seed"],
        test_fraction=SETTINGS["test-fraction"], dirichlet_alpha=0.5, partition_seed=0)
