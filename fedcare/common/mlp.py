"""The shared diagnosis model without TensorFlow: its weight shapes, its initial weights
and its ``.keras`` file, for processes that never train (the consortium's ServerApp).

TensorFlow 2.15 costs a process ~480 MB of memory just to import. The coordinator only
needs three things from the model, all reproduced here with numpy (and h5py, which
TensorFlow itself depends on):

* the shapes of the arrays of :func:`fedcare.common.model.build_model`
  (:func:`weight_shapes`);
* its initial weights, **bit for bit** what Keras 2.15 draws (:func:`initial_weights`):
  ``GlorotUniform(seed)`` uses TensorFlow's stateless uniform generator, i.e. the
  Philox-4x32-10 counter-based generator with TensorFlow's seed scrambling, reproduced
  below; ``tests/test_mlp.py`` compares against Keras for several shapes and seeds;
* a Keras v3 ``.keras`` file of given weights (:func:`write_keras_file`): a zip of
  ``metadata.json``, ``config.json`` (the model's architecture, as Keras writes it) and
  ``model.weights.h5``, which ``tf.keras.models.load_model`` reads like one Keras wrote
  (tested: same config, same weights, same predictions).

Processes that only score rows with a finished model (the membership audit after a
simulation) read that file back (:func:`read_keras_file`: JSON and HDF5 numbers, nothing
executed) and compute the model's risk with numpy (:func:`predict`: Keras's predictions
up to float32 rounding, tested).

The site trains with :mod:`fedcare.common.model` (TensorFlow); both sides agree on the
model through the tests, not through a shared import.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import zipfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.common.errors import ModelMismatch

#: The Keras release whose file format and initialiser this module reproduces.
KERAS_VERSION = "2.15.0"
MODEL_NAME = "fedcare_mlp"
INPUT_NAME = "features"
OUTPUT_NAME = "risk"
FLOAT = "float32"
_METADATA = "metadata.json"
_CONFIG = "config.json"
_WEIGHTS = "model.weights.h5"

# Philox-4x32-10 (Salmon et al. 2011) as TensorFlow implements it
# (tensorflow/core/lib/random/philox_random.h, stateless_random_ops.cc).
_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = 0x9E3779B9
_W1 = 0xBB67AE85
_ROUNDS = 10
_MASK32 = 0xFFFFFFFF
#: TensorFlow's fixed key for scrambling a stateless seed into a key and counter.
_SCRAMBLE_KEY = (0x3EC8F720, 0x02461E29)
_MANTISSA = np.uint32(0x7FFFFF)
_ONE = np.uint32(127 << 23)


def weight_shapes(input_dim: int, hidden_units: Sequence[int]) -> list[tuple[int, ...]]:
    """The shapes of ``build_model(...).get_weights()``: kernel, bias per Dense layer."""
    if input_dim < 1:
        raise ValueError(f"model: input_dim must be >= 1; got {input_dim}")
    sizes = [input_dim, *hidden_units, 1]
    shapes: list[tuple[int, ...]] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        shapes += [(fan_in, fan_out), (fan_out,)]
    return shapes


def check_shapes(input_dim: int, hidden_units: Sequence[int],
                 weights: Sequence[np.ndarray]) -> None:
    """Raise ``ValueError`` unless ``weights`` match the model's arrays in count and shape."""
    expected = weight_shapes(input_dim, hidden_units)
    got = [tuple(np.shape(w)) for w in weights]
    if expected != got:
        raise ValueError(f"model: weights must have shapes {expected}; got {got}")


