"""Honest sampling: shuffled batches are charged without amplification, and say so."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from fedcare.privacy import (
    LedgerEntry,
    PrivacyLedger,
    RoundSpend,
    calibrate_noise_multiplier,
    compose_epsilon,
    plan_round,
    statement_from_entries,
)

DELTA = 1e-5


def test_shuffled_round_is_one_gaussian_mechanism_per_epoch() -> None:
    spend = plan_round(num_examples=1000, batch_size=50, local_epochs=3, noise_multiplier=2.0,
                       sampling="shuffle")

    assert (spend.sampling_rate, spend.steps, spend.sampling) == (1.0, 3, "shuffle")
    direct = RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(2.0), 3)).get_epsilon(DELTA)
    assert compose_epsilon([spend], delta=DELTA, accountant="rdp") == pytest.approx(
        direct, rel=1e-12)


def test_no_amplification_means_a_larger_epsilon_for_the_same_noise() -> None:
    common = {"num_examples": 1000, "batch_size": 50, "local_epochs": 3,
              "noise_multiplier": 2.0}

    poisson = compose_epsilon([plan_round(**common)], delta=DELTA)
    shuffled = compose_epsilon([plan_round(**common, sampling="shuffle")], delta=DELTA)

    assert shuffled > 3 * poisson  # q = 0.05 amplification is worth a lot here


def test_calibration_follows_the_sampling_assumption() -> None:
    common = {"target_epsilon": 1.0, "delta": 1e-3, "num_examples": 200, "batch_size": 20,
              "local_epochs": 1, "rounds": 10}

    sigma_poisson = calibrate_noise_multiplier(**common)
    sigma_shuffle = calibrate_noise_multiplier(**common, sampling="shuffle")

    spend = plan_round(num_examples=200, batch_size=20, local_epochs=1,
                       noise_multiplier=sigma_shuffle, sampling="shuffle")
    assert sigma_shuffle > sigma_poisson
    assert compose_epsilon([spend] * 10, delta=1e-3) <= 1.0


def test_shuffled_spend_round_trips_through_the_ledger_with_its_own_mechanism(tmp_path) -> None:
    spend = plan_round(num_examples=100, batch_size=10, local_epochs=2, noise_multiplier=3.0,
                       sampling="shuffle")
    ledger = PrivacyLedger(tmp_path, site="h")
    ledger.record(LedgerEntry.now(run_id="r", server_round=1, spend=spend, clip_norm=1.0,
                                  num_examples=100), delta=1e-3, budget=50.0)

    reloaded = PrivacyLedger(tmp_path, site="h").entries[0].spend

    assert spend.to_dict()["mechanism"] == "shuffled-gaussian-no-amplification"
    assert reloaded == spend


def test_a_shuffled_spend_cannot_claim_a_sampling_rate() -> None:
    with pytest.raises(ValueError, match="sampling_rate must be 1 for shuffled batches"):
        RoundSpend(sampling_rate=0.1, noise_multiplier=1.0, steps=1, sampling="shuffle")


def test_statement_names_the_assumption_that_holds(tmp_path) -> None:
    def statement(sampling: str) -> str:
        spend = plan_round(num_examples=100, batch_size=10, local_epochs=1,
                           noise_multiplier=3.0, sampling=sampling)
        entry = LedgerEntry.now(run_id="r", server_round=1, spend=spend, clip_norm=1.0,
                                num_examples=100)
        made = statement_from_entries([entry], delta=1e-3)
        return made.short() + "\n" + made.text()

    assert "Poisson sampling q=0.1" in statement("poisson")
    shuffled = statement("shuffle")
    assert "shuffled batches, no amplification by sampling" in shuffled
    assert "Poisson" not in shuffled


def test_the_same_spends_are_composed_once_whatever_their_order() -> None:
    # The budget check and the statement compose the same spends every round; the costly
    # accountant runs once per distinct canonical composition.
    from fedcare.privacy.accounting import _epsilon_of

    a = plan_round(num_examples=997, batch_size=31, local_epochs=1, noise_multiplier=1.37)
    b = plan_round(num_examples=997, batch_size=31, local_epochs=1, noise_multiplier=2.11)
    first = compose_epsilon([a, b, a], delta=DELTA)
    hits = _epsilon_of.cache_info().hits

    again = compose_epsilon([a, a, b], delta=DELTA)

    assert again == first
    assert _epsilon_of.cache_info().hits == hits + 1
