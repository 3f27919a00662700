"""The shared diagnosis model: a small Keras MLP with a sigmoid risk output.

TensorFlow is imported here and nowhere in the data or privacy layers, so tools
that only validate CSVs or read ledgers start fast.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

NDArrays = list[np.ndarray]


def build_model(*, input_dim: int, hidden_units: Sequence[int], seed: int) -> tf.keras.Sequential:
    """Dense(h1, relu) ... Dense(1, sigmoid). Weights are initialised from ``seed``.

    Every trainable layer is a ``Dense`` layer: the DP trainer relies on that to
    compute exact per-example gradient norms (see ``fedcare.site.training``).
    """
    if input_dim < 1:
        raise ValueError(f"model: input_dim must be >= 1; got {input_dim}")
    layers: list[tf.keras.layers.Layer] = [tf.keras.Input(shape=(input_dim,), name="features")]
    for i, units in enumerate(hidden_units):
        layers.append(tf.keras.layers.Dense(
            units, activation="relu", name=f"hidden_{i}",
            kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed + i)))
    layers.append(tf.keras.layers.Dense(
        1, activation="sigmoid", name="risk",
        kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed + len(hidden_units))))
    model = tf.keras.Sequential(layers, name="fedcare_mlp")
    # A sum-reduced loss is what tf-privacy's fast clipping expects; fedcare's own
    # training loop does not use compile() at all.
    model.compile(loss=tf.keras.losses.BinaryCrossentropy(reduction="sum"))
    return model


def weights_of(model: tf.keras.Model) -> NDArrays:
    return [np.asarray(w) for w in model.get_weights()]


def check_compatible(model: tf.keras.Model, weights: Sequence[np.ndarray]) -> None:
    """Raise ``ValueError`` unless ``weights`` match the model's arrays in count and shape."""
    expected = [tuple(w.shape) for w in model.get_weights()]
    got = [tuple(np.shape(w)) for w in weights]
    if expected != got:
        raise ValueError(f"model: weights must have shapes {expected}; got {got}")