def _philox(counters: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox-4x32-10 of each row of ``counters`` (uint32, shape (n, 4)) under ``key``."""
    c = counters.astype(np.uint64)
    k0, k1 = key
    for _ in range(_ROUNDS):
        p0 = _M0 * c[:, 0]
        p1 = _M1 * c[:, 2]
        c = np.stack([(p1 >> np.uint64(32)) ^ c[:, 1] ^ np.uint64(k0),
                      p1 & np.uint64(_MASK32),
                      (p0 >> np.uint64(32)) ^ c[:, 3] ^ np.uint64(k1),
                      p0 & np.uint64(_MASK32)], axis=1)
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return c.astype(np.uint32)


def _stateless_uniform(count: int, seed: tuple[int, int]) -> np.ndarray:
    """``tf.random.stateless_uniform([count], seed)`` in [0, 1), float32 (Philox on CPU)."""
    s0, s1 = (int(s) & 0xFFFFFFFFFFFFFFFF for s in seed)
    start = np.array([[s0 & _MASK32, s0 >> 32, s1 & _MASK32, s1 >> 32]], dtype=np.uint32)
    mix = _philox(start, _SCRAMBLE_KEY)[0]
    key = (int(mix[0]), int(mix[1]))
    # 128-bit counter (mix[2], mix[3] in the high words) + block number
    blocks = np.arange(-(-count // 4), dtype=np.uint64)
    counters = np.zeros((blocks.size, 4), dtype=np.uint64)
    counters[:, 0] = blocks & np.uint64(_MASK32)
    counters[:, 1] = blocks >> np.uint64(32)
    counters[:, 2] = int(mix[2])
    counters[:, 3] = int(mix[3])
    bits = _philox(counters, key).reshape(-1)[:count]
    return ((bits & _MANTISSA) | _ONE).view(np.float32) - np.float32(1.0)


def glorot_uniform(shape: tuple[int, int], seed: int) -> np.ndarray:
    """``tf.keras.initializers.GlorotUniform(seed=seed)(shape)``, bit for bit (Keras 2.15:
    limit ``sqrt(6 / (fan_in + fan_out))``, stateless seed ``[seed, 0]``)."""
    fan_in, fan_out = shape
    limit = np.float32(math.sqrt(3.0 * (1.0 / max(1.0, (fan_in + fan_out) / 2.0))))
    low, high = -limit, limit
    draws = _stateless_uniform(fan_in * fan_out, (seed, 0))
    return (draws * (high - low) + low).astype(np.float32).reshape(shape)


def initial_weights(*, input_dim: int, hidden_units: Sequence[int],
                    seed: int) -> list[np.ndarray]:
    """``weights_of(build_model(input_dim=..., hidden_units=..., seed=...))`` without
    TensorFlow: Glorot-uniform kernels (layer ``i`` seeded ``seed + i``), zero biases."""
    out: list[np.ndarray] = []
    for i, shape in enumerate(weight_shapes(input_dim, hidden_units)[::2]):
        out += [glorot_uniform((shape[0], shape[1]), seed + i),
                np.zeros(shape[1], dtype=np.float32)]
    return out


def _registered(module: str, class_name: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"module": module, "class_name": class_name, "config": config,
            "registered_name": None}


def keras_config(*, input_dim: int, hidden_units: Sequence[int], seed: int) -> dict[str, Any]:
    """The ``config.json`` Keras 2.15 writes for ``build_model(...)``."""
    layers = [_registered("keras.layers", "InputLayer", {
        "batch_input_shape": [None, input_dim], "dtype": FLOAT, "sparse": False,
        "ragged": False, "name": INPUT_NAME})]
    sizes = [input_dim, *hidden_units, 1]
    names = [f"hidden_{i}" for i in range(len(hidden_units))] + [OUTPUT_NAME]
    for i, name in enumerate(names):
        dense = _registered("keras.layers", "Dense", {
            "name": name, "trainable": True, "dtype": FLOAT, "units": sizes[i + 1],
            "activation": "sigmoid" if name == OUTPUT_NAME else "relu", "use_bias": True,
            "kernel_initializer": _registered("keras.initializers", "GlorotUniform",
                                              {"seed": seed + i}),
            "bias_initializer": _registered("keras.initializers", "Zeros", {}),
            "kernel_regularizer": None, "bias_regularizer": None,
            "activity_regularizer": None, "kernel_constraint": None,
            "bias_constraint": None})
        dense["build_config"] = {"input_shape": [None, sizes[i]]}
        layers.append(dense)
    model = _registered("keras", "Sequential", {"name": MODEL_NAME, "layers": layers})
    model["build_config"] = {"input_shape": [None, input_dim]}
    model["compile_config"] = {
        "optimizer": "rmsprop",
        "loss": _registered("keras.losses", "BinaryCrossentropy", {
            "reduction": "sum", "name": "binary_crossentropy", "from_logits": False,
            "label_smoothing": 0.0, "axis": -1, "fn": "binary_crossentropy"}),
        "metrics": None, "loss_weights": None, "weighted_metrics": None,
        "run_eagerly": None, "steps_per_execution": None, "jit_compile": None}
    return model


def _layer_group(index: int) -> str:
    """Where Keras 2.15's saving library puts Dense layer ``index``'s arrays."""
    return f"layers/{'dense' if index == 0 else f'dense_{index}'}/vars"


def _weights_h5(weights: Sequence[np.ndarray]) -> bytes:
    """``model.weights.h5`` as Keras 2.15's saving library lays it out: one group per
    Dense layer (``dense``, ``dense_1``, ...), the optimizer's iteration count (0: the
    model is compiled, never fitted) and an empty top-level ``vars``."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        for i in range(len(weights) // 2):
            group = h5.create_group(_layer_group(i))
            group.create_dataset("0", data=np.asarray(weights[2 * i], dtype=np.float32))
            group.create_dataset("1", data=np.asarray(weights[2 * i + 1], dtype=np.float32))
        h5.create_group("optimizer/vars").create_dataset("0", data=np.int64(0))
        h5.create_group("vars")
    return buffer.getvalue()


