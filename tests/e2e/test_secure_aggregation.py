"""SecAgg+ end to end (Flower's simulation engine, 3 sites): the run completes and its
global model equals the plain weighted average of the very same site updates, up to
SecAgg+'s quantisation. The plain average is computed independently here, by replaying
each site's round in this process (seeded sampling and noise: same updates)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tensorflow as tf

from fedcare.common.config import RunConfig
from fedcare.research.run import run_simulation
from fedcare.site.site import resolve_site
from tests.e2e.secagg_checks import (
    assert_matches_plain_mean,
    compare,
    initial_weights,
    replay_round,
)

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
    initial = initial_weights(config, secure.input_shape[-1])
    replay = config.replace(state_dir=str(tmp_path / "replay"))
    sites = [resolve_site(replay, {"partition-id": i, "num-partitions": SITES},
                          run_name="replay") for i in range(SITES)]
    updates, counts = replay_round(replay, sites, initial)

    assert_matches_plain_mean(compare(secure.get_weights(), initial, updates, counts))
