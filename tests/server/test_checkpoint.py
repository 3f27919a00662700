"""Checkpoints are native .keras archives, written atomically, loadable with the same weights."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from fedcare.common.mlp import initial_weights
from fedcare.server.checkpoint import CheckpointWriter

SHAPE = {"input_dim": 3, "hidden_units": (4,), "seed": 0}


def test_every_checkpoint_from_a_worker_thread_is_a_keras_zip(tmp_path: Path) -> None:
    # Arrange: the ServerApp runs in a thread (Keras 2.15 saved HDF5 there unless told).
    writer = CheckpointWriter(tmp_path, **SHAPE)
    weights = initial_weights(**SHAPE)
    paths: list[Path] = []

    # Act
    worker = threading.Thread(target=lambda: paths.extend(
        writer.save_round(r, weights) for r in (1, 2, 3)))
    worker.start()
    worker.join()

    # Assert
    assert [p.name for p in paths] == ["round-0001.keras", "round-0002.keras", "round-0003.keras"]
    assert all(zipfile.is_zipfile(p) for p in paths)
    assert not list(tmp_path.rglob("*.tmp.keras"))


def test_final_model_round_trips_with_manifest(tmp_path: Path) -> None:
    trained = [w + 1.0 for w in initial_weights(**SHAPE)]

    path = CheckpointWriter(tmp_path, **SHAPE).save_final(trained, {"run": "r1"})

    loaded = tf.keras.models.load_model(path)
    for a, b in zip(loaded.get_weights(), trained):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "model.json").read_text().count('"run": "r1"') == 1


def test_incompatible_weights_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weights must have shapes"):
        CheckpointWriter(tmp_path, **SHAPE).save_round(1, [np.zeros((2, 2))])
