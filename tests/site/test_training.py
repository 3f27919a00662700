"""Local DP-SGD: clipping, noise and sampling do what the accountant assumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from fedcare.site.training import (
    DPSettings,
    LocalTrainer,
    derive_seed,
    evaluate_scores,
    get_trainer,
    steps_and_rate,
)

INPUT_DIM = 6


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, INPUT_DIM)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)
    return x, y


def make_trainer(backend: str = "bookkeeping", hidden: tuple[int, ...] = (8, 4)) -> LocalTrainer:
    return LocalTrainer(input_dim=INPUT_DIM, hidden_units=hidden, local_optimizer="sgd",
                        dp_backend=backend)


def per_example_grads(trainer: LocalTrainer, x: np.ndarray,
                      y: np.ndarray) -> list[list[np.ndarray]]:
    """Reference: one plain backward pass per example, straight through Keras."""
    out = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            p = trainer.model(x[i:i + 1])
            loss = tf.keras.losses.binary_crossentropy(y[i:i + 1, None], p, from_logits=False)
        out.append([g.numpy() for g in tape.gradient(loss, trainer.model.trainable_variables)])
    return out


def test_bookkeeping_clipped_sum_matches_tensorflow_privacy_fast_clipping() -> None:
    # Arrange: same weights in both trainers; a clip norm small enough to bind.
    x, y = make_data(24)
    ours, reference = make_trainer("bookkeeping"), make_trainer("tfp-fast-clipping")
    reference.set_weights(ours.get_weights())
    clip = tf.constant(0.05)

    # Act
    ours_sum, _ = ours.clipped_sum(tf.constant(x), tf.constant(y), clip)
    ref_sum, _ = reference.clipped_sum(tf.constant(x), tf.constant(y), clip)

    # Assert
    for a, b in zip(ours_sum, ref_sum):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


def test_clipped_sum_equals_sum_of_individually_clipped_gradients() -> None:
    x, y = make_data(10, seed=3)
    trainer = make_trainer()
    clip = 0.1
    expected = None
    for grads in per_example_grads(trainer, x, y):
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
        scaled = [g * min(1.0, clip / norm) for g in grads]
        expected = scaled if expected is None else [e + s for e, s in zip(expected, scaled)]

    got, _ = trainer.clipped_sum(tf.constant(x), tf.constant(y), tf.constant(clip))

    assert expected is not None
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-4, atol=1e-6)


BACKENDS = ("bookkeeping", "tfp-fast-clipping")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(8))
def test_each_example_contributes_at_most_the_clip_norm(seed: int, backend: str) -> None:
    # Property: a one-row batch's clipped gradient has norm <= C (and == C when it binds).
    x, y = make_data(1, seed=seed)
    x = x * (1 + 10 * seed)  # larger inputs, larger raw gradients
    trainer = make_trainer(backend)
    clip = 0.01

    grads, _ = trainer.clipped_sum(tf.constant(x), tf.constant(y), tf.constant(clip))

    norm = math.sqrt(sum(float(tf.reduce_sum(g * g)) for g in grads))
    assert norm <= clip * (1 + 1e-5)


def test_empty_poisson_batch_gives_zero_clipped_sum() -> None:
    trainer = make_trainer()
    x = np.zeros((0, INPUT_DIM), np.float32)

    grads, loss = trainer.clipped_sum(tf.constant(x), tf.constant(np.zeros(0, np.float32)),
                                      tf.constant(1.0))

    assert float(loss) == 0.0
    assert all(float(tf.reduce_max(tf.abs(g))) == 0.0 for g in grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_standard_deviation_is_noise_multiplier_times_clip(backend: str) -> None:
    # Arrange: one full-batch SGD step with overwhelming noise, so the weight change is
    # -lr * (clipped_sum + N(0, (sigma*C)^2)) / n and the clipped part is negligible
    # (its norm is at most n*C = 20 over all weights together, vs. sigma*C = 1000 per weight).
    n, sigma, clip, lr = 40, 2000.0, 0.5, 1e-3
    x, y = make_data(n)
    trainer = make_trainer(backend, hidden=(64,))
    before = np.concatenate([w.ravel() for w in trainer.get_weights()])

    # Act
    trainer.train(x, y, epochs=1, batch_size=n, learning_rate=lr,
                  dp=DPSettings(noise_multiplier=sigma, clip_norm=clip), proximal_mu=0.0,
                  sampling_seed=1, noise_seed=2)

    # Assert: std of the per-weight change = lr * sigma * C / n within 10%. With 513 weights
    # the sample std has a relative standard error of 1/sqrt(2*513) = 3.1%, so 10% is > 3 SE.
    after = np.concatenate([w.ravel() for w in trainer.get_weights()])
    measured = np.std((before - after) / lr * n)
    assert measured == pytest.approx(sigma * clip, rel=0.10)


def test_sampling_plan_is_poisson_rate_and_ceil_steps() -> None:
    assert steps_and_rate(num_examples=100, batch_size=32, local_epochs=2) == (8, 0.32)
    assert steps_and_rate(num_examples=30, batch_size=64, local_epochs=1) == (1, 1.0)
    with pytest.raises(ValueError, match="num_examples must be >= 1; got 0"):
        steps_and_rate(num_examples=0, batch_size=8, local_epochs=1)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_dp_settings_refuse_non_positive_noise(bad: float) -> None:
    with pytest.raises(ValueError, match="noise_multiplier must be > 0"):
        DPSettings(noise_multiplier=bad, clip_norm=1.0)


def test_training_without_dp_learns_a_separable_rule() -> None:
    x, y = make_data(200)
    trainer = make_trainer()
    before = trainer.evaluate(x, y).accuracy

    trainer.train(x, y, epochs=30, batch_size=32, learning_rate=0.3, dp=None, proximal_mu=0.0,
                  sampling_seed=0, noise_seed=0)

    assert trainer.evaluate(x, y).accuracy > max(0.9, before)


def test_same_seeds_give_same_update_and_different_sites_differ() -> None:
    x, y = make_data(50)
    trainer = make_trainer()
    start = trainer.get_weights()
    dp = DPSettings(noise_multiplier=1.0, clip_norm=1.0)

    def run(sampling_seed: int) -> list[np.ndarray]:
        trainer.set_weights(start)
        trainer.train(x, y, epochs=1, batch_size=10, learning_rate=0.1, dp=dp, proximal_mu=0.0,
                      sampling_seed=sampling_seed, noise_seed=7)
        return trainer.get_weights()

    first, again, other = run(derive_seed(0, "a", 1)), run(derive_seed(0, "a", 1)), run(
        derive_seed(0, "b", 1))

    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_trainer_is_built_once_and_never_retraced_across_sites_and_rounds() -> None:
    trainer = get_trainer(input_dim=INPUT_DIM, hidden_units=(8, 4), local_optimizer="sgd",
                          dp_backend="bookkeeping")
    dp = DPSettings(noise_multiplier=1.0, clip_norm=1.0)

    for n in (30, 57, 120):  # sites of different sizes, several rounds
        x, y = make_data(n)
        trainer.train(x, y, epochs=1, batch_size=16, learning_rate=0.1, dp=dp, proximal_mu=0.01,
                      sampling_seed=n, noise_seed=n)

    assert get_trainer(input_dim=INPUT_DIM, hidden_units=(8, 4), local_optimizer="sgd",
                       dp_backend="bookkeeping") is trainer
    assert trainer.functions[(True, "poisson", "shared")].experimental_get_tracing_count() == 1


def test_proximal_term_pulls_towards_the_global_weights() -> None:
    x, y = make_data(64)
    trainer = make_trainer()
    start = trainer.get_weights()

    def drift(mu: float) -> float:
        trainer.set_weights(start)
        trainer.train(x, y, epochs=20, batch_size=64, learning_rate=0.2, dp=None, proximal_mu=mu,
                      sampling_seed=0, noise_seed=0)
        return sum(float(np.sum((a - b) ** 2)) for a, b in zip(trainer.get_weights(), start))

    assert drift(5.0) < drift(0.0)


def test_evaluate_scores_hand_computed() -> None:
    scores = np.array([0.9, 0.2, 0.6, 0.4])
    labels = np.array([1, 0, 0, 1])

    result = evaluate_scores(scores, labels)

    assert result.accuracy == 0.5  # 0.9 right, 0.2 right, 0.6 wrong, 0.4 wrong
    assert result.auc == 0.75  # positive/negative pairs ranked right: (0.9>0.2, 0.9>0.6, 0.4>0.2)
    assert result.positives == 2
    assert math.isnan(evaluate_scores(scores, np.ones(4)).auc)


def test_shuffled_epoch_uses_every_row_exactly_once() -> None:
    # With a learning rate of ~0 the weights stay put, so the mean of the per-batch mean
    # losses over one epoch equals the mean loss over all rows iff every row is used once
    # (batch size 10 divides 50). Poisson batches would not give this.
    x, y = make_data(50)
    trainer = make_trainer()

    result = trainer.train(x, y, epochs=1, batch_size=10, learning_rate=1e-12, dp=None,
                           proximal_mu=0.0, sampling_seed=3, noise_seed=0, sampling="shuffle")

    assert result.steps == 5
    assert result.mean_loss == pytest.approx(trainer.evaluate(x, y).loss, rel=1e-4)


def test_unknown_sampling_scheme_is_refused() -> None:
    x, y = make_data(10)

    with pytest.raises(ValueError, match="sampling must be one of poisson, shuffle; got 'x'"):
        make_trainer().train(x, y, epochs=1, batch_size=5, learning_rate=0.1, dp=None,
                             proximal_mu=0.0, sampling_seed=0, noise_seed=0, sampling="x")


def test_a_site_on_the_default_backend_never_imports_tensorflow_privacy() -> None:
    # tensorflow-privacy's package imports TensorFlow Probability and more (~45 MB a
    # site process); only the tfp-fast-clipping reference backend needs it. Nor
    # scikit-learn (~21 MB): the split and the AUC are numpy.
    import subprocess
    import sys

    code = ("import sys, fedcare.site.app, fedcare.site.training as t; "
            "t.get_trainer(input_dim=3, hidden_units=(4,), local_optimizer='sgd', "
            "dp_backend='bookkeeping'); "
            "print(sorted(m for m in ('tensorflow_privacy', 'tensorflow_probability', "
            "'sklearn') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=300)

    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("ties", ["none", "some", "binary scores"])
@pytest.mark.parametrize("n", [2, 7, 40, 150])
def test_the_auc_is_scikit_learns_to_the_bit(ties: str, n: int) -> None:
    from sklearn.metrics import roc_auc_score

    from fedcare.site.training import roc_auc

    rng = np.random.default_rng(n)
    labels = np.array([0, 1] * (n // 2) + [1] * (n % 2))
    rng.shuffle(labels)
    scores = rng.random(n).astype(np.float32)
    if ties == "some":
        scores = np.round(scores, 1)
    elif ties == "binary scores":
        scores = (scores < 0.5).astype(np.float32)

    assert roc_auc(labels, scores) == float(roc_auc_score(labels, scores))


def test_the_auc_of_a_hand_made_case() -> None:
    from fedcare.site.training import roc_auc

    # positives scored 0.9 and 0.4, negatives 0.6 and 0.1: 3 of 4 pairs ordered right
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.6, 0.4, 0.1])) == 0.75
