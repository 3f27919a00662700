"""Global model checkpoints: ``.keras`` files written atomically, never pickles.

A model travels with its manifest (schema, run, each site's privacy figures), so
whoever loads it knows what it was trained on and what it cost.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from fedcare.common.formats import MANIFEST, MANIFEST_FORMAT
from fedcare.common.model import check_compatible
from fedcare.server.report import write_json_atomic

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
FINAL_MODEL = "model.keras"


class CheckpointWriter:
    """Writes the global model after every round and at the end, reusing one Keras model."""

    def __init__(self, run_dir: Path, model: tf.keras.Model) -> None:
        self.run_dir = run_dir
        self.model = model
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
        check_compatible(self.model, weights)
        self.model.set_weights(list(weights))
        tmp = path.with_name(f".{path.stem}.tmp.keras")
        # Name the format: Keras 2.15 infers it from a thread-local flag that its own first
        # save from a non-main thread (the ServerApp's) leaves False, so later ".keras"
        # files would silently be written as legacy HDF5.
        self.model.save(tmp, save_format="keras_v3")
        os.replace(tmp, path)
        logger.debug("saved %s", path)
        return path
