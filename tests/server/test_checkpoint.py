"""Checkpoints are native .keras archives, written atomically, loadable with the same weights."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from fedcare.common.model import build_model, weights_of
from fedcare.server.checkpoint import CheckpointWriter


def test_every_checkpoint_from_a_worker_thread_is_a_keras_zip(tmp_path: Path) -> None:
    # Arrange: the ServerApp runs in a thread, where Keras 2.15 flips its format flag.
    model = build_model(input_dim=3, hidden_units=(4,), seed=0)
    writer = CheckpointWriter(tmp_path, model)
    weights = weights_of(model)
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
    model = build_model(input_dim=3, hidden_units=(4,), seed=0)
    trained = [w + 1.0 for w in weights_of(model)]

    path = CheckpointWriter(tmp_path, model).save_final(trained, {"run": "r1"})

    loaded = tf.keras.models.load_model(path)
    for a, b in zip(loaded.get_weights(), trained):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "model.json").read_text().count('"run": "r1"') == 1


def test_incompatible_weights_are_refused(tmp_path: Path) -> None:
    model = build_model(input_dim=3, hidden_units=(4,), seed=0)

    with pytest.raises(ValueError, match="weights must have shapes"):
        CheckpointWriter(tmp_path, model).save_round(1, [np.zeros((2, 2))])
