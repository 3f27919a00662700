"""The TensorFlow-free model (fedcare.common.mlp) equals Keras's: same initial weights bit
for bit, and .keras files that Keras loads with the same config, weights and predictions."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from fedcare.common.errors import ModelMismatch
from fedcare.common.mlp import (
    check_shapes,
    initial_weights,
    predict,
    read_keras_file,
    weight_shapes,
    write_keras_file,
)
from fedcare.common.model import build_model, weights_of


def test_weight_shapes_are_kernel_then_bias_per_dense_layer() -> None:
    assert weight_shapes(5, (4, 3)) == [(5, 4), (4,), (4, 3), (3,), (3, 1), (1,)]


@pytest.mark.parametrize(("input_dim", "hidden", "seed"), [
    (5, (4, 3), 7), (13, (32, 16), 42), (30, (64,), 0), (3, (), 123456789)])
def test_initial_weights_equal_keras_bit_for_bit(input_dim: int, hidden: tuple[int, ...],
                                                 seed: int) -> None:
    keras = weights_of(build_model(input_dim=input_dim, hidden_units=hidden, seed=seed))

    ours = initial_weights(input_dim=input_dim, hidden_units=hidden, seed=seed)

    assert [w.dtype for w in ours] == [w.dtype for w in keras]
    for a, b in zip(ours, keras, strict=True):
        np.testing.assert_array_equal(a, b)


def test_initial_weights_differ_by_seed() -> None:
    a = initial_weights(input_dim=4, hidden_units=(3,), seed=0)
    b = initial_weights(input_dim=4, hidden_units=(3,), seed=1)

    assert not np.array_equal(a[0], b[0])


def _random_weights(input_dim: int, hidden: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=s).astype(np.float32) for s in weight_shapes(input_dim, hidden)]


def test_keras_file_has_the_config_keras_writes(tmp_path: Path) -> None:
    # Arrange
    model = build_model(input_dim=5, hidden_units=(4, 3), seed=7)
    model.save(tmp_path / "keras.keras", save_format="keras_v3")
    weights = _random_weights(5, (4, 3))

    # Act
    path = write_keras_file(tmp_path / "ours.keras", weights, input_dim=5,
                            hidden_units=(4, 3), seed=7)

    # Assert
    def config(p: Path) -> object:
        return json.loads(zipfile.ZipFile(p).read("config.json"))

    assert config(path) == config(tmp_path / "keras.keras")
    assert sorted(zipfile.ZipFile(path).namelist()) == sorted(
        zipfile.ZipFile(tmp_path / "keras.keras").namelist())
    assert not list(tmp_path.glob(".*.tmp.keras"))


def test_keras_loads_the_file_with_its_weights_and_predictions(tmp_path: Path) -> None:
    # Arrange
    weights = _random_weights(6, (8,))
    reference = build_model(input_dim=6, hidden_units=(8,), seed=3)
    reference.set_weights(weights)
    rows = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)

    # Act
    path = write_keras_file(tmp_path / "m.keras", weights, input_dim=6, hidden_units=(8,),
                            seed=3)
    loaded = tf.keras.models.load_model(path)

    # Assert
    for a, b in zip(loaded.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.predict(rows, verbose=0),
                                  reference.predict(rows, verbose=0))


def test_weights_of_another_shape_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"weights must have shapes \[\(3, 4\)"):
        write_keras_file(tmp_path / "m.keras", [np.zeros((2, 2))], input_dim=3,
                         hidden_units=(4,), seed=0)

    assert not list(tmp_path.iterdir())


def test_check_shapes_accepts_matching_weights() -> None:
    check_shapes(3, (4,), initial_weights(input_dim=3, hidden_units=(4,), seed=0))


def test_read_keras_file_gives_back_the_written_weights_bit_for_bit(tmp_path: Path) -> None:
    weights = _random_weights(5, (4, 3))
    path = write_keras_file(tmp_path / "m.keras", weights, input_dim=5, hidden_units=(4, 3),
                            seed=7)

    read = read_keras_file(path, input_dim=5, hidden_units=(4, 3), seed=7)

    assert [w.dtype for w in read] == [np.float32] * 6
    for a, b in zip(read, weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_read_keras_file_reads_a_file_keras_saved(tmp_path: Path) -> None:
    model = build_model(input_dim=6, hidden_units=(8,), seed=3)
    model.set_weights(_random_weights(6, (8,)))
    model.save(tmp_path / "keras.keras", save_format="keras_v3")

    read = read_keras_file(tmp_path / "keras.keras", input_dim=6, hidden_units=(8,), seed=3)

    for a, b in zip(read, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("hidden", [(8,), (16, 4), ()])
def test_predict_equals_keras_up_to_float32_rounding(hidden: tuple[int, ...]) -> None:
    # Arrange: weights large enough that some rows saturate the sigmoid
    weights = [3.0 * w for w in _random_weights(6, hidden)]
    model = build_model(input_dim=6, hidden_units=hidden, seed=0)
    model.set_weights(weights)
    rows = np.random.default_rng(2).normal(scale=4.0, size=(200, 6)).astype(np.float32)

    # Act
    ours = predict(weights, rows)

    # Assert
    keras = model.predict(rows, verbose=0)[:, 0]
    assert ours.shape == (200,) and ours.dtype == np.float32
    assert ((ours >= 0.0) & (ours <= 1.0)).all()
    np.testing.assert_allclose(ours, keras, rtol=1e-5, atol=1e-6)


def test_predict_saturates_without_nan() -> None:
    weights = [np.ones((1, 1), np.float32), np.zeros(1, np.float32)]  # logistic regression

    out = predict(weights, np.array([[-1e4], [0.0], [1e4]], dtype=np.float32))

    np.testing.assert_array_equal(out, np.array([0.0, 0.5, 1.0], dtype=np.float32))


def test_read_keras_file_refuses_another_architecture_naming_the_file(tmp_path: Path) -> None:
    path = write_keras_file(tmp_path / "m.keras", _random_weights(5, (4,)), input_dim=5,
                            hidden_units=(4,), seed=7)

    with pytest.raises(ModelMismatch, match=r"m\.keras: must hold the fedcare model with 5 "
                                            r"inputs and hidden units \[8\] \(seed 7\)"):
        read_keras_file(path, input_dim=5, hidden_units=(8,), seed=7)


def test_read_keras_file_refuses_a_file_that_is_not_a_keras_zip(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    path.write_bytes(b"not a zip")

    with pytest.raises(ModelMismatch, match=r"model\.keras: must be a \.keras file of the "
                                            r"fedcare model .*BadZipFile"):
        read_keras_file(path, input_dim=5, hidden_units=(4,), seed=7)


def test_read_keras_file_refuses_missing_weights(tmp_path: Path) -> None:
    path = write_keras_file(tmp_path / "m.keras", _random_weights(5, (4,)), input_dim=5,
                            hidden_units=(4,), seed=7)
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if n != "model.weights.h5"}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)

    with pytest.raises(ModelMismatch, match=r"KeyError"):
        read_keras_file(path, input_dim=5, hidden_units=(4,), seed=7)
