"""Site-level DP: clipping, equal weights, fixed denominator, and honest accounting."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError
from fedcare.server.site_dp import SiteLevelDP, clip_update, site_level_epsilon
from fedcare.server.strategies import make_strategy


def test_clip_update_bounds_the_update_and_leaves_a_zero_update_alone() -> None:
    base = [np.zeros(2, np.float32), np.ones(1, np.float32)]

    big = clip_update([np.array([3.0, 4.0], np.float32), np.ones(1, np.float32)], base, 1.0)
    small = clip_update([np.array([0.3, 0.4], np.float32), np.ones(1, np.float32)], base, 1.0)
    zero = clip_update(base, base, 1.0)  # Flower's own clipping divides by zero here

    np.testing.assert_allclose(big[0], [0.6, 0.8], rtol=1e-6)  # norm 5 -> 1
    np.testing.assert_allclose(small[0], [0.3, 0.4], rtol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(zero, base))
    assert big[0].dtype == np.float32


def test_site_level_epsilon_is_gaussian_composition_without_amplification() -> None:
    direct = RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(2.0), 10)).get_epsilon(1e-2)

    assert site_level_epsilon(rounds=10, noise_multiplier=2.0, delta=1e-2,
                              accountant="rdp") == pytest.approx(
        direct, rel=1e-12)
    assert site_level_epsilon(rounds=0, noise_multiplier=2.0, delta=1e-2) == 0.0


def test_site_dp_wraps_the_strategy_with_equal_site_weights() -> None:
    strategy = make_strategy(RunConfig(site_dp=True, min_sites=3))

    assert isinstance(strategy, SiteLevelDP)
    assert strategy.num_sampled_clients == 3
    assert strategy.strategy.weighted_by_key == "unit-weight"  # type: ignore[attr-defined]


def test_site_dp_needs_every_site_every_round() -> None:
    with pytest.raises(ConfigError, match=r"fraction-train must be 1\.0 when site-dp is on"):
        RunConfig(site_dp=True, fraction_train=0.5)


def _reply(update: float, examples: int) -> Message:
    content = RecordDict({"arrays": ArrayRecord([np.full(2, update, np.float32)]),
                          "metrics": MetricRecord({"num-examples": examples, "unit-weight": 1}),
                          "site": ConfigRecord({"name": f"s{examples}"})})
    return Message(content=content, dst_node_id=examples, message_type="train")


def _wrapped(sites: int, noise: float) -> SiteLevelDP:
    strategy = make_strategy(RunConfig(site_dp=True, min_sites=sites, site_noise_multiplier=noise,
                                       site_clip_norm=100.0))
    assert isinstance(strategy, SiteLevelDP)
    strategy.current_arrays = ArrayRecord([np.zeros(2, np.float32)])
    return strategy


def test_a_site_claiming_many_examples_gets_no_more_weight() -> None:
    strategy = _wrapped(sites=2, noise=1e-9)

    arrays, _ = strategy.aggregate_train(1, [_reply(1.0, 10), _reply(3.0, 10_000)])

    assert arrays is not None
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], [2.0, 2.0], atol=1e-5)
    assert strategy.rounds_aggregated == 1


def test_fewer_replies_than_the_noise_assumes_are_not_aggregated() -> None:
    strategy = _wrapped(sites=3, noise=1.0)

    arrays, _ = strategy.aggregate_train(1, [_reply(1.0, 10), _reply(3.0, 20)])

    assert arrays is None
    assert strategy.rounds_aggregated == 0