def write_keras_file(path: Path, weights: Sequence[np.ndarray], *, input_dim: int,
                     hidden_units: Sequence[int], seed: int) -> Path:
    """The model with ``weights`` as a Keras v3 ``.keras`` file at ``path``, atomically
    (a temporary file beside it, then renamed)."""
    check_shapes(input_dim, hidden_units, weights)
    metadata = {"keras_version": KERAS_VERSION,
                "date_saved": datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    config = keras_config(input_dim=input_dim, hidden_units=hidden_units, seed=seed)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(_METADATA, json.dumps(metadata))
        archive.writestr(_CONFIG, json.dumps(config))
        archive.writestr(_WEIGHTS, _weights_h5(weights))
    os.replace(tmp, path)
    return path


def read_keras_file(path: Path, *, input_dim: int, hidden_units: Sequence[int],
                    seed: int) -> list[np.ndarray]:
    """The weights of the ``.keras`` file at ``path``, which must hold this model with
    these dimensions and seed (its ``config.json`` equal to :func:`keras_config`'s), as
    :func:`write_keras_file` or Keras 2.15 writes it. Only JSON and HDF5 arrays are read.

    Raises:
        ModelMismatch: the file is not such a ``.keras`` file (unreadable, another
            architecture, arrays missing or of other shapes); the message names the file.
    """
    import h5py

    expected = keras_config(input_dim=input_dim, hidden_units=hidden_units, seed=seed)
    wanted = f"the fedcare model with {input_dim} inputs and hidden units {list(hidden_units)}"
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read(_CONFIG))
            if config != expected:
                raise ModelMismatch(f"{path}: must hold {wanted} (seed {seed}); got another "
                                    "model in its config.json")
            with h5py.File(io.BytesIO(archive.read(_WEIGHTS)), "r") as h5:
                weights = [np.asarray(h5[f"{_layer_group(i)}/{k}"][()], dtype=np.float32)
                           for i in range(len(hidden_units) + 1) for k in ("0", "1")]
    except ModelMismatch:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise ModelMismatch(f"{path}: must be a .keras file of {wanted}; got a file that "
                            f"cannot be read as one ({type(err).__name__}: {err})") from err
    try:
        check_shapes(input_dim, hidden_units, weights)
    except ValueError as err:
        raise ModelMismatch(f"{path}: {err}") from err
    return weights


def predict(weights: Sequence[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """The model's risk (probability of label 1) for each row, shape ``(n,)``, float32:
    ReLU hidden layers and a sigmoid output, as ``model.predict(rows)[:, 0]`` computes it
    up to float32 rounding (the order of the sums differs)."""
    h = np.asarray(rows, dtype=np.float32)
    layers = list(zip(weights[::2], weights[1::2], strict=True))
    for kernel, bias in layers[:-1]:
        h = np.maximum(h @ kernel + bias, np.float32(0.0))
    kernel, bias = layers[-1]
    logits = (h @ kernel + bias)[:, 0]
    # exp(large) = inf gives 0 or 1, as it should; the branch np.where drops may be inf/inf
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(logits >= 0, np.float32(1.0) / (np.float32(1.0) + np.exp(-logits)),
                        np.exp(logits) / (np.float32(1.0) + np.exp(logits))).astype(np.float32)
