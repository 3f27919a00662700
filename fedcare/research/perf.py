"""What DP-SGD costs over plain training: one local epoch, same model, data and sampling.

Every variant is timed in the same process, interleaved round-robin, and the median
per-epoch time is reported, so the ratios are measured in one run on a noisy machine.

* ``plain``: fedcare's compiled local loop without clipping or noise (the baseline).
* ``dp-bookkeeping``: fedcare's default DP step (one backward pass).
* ``dp-tfp-fast-clipping``: tensorflow-privacy's fast clipping inside the same loop.
* ``keras-fit-plain``: ``model.fit`` for one epoch, Keras' own loop, for reference.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fedcare.common.config import RunConfig
from fedcare.data.datasets import load_federated_site
from fedcare.site.training import DPSettings, LocalTrainer

WARMUP_EPOCHS = 3


def epoch_costs(config: RunConfig, *, repeats: int = 15, epochs_per_sample: int = 5,
                site: int = 0, num_sites: int = 4) -> dict[str, Any]:
    """Median seconds per local epoch of each variant, and ratios to ``plain``."""
    data = load_federated_site(
        dataset=config.dataset, partition_id=site, num_partitions=num_sites,
        partitioning=config.partitioning, data_dir=config.data_dir,
        split_seed=config.split_seed, test_fraction=config.test_fraction,
        dirichlet_alpha=config.dirichlet_alpha, partition_seed=config.partition_seed)
    x, y = data.x_train, data.y_train
    dp = DPSettings(noise_multiplier=1.0, clip_norm=config.clip_norm)

    def local(backend: str, settings: DPSettings | None) -> Callable[[int], None]:
        trainer = LocalTrainer(input_dim=x.shape[1], hidden_units=config.hidden_layer_sizes,
                               local_optimizer=config.local_optimizer, dp_backend=backend)

        def run(epochs: int) -> None:
            trainer.train(x, y, epochs=epochs, batch_size=config.batch_size,
                          learning_rate=config.learning_rate, dp=settings, proximal_mu=0.0,
                          sampling_seed=1, noise_seed=2)
        return run

    def keras_fit() -> Callable[[int], None]:
        import tensorflow as tf

        from fedcare.common.model import build_model

        model = build_model(input_dim=x.shape[1], hidden_units=config.hidden_layer_sizes,
                            seed=0)
        model.compile(optimizer=tf.keras.optimizers.SGD(config.learning_rate),
                      loss="binary_crossentropy")

        def run(epochs: int) -> None:
            model.fit(x, y, batch_size=config.batch_size, epochs=epochs, verbose=0)
        return run

    variants = {"plain": local("bookkeeping", None),
                "dp-bookkeeping": local("bookkeeping", dp),
                "dp-tfp-fast-clipping": local("tfp-fast-clipping", dp),
                "keras-fit-plain": keras_fit()}
    for run in variants.values():
        run(WARMUP_EPOCHS)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            run(epochs_per_sample)
            samples[name].append((time.perf_counter() - started) / epochs_per_sample)
    median = {name: statistics.median(v) for name, v in samples.items()}
    return {
        "data": {"dataset": config.dataset, "site": data.name, "rows": len(y),
                 "features": int(x.shape[1]), "batch-size": config.batch_size,
                 "hidden-units": list(config.hidden_layer_sizes)},
        "seconds-per-epoch": median,
        "ratio-to-plain": {name: median[name] / median["plain"] for name in variants},
        "dp-bookkeeping-vs-keras-fit-plain": median["dp-bookkeeping"] / median["keras-fit-plain"],
        "repeats": repeats, "epochs-per-sample": epochs_per_sample,
        "spread": {name: [float(np.min(v)), float(np.max(v))] for name, v in samples.items()},
    }
