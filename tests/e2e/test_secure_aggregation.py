"""SecAgg+ end to end (Flower's simulation engine, 3 sites): the run completes and its
global model equals the plain weighted average of the very same site updates, up to
SecAgg+'s quantisation. The plain average is computed independently here, by replaying
each site's round in this process (seeded sampling and noise: same updates)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from fedcare.common.config import RunConfig
from fedcare.common.formats import CLIPPING_RANGE, MAX_WEIGHT, QUANTIZATION_RANGE
from fedcare.common.model import build_model, weights_of
from fedcare.research.run import run_simulation
from fedcare.site.site import resolve_site, train_round

pytestmark = pytest.mark.slow

SITES = 3


def test_secaggplus_run_matches_the_plain_aggregate_of_the_same_updates(tmp_path: Path) -> None:
    config = RunConfig(num_rounds=1, min_sites=SITES, output_dir=str(tmp_path / "runs"),
                       run_name="secagg", hidden_units="16", secure_noise=False,
                       secure_aggregation="secaggplus", delta=1e-3, target_epsilon=1.0)
    report = run_simulation(config, num_sites=SITES)
    assert sorted(report["sites"]) == [f"site-{i}" for i in range(SITES)]
    assert all(0 < row["epsilon"] <= 1.0 for row in report["sites"].values())
    run_dir = tmp_path / "runs" / "secagg"
    secure = tf.keras.models.load_model(run_dir / "checkpoints" / "round-0001.keras")

    # Replay: the same sites, the same initial model, the same seeds -> the same updates.
    initial = weights_of(build_model(input_dim=secure.input_shape[-1], hidden_units=(16,),
                                     seed=config.seed))
    replay = config.replace(state_dir=str(tmp_path / "replay"))
    updates, counts = [], []
    for i in range(SITES):
        site = resolve_site(replay, {"partition-id": i, "num-partitions": SITES},
                            run_name="replay")
        outcome = train_round(replay, site, initial, run_id="replay", server_round=1,
                              proximal_mu=0.0)
        updates.append(outcome.weights)
        counts.append(outcome.num_examples)
    plain = [sum(n * u[k] for n, u in zip(counts, updates)) / sum(counts)
             for k in range(len(initial))]

    moved = max(float(np.max(np.abs(p - w0))) for p, w0 in zip(plain, initial))
    error = max(float(np.max(np.abs(s - p))) for s, p in zip(secure.get_weights(), plain))
    # SecAgg+'s worst-case quantisation error (see fedcare.server.secure_aggregation)
    bound = SITES * (2 * CLIPPING_RANGE / QUANTIZATION_RANGE) / (sum(counts) / MAX_WEIGHT)
    assert moved > 100 * bound  # the round really changed the model ...
    assert error <= bound + 1e-6  # ... and SecAgg+ summed the same updates (+ float32 noise)
    print(f"SecAgg+ vs plain aggregate: max |diff| {error:.2e} (bound {bound:.2e}); "
          f"update size {moved:.2e}")
