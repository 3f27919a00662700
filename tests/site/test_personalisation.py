"""Personalisation: the site-private offset is inside the DP step, never sent, kept at the site."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError
from fedcare.common.model import build_model, weights_of
from fedcare.hospital.bundle import ModelBundle
from fedcare.privacy import PrivacyLedger
from fedcare.site.app import evaluate, finetune, train
from fedcare.site.personal import (
    PRIVATE_PART_FILENAME,
    PrivatePart,
    load_private_part,
    save_private_part,
)
from fedcare.site.site import (
    SiteSpec,
    finetune_noise_multiplier_for,
    finetune_site,
    load_site,
    noise_multiplier_for,
    resolve_site,
    train_round,
)
from fedcare.site.training import DPSettings, LocalTrainer, get_trainer
from tests.bundle_factory import SITE, make_bundle
from tests.site.test_training import make_data, make_trainer

# -- the offset is inside the clipped, noised step -------------------------------------

def test_clipped_sum_with_offset_equals_individually_clipped_gradients() -> None:
    # Reference, straight through Keras one example at a time: the logit offset is the
    # last layer's bias moved by `offset`, and d loss / d offset = d loss / d that bias.
    x, y = make_data(12, seed=5)
    trainer, reference = make_trainer(), make_trainer()
    offset, clip = 0.7, 0.1
    trainer.set_offset(offset)
    shifted = trainer.get_weights()
    shifted[-1] = shifted[-1] + offset
    reference.set_weights(shifted)
    expected = None
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            p = reference.model(x[i:i + 1])
            loss = tf.keras.losses.binary_crossentropy(y[i:i + 1, None], p)
        grads = [g.numpy() for g in tape.gradient(loss, reference.model.trainable_variables)]
        grads.append(grads[-1].reshape(()))  # the offset's own gradient
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
        scaled = [g * min(1.0, clip / norm) for g in grads]
        expected = scaled if expected is None else [e + s for e, s in zip(expected, scaled)]

    got, _ = trainer.clipped_sum(tf.constant(x), tf.constant(y), tf.constant(clip),
                                 trainer.offset)

    assert expected is not None and len(got) == len(expected) == 2 * 3 + 1
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-4, atol=1e-6)


def test_offset_gets_gaussian_noise_of_the_same_std_as_the_shared_weights() -> None:
    # One full-batch SGD step with overwhelming noise: offset change * n / lr ~ N(0, (sigma C)^2)
    # (its clipped gradient is at most n*C = 20 vs sigma*C = 1000). 400 draws: the sample
    # std has relative standard error 1/sqrt(800) = 3.5%; 12% is > 3 SE.
    n, sigma, clip, lr = 20, 2000.0, 0.5, 1e-3
    x, y = make_data(n)
    trainer = make_trainer()
    init = trainer.get_weights()
    changes = []
    for seed in range(400):
        trainer.set_weights(init)
        trainer.set_offset(0.0)
        trainer.train(x, y, epochs=1, batch_size=n, learning_rate=lr,
                      dp=DPSettings(noise_multiplier=sigma, clip_norm=clip), proximal_mu=0.0,
                      sampling_seed=1, noise_seed=seed, personal=True)
        changes.append(-trainer.get_offset() / lr * n)
    assert np.std(changes) == pytest.approx(sigma * clip, rel=0.12)


def test_offset_alone_is_clipped_on_its_own_and_shared_weights_stay() -> None:
    x, y = make_data(16, seed=2)
    trainer = make_trainer()
    trainer.set_offset(-0.4)
    before = trainer.get_weights()
    clip = 0.2
    risks = trainer.predict(x, offset=-0.4)
    g = risks - y  # d loss_i / d logit_i
    expected = float(np.sum(g * np.minimum(1.0, clip / np.abs(g))))

    got, _ = trainer.clipped_sum(tf.constant(x), tf.constant(y), tf.constant(clip),
                                 trainer.offset, shared=False)
    trainer.train(x, y, epochs=3, batch_size=16, learning_rate=0.5,
                  dp=DPSettings(noise_multiplier=1.0, clip_norm=clip), proximal_mu=0.0,
                  sampling_seed=0, noise_seed=0, personal=True, train_shared=False)

    assert len(got) == 1 and float(got[0]) == pytest.approx(expected, rel=1e-4)
    assert all(np.array_equal(a, b) for a, b in zip(before, trainer.get_weights(), strict=True))
    assert trainer.get_offset() != -0.4


def test_offset_is_neither_used_nor_changed_without_personalisation() -> None:
    x, y = make_data(40)
    trainer = make_trainer()
    trainer.set_offset(1.5)

    trainer.train(x, y, epochs=2, batch_size=10, learning_rate=0.5,
                  dp=DPSettings(noise_multiplier=1.0, clip_norm=1.0), proximal_mu=0.0,
                  sampling_seed=0, noise_seed=0)

    assert trainer.get_offset() == 1.5
    assert len(trainer.get_weights()) == len(trainer.model.trainable_variables)


def test_offset_learns_a_site_base_rate_without_dp() -> None:
    x, _ = make_data(200)
    y = np.ones(200, np.float32)  # a site where everyone is positive
    trainer = make_trainer()
    trainer.train(x, y, epochs=30, batch_size=50, learning_rate=0.5, dp=None, proximal_mu=0.0,
                  sampling_seed=0, noise_seed=0, personal=True)
    assert trainer.get_offset() > 1.0


@pytest.mark.parametrize("changes, field", [
    ({"personalisation": "offset", "dp_backend": "tfp-fast-clipping"}, "dp-backend"),
    ({"personalisation": "none", "finetune_epochs": 2}, "finetune-epochs"),
    ({"personalisation": "last-layer"}, "personalisation"),
    ({"personalisation": "offset", "finetune_epochs": -1}, "finetune-epochs"),
    ({"finetune_epochs": 1, "finetune_budget_share": 1.0}, "finetune-budget-share"),
    ({"finetune_epochs": 1, "finetune_budget_share": -0.1}, "finetune-budget-share"),
    ({"finetune_epochs": 0, "finetune_budget_share": 0.1}, "finetune-budget-share"),
    ({"finetune_learning_rate": -1.0}, "finetune-learning-rate"),
    ({"offset_learning_rate": math.inf}, "offset-learning-rate"),
    ({"offset_averaging": "polyak"}, "offset-averaging"),
])
def test_unsupported_personalisation_settings_are_refused(changes: dict[str, object],
                                                          field: str) -> None:
    with pytest.raises(ConfigError, match=f"config: {field} must be"):
        RunConfig(**changes)  # type: ignore[arg-type]


def test_offset_learning_rate_scales_the_offset_step_only() -> None:
    x, y = make_data(64)
    results = []
    for offset_lr in (0.5, 2.0):
        trainer = make_trainer()
        trainer.train(x, y, epochs=1, batch_size=64, learning_rate=0.5, dp=None,
                      proximal_mu=0.0, sampling_seed=0, noise_seed=0, personal=True,
                      offset_learning_rate=offset_lr)
        results.append((trainer.get_offset(), trainer.get_weights()))
    (slow, shared_a), (fast, shared_b) = results
    assert slow != 0.0
    assert fast == pytest.approx(4.0 * slow, rel=1e-5)  # one full-batch step from 0
    for a, b in zip(shared_a, shared_b, strict=True):
        np.testing.assert_array_equal(a, b)


# -- at the site: never sent, covered by the ledger, survives restarts -----------------

def _site(tmp_path: Path, **changes: object) -> tuple[RunConfig, SiteSpec, list[np.ndarray]]:
    config = RunConfig(**{"output_dir": str(tmp_path), "hidden_units": "8", "num_rounds": 2,
                          "secure_noise": False, "personalisation": "offset",
                          **changes})  # type: ignore[arg-type]
    site = resolve_site(config, {"partition-id": 0, "num-partitions": 2}, run_name="r")
    return config, site, weights_of(build_model(input_dim=30, hidden_units=(8,), seed=0))


def _message(weights: list[np.ndarray], server_round: int, kind: str = "train") -> Message:
    return Message(RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord(
        {"run-name": "r", "server-round": server_round})}), dst_node_id=1, message_type=kind)


def _context(config: RunConfig) -> Context:
    return Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                   state=RecordDict(), run_config=config.to_run_config())


def test_reply_holds_exactly_the_shared_arrays_and_no_private_part(tmp_path: Path) -> None:
    config, site, weights = _site(tmp_path)

    reply = train(_message(weights, 1), _context(config))

    assert not reply.has_error()
    assert list(reply.content.array_records) == ["arrays"]
    sent = reply.content["arrays"].to_numpy_ndarrays()
    assert [a.shape for a in sent] == [w.shape for w in weights]
    part = load_private_part(site.state_dir)
    assert part is not None and part.version == 1 and part.offset != 0.0
    # Nothing else carries it: metrics and site info hold no offset.
    assert part.offset not in list(reply.content["metrics"].values())
    assert set(reply.content.config_records) == {"site"}
    assert set(reply.content["site"]) == {"name", "audit-hash", "audit-length",
                                          "update-sha256", "privacy"}


def test_evaluation_replies_have_the_same_keys_with_and_without_a_private_part(
        tmp_path: Path) -> None:
    # Flower aggregates evaluation replies only if all have the same metric keys: a site that
    # has no private part yet (e.g. it refused to train) scores the global model it would use.
    config, _, weights = _site(tmp_path)
    before = evaluate(_message(weights, 1, "evaluate"), _context(config)).content["metrics"]
    train(_message(weights, 1), _context(config))

    after = evaluate(_message(weights, 1, "evaluate"), _context(config)).content["metrics"]

    assert set(before) == set(after) and "personal-accuracy" in before
    assert before["personal-accuracy"] == before["accuracy"]  # no private part: the global model


def test_finetune_reply_carries_scores_and_privacy_only(tmp_path: Path) -> None:
    config, site, weights = _site(tmp_path, finetune_epochs=1, finetune_scope="all")

    reply = finetune(_message(weights, 3, "train.finetune"), _context(config))

    assert not reply.has_error()
    assert list(reply.content.array_records) == []
    assert {"personal-accuracy", "personal-auc", "epsilon"} <= set(reply.content["metrics"])
    part = load_private_part(site.state_dir)  # the fine-tuned model stays at the site
    assert part is not None and part.weights is not None and part.phase == "finetune"


def test_ledger_is_the_same_with_and_without_the_offset(tmp_path: Path) -> None:
    spends, epsilons = [], []
    for mode in ("none", "offset"):
        config, site, weights = _site(tmp_path / mode)
        config = config.replace(personalisation=mode)
        for server_round in (1, 2):
            outcome = train_round(config, site, weights, run_id="r", server_round=server_round,
                                  proximal_mu=0.0)
            weights = outcome.weights
        ledger = PrivacyLedger(site.state_dir, site=site.name)
        spends.append([(e.server_round, e.spend) for e in ledger.entries])
        epsilons.append(outcome.statement.epsilon if outcome.statement else None)

    assert spends[0] == spends[1] and len(spends[0]) == 2
    assert epsilons[0] == epsilons[1]
    assert (tmp_path / "none" / "r" / "sites" / "site-0" / PRIVATE_PART_FILENAME).exists() is False


def test_private_part_survives_a_restart_of_the_site(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config, site, weights = _site(tmp_path)
    first = train_round(config, site, weights, run_id="r", server_round=1, proximal_mu=0.0)
    saved = load_private_part(site.state_dir)
    assert saved is not None and (saved.version, saved.global_round) == (1, 1)
    # A restart: fresh trainer and data caches, and an offset in memory that is not the saved one.
    get_trainer.cache_clear()
    load_site.cache_clear()
    started_from: list[float] = []
    original = LocalTrainer.set_offset
    monkeypatch.setattr(LocalTrainer, "set_offset",
                        lambda self, v: (started_from.append(v), original(self, v))[1])

    train_round(config, site, first.weights, run_id="r", server_round=2, proximal_mu=0.0)

    assert started_from == [saved.offset]
    again = load_private_part(site.state_dir)
    assert again is not None and (again.version, again.global_round) == (2, 2)


def test_offset_from_another_run_is_not_carried_over(tmp_path: Path) -> None:
    config, site, weights = _site(tmp_path)
    save_private_part(site.state_dir, PrivatePart(offset=4.0, version=7, run="old",
                                                  global_round=9))

    train_round(config, site, weights, run_id="r", server_round=1, proximal_mu=0.0)

    part = load_private_part(site.state_dir)
    assert part is not None and (part.run, part.version) == ("r", 8)
    assert abs(part.offset) < 2.0  # one round from 0, not from 4


def test_finetune_is_recorded_in_the_ledger_and_planned_into_the_whole_run_epsilon(
        tmp_path: Path) -> None:
    config, site, weights = _site(tmp_path, finetune_epochs=3)
    for server_round in (1, 2):
        weights = train_round(config, site, weights, run_id="r", server_round=server_round,
                              proximal_mu=0.0).weights

    outcome, personal = finetune_site(config, site, weights, run_id="r", server_round=3)

    ledger = PrivacyLedger(site.state_dir, site=site.name)
    rounds = [e.spend for e in ledger.entries]
    assert [e.server_round for e in ledger.entries] == [1, 2, 3]
    assert rounds[2].steps == 3 * rounds[0].steps  # 3 fine-tuning epochs vs 1 local epoch
    assert outcome.statement is not None
    # The whole run, fine-tuning included, is at the target (calibrated for it) ...
    assert outcome.statement.epsilon <= config.target_epsilon
    assert outcome.statement.epsilon == pytest.approx(config.target_epsilon, rel=1e-3)
    # ... which needs more noise than the same run without fine-tuning.
    n = len(load_site(config, site).y_train)
    assert noise_multiplier_for(config, n) > noise_multiplier_for(
        config.replace(finetune_epochs=0), n)
    part = load_private_part(site.state_dir)
    # scope "private": the offset alone was fine-tuned, on the final global model as it is
    assert part is not None and part.phase == "finetune" and part.weights is None
    assert 0.0 <= personal.accuracy <= 1.0


def test_finetune_at_its_own_noise_is_recorded_with_it_and_the_run_stays_at_the_target(
        tmp_path: Path) -> None:
    config, site, weights = _site(tmp_path, finetune_epochs=1, finetune_budget_share=0.2,
                                  batch_size=1024, finetune_learning_rate=4.0)
    for server_round in (1, 2):
        weights = train_round(config, site, weights, run_id="r", server_round=server_round,
                              proximal_mu=0.0).weights

    outcome, _ = finetune_site(config, site, weights, run_id="r", server_round=3)

    n = len(load_site(config, site).y_train)
    sigma_r, sigma_f = noise_multiplier_for(config, n), finetune_noise_multiplier_for(config, n)
    entries = PrivacyLedger(site.state_dir, site=site.name).entries
    assert [e.spend.noise_multiplier for e in entries] == [sigma_r, sigma_r, sigma_f]
    assert sigma_f != sigma_r
    # fine-tuning holds its share of the zCDP budget (q = 1: full batch) ...
    rho = [e.spend.steps / (2 * e.spend.noise_multiplier**2) for e in entries]
    assert rho[2] / sum(rho) == pytest.approx(0.2, rel=1e-9)
    # ... and the ledger's whole-run composition is at the target, not above it
    assert outcome.statement is not None
    assert outcome.statement.epsilon <= config.target_epsilon
    assert outcome.statement.epsilon == pytest.approx(config.target_epsilon, rel=1e-4)
    # the rounds pay less noise than with fine-tuning at the rounds' noise multiplier
    assert sigma_r < noise_multiplier_for(config.replace(finetune_budget_share=0.0), n)


def test_tail_averaging_is_post_processing_of_the_released_iterates(tmp_path: Path) -> None:
    runs = {}
    for mode in ("none", "tail"):
        config, site, weights = _site(tmp_path / mode, num_rounds=4, offset_averaging=mode)
        parts = []
        for server_round in range(1, 5):
            weights = train_round(config, site, weights, run_id="r", server_round=server_round,
                                  proximal_mu=0.0).weights
            part = load_private_part(site.state_dir)
            assert part is not None
            parts.append(part)
        spends = [e.spend for e in PrivacyLedger(site.state_dir, site=site.name).entries]
        runs[mode] = (parts, weights, spends)
    (plain, w_plain, spends_plain), (tail, w_tail, spends_tail) = runs["none"], runs["tail"]
    # Training never sees the average: same iterates, same shared weights, same spend.
    assert [p.iterate for p in tail] == [p.iterate for p in plain]
    for a, b in zip(w_plain, w_tail, strict=True):
        np.testing.assert_array_equal(a, b)
    assert spends_tail == spends_plain
    # The personalised offset is the mean of the last half of the rounds' iterates.
    assert [p.offset for p in plain] == [p.iterate for p in plain]
    assert tail[-1].averaged == 2
    assert tail[-1].offset == pytest.approx((tail[2].iterate + tail[3].iterate) / 2, rel=1e-6)
    assert tail[1].offset == tail[1].iterate and tail[1].averaged == 0


def test_finetuning_starts_from_the_averaged_offset(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config, site, weights = _site(tmp_path, finetune_epochs=1, offset_averaging="tail")
    save_private_part(site.state_dir, PrivatePart(offset=0.25, iterate=1.5, averaged=3,
                                                  version=5, run="r", global_round=2))
    started_from: list[float] = []
    original = LocalTrainer.set_offset
    monkeypatch.setattr(LocalTrainer, "set_offset",
                        lambda self, v: (started_from.append(v), original(self, v))[1])

    finetune_site(config, site, weights, run_id="r", server_round=3)

    assert started_from == [0.25]
    part = load_private_part(site.state_dir)
    assert part is not None and part.averaged == 0 and part.offset == part.iterate


def test_a_private_part_of_format_version_1_still_loads(tmp_path: Path) -> None:
    data = PrivatePart(offset=0.5, version=2, run="r", global_round=3).to_dict()
    del data["iterate"], data["averaged"]
    data["format-version"] = 1
    (tmp_path / PRIVATE_PART_FILENAME).write_text(json.dumps(data))
    part = load_private_part(tmp_path)
    assert part is not None and (part.offset, part.iterate, part.averaged) == (0.5, 0.5, 0)


def test_finetune_refused_past_the_budget_trains_and_saves_nothing(tmp_path: Path) -> None:
    config, site, weights = _site(tmp_path, finetune_epochs=1, dp_mode="noise-multiplier",
                                  noise_multiplier=0.3, epsilon_budget=1.0)
    reply = finetune(_message(weights, 3, "train.finetune"), _context(config))
    assert reply.has_error() and "budget" in reply.error.reason
    assert load_private_part(site.state_dir) is None


# -- the personalised model is what the site predicts with ----------------------------

def test_bundle_uses_the_site_private_part_and_says_so(tmp_path: Path) -> None:
    files = make_bundle(tmp_path, epochs=5)
    site_dir = files.preprocessor.parent
    plain = ModelBundle.load(model_path=files.model, preprocessor_path=files.preprocessor,
                             site_dir=site_dir)
    x = plain.encode(files.x_test)
    save_private_part(site_dir, PrivatePart(offset=2.0, version=3, run="test-run",
                                            global_round=40))

    personal = ModelBundle.load(model_path=files.model, preprocessor_path=files.preprocessor,
                                site_dir=site_dir)

    def logit(p: np.ndarray) -> np.ndarray:
        return np.log(p / (1 - p))

    before, after = logit(plain.predict_encoded(x)), logit(personal.predict_encoded(x))
    kept = np.abs(before) < 8  # float32 risks saturate beyond
    assert kept.sum() > 50
    np.testing.assert_allclose(after[kept], before[kept] + 2.0, rtol=1e-3, atol=1e-3)
    assert plain.describe()["personalisation"]["model"] == "global"
    assert personal.describe()["personalisation"] == {
        "model": "personalised", "kind": "offset", "private-part-version": 3, "run": "test-run",
        "global-round": 40, "phase": "round", "fine-tuned": False,
        "averaged-iterates": 0}


def test_bundle_falls_back_to_global_for_a_private_part_of_another_run(tmp_path: Path) -> None:
    files = make_bundle(tmp_path, epochs=5)
    site_dir = files.preprocessor.parent
    save_private_part(site_dir, PrivatePart(offset=2.0, version=1, run="other", global_round=1))

    bundle = ModelBundle.load(model_path=files.model, preprocessor_path=files.preprocessor,
                              site_dir=site_dir)

    assert bundle.describe()["personalisation"]["model"] == "global"
    assert "other" in bundle.describe()["personalisation"]["reason"]
    assert SITE in str(site_dir)


def test_predict_cli_uses_the_personalised_model(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from fedcare.cli import main

    files = make_bundle(tmp_path, epochs=5)
    site_dir = files.preprocessor.parent
    csv = tmp_path / "new.csv"
    files.x_test.head(20).to_csv(csv, index=False)
    risks = {}
    for name, offset in (("global", None), ("personal", -3.0)):
        if offset is not None:
            save_private_part(site_dir, PrivatePart(offset=offset, version=1, run="test-run",
                                                    global_round=1))
        out = tmp_path / f"{name}.csv"
        assert main(["predict", "--model", str(files.model), "--site-dir", str(site_dir),
                     "--csv", str(csv), "--out", str(out)]) == 0
        import pandas as pd
        risks[name] = pd.read_csv(out)["risk"].to_numpy()

    assert np.all(risks["personal"] < risks["global"])  # offset -3 lowers every risk
