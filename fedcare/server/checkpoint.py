"""Global model checkpoints: ``.keras`` files written atomically, never pickles.

A model travels with its manifest (schema, run, each site's privacy figures), so
whoever loads it knows what it was trained on and what it cost.

No TensorFlow here: the files are written by :mod:`fedcare.common.mlp` (the Keras v3
format, loadable by ``tf.keras.models.load_model``), so the ServerApp process does not pay
~480 MB for a TensorFlow it would use only to save files.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.common.formats import MANIFEST, MANIFEST_FORMAT
from fedcare.common.mlp import write_keras_file
from fedcare.server.report import write_json_atomic

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
FINAL_MODEL = "model.keras"


class CheckpointWriter:
    """Writes the global model (``build_model(input_dim, hidden_units, seed)``'s
    architecture) after every round and at the end."""

    def __init__(self, run_dir: Path, *, input_dim: int, hidden_units: Sequence[int],
                 seed: int) -> None:
        self.run_dir = run_dir
        self.input_dim = input_dim
        self.hidden_units = tuple(hidden_units)
        self.seed = seed
        (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)

    def save_round(self, server_round: int, weights: Sequence[np.ndarray]) -> Path:
        name = f"round-{server_round:04d}.keras"
        return self._save(self.run_dir / CHECKPOINT_DIR / name, weights)

    def save_final(self, weights: Sequence[np.ndarray], manifest: Mapping[str, Any]) -> Path:
        path = self._save(self.run_dir / FINAL_MODEL, weights)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        # The digest ties this exact file to the manifest's privacy figures.
        write_json_atomic(self.run_dir / MANIFEST, {"format": MANIFEST_FORMAT, "version": 1,
                                                    "model": FINAL_MODEL, "model-sha256": digest,
                                                    **manifest})
        return path

    def _save(self, path: Path, weights: Sequence[np.ndarray]) -> Path:
        write_keras_file(path, weights, input_dim=self.input_dim,
                         hidden_units=self.hidden_units, seed=self.seed)
        logger.debug("saved %s", path)
        return path
