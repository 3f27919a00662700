"""A real, small model bundle as a hospital site holds it: model.keras + model.json (from the
run) and the site's own preprocessor.json. Built from the bundled breast-cancer data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedcare.common.model import build_model
from fedcare.data.datasets import breast_cancer
from fedcare.data.preprocess import Preprocessor
from fedcare.data.split import split_train_test
from fedcare.server.checkpoint import CheckpointWriter

SITE = "site-0"


@dataclass(frozen=True)
class BundleFiles:
    model: Path          # model.keras (model.json beside it)
    preprocessor: Path   # the site's preprocessor.json
    x_train: pd.DataFrame  # raw feature rows (schema columns), as in a hospital CSV
    y_train: np.ndarray
    x_test: pd.DataFrame
    y_test: np.ndarray


def make_bundle(tmp_path: Path, *, epochs: int = 30, seed: int = 0) -> BundleFiles:
    """Fit the site preprocessing, train a small model (plain, fast), save like a run does."""
    from fedcare.site.training import LocalTrainer

    table = breast_cancer.load_table()
    split = split_train_test(table, test_fraction=0.25, seed=43)
    pre = Preprocessor(breast_cancer.SCHEMA).fit(split.x_train)
    x_train = pre.transform(split.x_train)
    trainer = LocalTrainer(input_dim=x_train.shape[1], hidden_units=(16,), local_optimizer="sgd",
                           dp_backend="bookkeeping")
    trainer.set_weights(build_model(input_dim=x_train.shape[1], hidden_units=(16,),
                                    seed=seed).get_weights())
    trainer.train(x_train, split.y_train.astype(np.float32), epochs=epochs, batch_size=32,
                  learning_rate=0.1, dp=None, proximal_mu=0.0, sampling_seed=seed,
                  noise_seed=0)
    run_dir = tmp_path / "run"
    writer = CheckpointWriter(run_dir, input_dim=x_train.shape[1], hidden_units=(16,),
                              seed=seed)
    model_path = writer.save_final(trainer.get_weights(), {
        "run": "test-run", "fedcare-version": "0.1.0", "dataset": "breast-cancer",
        "schema": breast_cancer.SCHEMA.name,
        "features": list(breast_cancer.SCHEMA.encoded_feature_names()),
        "hidden-units": [16], "rounds": 1, "preprocessing": "site-local",
        "privacy": {SITE: {"epsilon": 1.0, "delta": 1e-3,
                           "statement": "eps=1.00 at delta=1e-03 (whole run, RDP, "
                                        "add/remove-one, Poisson sampling q=0.3)"}},
        "site-level-privacy": None})
    site_dir = run_dir / "sites" / SITE
    site_dir.mkdir(parents=True)
    pre_path = site_dir / "preprocessor.json"
    pre_path.write_text(json.dumps(pre.to_dict(), indent=2))
    return BundleFiles(model=model_path, preprocessor=pre_path, x_train=split.x_train,
                       y_train=split.y_train, x_test=split.x_test, y_test=split.y_test)
