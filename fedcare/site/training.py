"""Local training at a site: DP-SGD with Poisson sampling, compiled once per process.

Cost model (measured, see docs/performance.md): Flower's template rebuilds and
recompiles the Keras model on every call (~4 s a round). Here a process builds one
:class:`LocalTrainer` per model shape and reuses it for every round and every site
it serves; a whole round of local steps runs inside one ``tf.function`` whose inputs
have dynamic shapes, so nothing is retraced between rounds or sites.

DP-SGD step (example-level, add/remove-one adjacency), per step:

1. Poisson sampling (default): every training row joins the batch independently
   with probability ``q`` (variable batch size, as the accountant assumes). Or, with
   ``sampling="shuffle"``, fixed-size batches of a fresh permutation each epoch, for
   which the accountant claims no amplification (see ``fedcare.privacy``).
2. Per-example gradients clipped to L2 norm ``C``, then summed.
3. Gaussian noise ``N(0, (sigma*C)^2)`` added to the sum; divided by the *expected*
   batch size ``q*n`` (a fixed denominator, so the batch size leaks nothing).
4. Optional FedProx term ``mu*(w - w_global)``: data-independent, so it is
   post-processing and costs no privacy.

Personalisation (``personal=True``): a site-private scalar *offset* is added to the
logit. It is trained in the SAME clipped, noised step as the shared weights: its
per-example gradient is ``d loss_i / d logit_i``, the very ``g_i`` of the last Dense
layer's bias, so ``g_i^2`` joins each example's squared norm before clipping, the
clipped ``g_i`` join the sum, and the sum gets Gaussian noise of the same std. The
per-example vector (shared weights, offset) is clipped to ``C`` as a whole, so the
step is one Gaussian mechanism of sensitivity ``C`` and the ledger's spend covers the
offset unchanged. The offset's noise is drawn after the shared weights' noise, so the
shared weights see the same noise stream with and without it. The offset takes plain SGD
steps of its own size (``offset_learning_rate``) on its noised gradient. With ``train_shared=False``
(fine-tuning the private part alone) only the offset's gradient is clipped, noised and
applied; the shared weights stay as they are.

Two interchangeable implementations of step 2 ("backends"):

* ``bookkeeping`` (default): one forward and one backward pass. For a Dense layer the
  per-example gradient is the outer product ``a_i g_i^T`` of the layer input and the
  gradient w.r.t. its pre-activation, so its norm is ``||a_i|| * ||g_i||`` and the
  clipped sum is ``A^T diag(w) G`` (Bu et al. 2022, "book-keeping" clipping).
* ``tfp-fast-clipping``: tensorflow-privacy's fast gradient clipping
  (``clip_grads.compute_clipped_gradients_and_outputs``), which needs a second
  forward/backward pass. Kept as the reference implementation; the tests check both
  give the same clipped sums.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from fedcare.common.model import NDArrays, build_model, check_compatible, weights_of

logger = logging.getLogger(__name__)

DECISION_THRESHOLD = 0.5
_SEED_BITS = 63


@dataclass(frozen=True, kw_only=True)
class DPSettings:
    """The noise actually used for one round (already calibrated for this site)."""

    noise_multiplier: float
    clip_norm: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"training: noise_multiplier must be > 0; got {self.noise_multiplier}")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"training: clip_norm must be > 0; got {self.clip_norm}")


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    steps: int
    num_examples: int
    sampling_rate: float
    mean_loss: float  # stays at the site: it is computed on private rows without DP
    seconds: float


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    num_examples: int
    loss: float
    accuracy: float
    auc: float  # NaN when the held-out rows contain one class only
    positives: int


SAMPLINGS = ("poisson", "shuffle")


def steps_and_rate(*, num_examples: int, batch_size: int, local_epochs: int) -> tuple[int, float]:
    """Sampling plan: rate ``q = min(1, B/n)``, ``ceil(n/B)`` steps an epoch."""
    if num_examples < 1:
        raise ValueError(f"training: num_examples must be >= 1; got {num_examples}")
    rate = min(1.0, batch_size / num_examples)
    return local_epochs * math.ceil(num_examples / batch_size), rate


def derive_seed(*parts: int | str) -> int:
    """A stable seed from run seed, site name and round (no Python ``hash`` randomisation)."""
    words = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]) >> 1


def secure_seed() -> int:
    """A seed from the OS entropy pool, for noise nobody can reproduce."""
    return int.from_bytes(os.urandom(8), "little") >> (64 - _SEED_BITS)


class LocalTrainer:
    """One compiled model + optimizer + training functions, reused across rounds and sites."""

    def __init__(self, *, input_dim: int, hidden_units: Sequence[int], local_optimizer: str,
                 dp_backend: str) -> None:
        self.input_dim = input_dim
        self.model = build_model(input_dim=input_dim, hidden_units=hidden_units, seed=0)
        self._dense = list(self.model.layers)
        self._vars = self.model.trainable_variables
        # Keras copies a learning rate into a variable of its own: set it through the
        # optimizer (``self._optimizer.learning_rate = ...``), never through a variable we hold.
        if local_optimizer == "adam":
            self._optimizer: tf.keras.optimizers.Optimizer = tf.keras.optimizers.Adam()
        elif local_optimizer == "sgd":
            self._optimizer = tf.keras.optimizers.SGD()
        else:
            raise ValueError(
                f"training: local_optimizer must be sgd or adam; got {local_optimizer!r}")
        # The site-private logit offset (see the module docstring); never in get_weights().
        self.offset = tf.Variable(0.0, dtype=tf.float32, name="private_offset")
        self._optimizer.build(self._vars)
        self._anchor = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self._vars]
        self._sampling = tf.random.Generator.from_seed(0)
        self._noise = tf.random.Generator.from_seed(0)
        if dp_backend == "bookkeeping":
            clipped_sum = self._bookkeeping_clipped_sum
        elif dp_backend == "tfp-fast-clipping":
            # Imported only here: tensorflow-privacy's package imports TensorFlow
            # Probability, scikit-learn's and SciPy's optimisers (~45 MB a process) that
            # the default backend never uses.
            from tensorflow_privacy.privacy.fast_gradient_clipping import layer_registry

            self._registry = layer_registry.make_default_layer_registry()
            clipped_sum = self._tfp_clipped_sum
        else:
            raise ValueError(f"training: dp_backend must be bookkeeping or tfp-fast-clipping; "
                             f"got {dp_backend!r}")
        self.clipped_sum = clipped_sum
        self.dp_backend = dp_backend
        data_spec = [tf.TensorSpec([None, input_dim], tf.float32),
                     tf.TensorSpec([None], tf.float32)]
        self._signature = (data_spec + [tf.TensorSpec([], tf.int32)] * 3
                           + [tf.TensorSpec([], tf.float32)] * 6)
        # One compiled loop per (DP on/off, sampling scheme, what is trained: "shared",
        # "shared+offset" or "offset"), traced on first use only.
        self.functions: dict[tuple[bool, str, str], Any] = {}
        self._predict = tf.function(
            lambda x, offset: tf.sigmoid(self._logits_with_trace(x, None, offset)[0]),
            input_signature=[data_spec[0], tf.TensorSpec([], tf.float32)], autograph=False)

    # -- weights -----------------------------------------------------------------------
    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        check_compatible(self.model, weights)
        self.model.set_weights(list(weights))

    def get_weights(self) -> NDArrays:
        """The SHARED arrays only: the private offset is never among them."""
        return weights_of(self.model)

    def set_offset(self, value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"training: private offset must be finite; got {value}")
        self.offset.assign(float(value))

    def get_offset(self) -> float:
        return float(self.offset.numpy())

    # -- training ----------------------------------------------------------------------
    def _function(self, dp: bool, sampling: str, trained: str) -> Any:
        if sampling not in SAMPLINGS:
            raise ValueError(f"training: sampling must be one of {', '.join(SAMPLINGS)}; "
                             f"got {sampling!r}")
        if trained != "shared" and dp and self.dp_backend != "bookkeeping":
            raise ValueError("training: a private offset needs dp_backend bookkeeping; "
                             f"got {self.dp_backend!r}")
        key = (dp, sampling, trained)
        if key not in self.functions:
            self.functions[key] = tf.function(
                functools.partial(self._run, dp=dp, shuffle=sampling == "shuffle",
                                  personal=trained != "shared", shared=trained != "offset"),
                input_signature=self._signature, autograph=False)
        return self.functions[key]

    def train(self, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
              learning_rate: float, dp: DPSettings | None, proximal_mu: float,
              sampling_seed: int, noise_seed: int, sampling: str = "poisson",
              personal: bool = False, train_shared: bool = True,
              offset_learning_rate: float | None = None) -> TrainResult:
        """Run ``epochs`` local epochs from the current weights (the global model).

        ``personal``: also train the private offset (from its current value) in the same
        clipped, noised steps; without it the offset is neither used nor changed.
        ``train_shared=False`` (with ``personal``): train the offset alone.
        The offset takes plain SGD steps of ``offset_learning_rate`` (default: the
        ``learning_rate``) on its noised gradient, whatever the shared weights' optimizer:
        a step size applied to an already-noised gradient is post-processing.
        """
        if not (train_shared or personal):
            raise ValueError("training: train_shared=False needs personal=True (nothing to train)")
        offset_lr = learning_rate if offset_learning_rate is None else offset_learning_rate
        if not (math.isfinite(offset_lr) and offset_lr > 0):
            raise ValueError(f"training: offset_learning_rate must be > 0; got {offset_lr}")
        trained = ("shared+offset" if train_shared else "offset") if personal else "shared"
        started = time.perf_counter()
        fn = self._function(dp is not None, sampling, trained)
        steps, rate = steps_and_rate(num_examples=len(x), batch_size=batch_size,
                                     local_epochs=epochs)
        for var in self._optimizer.variables:
            var.assign(tf.zeros_like(var))
        for anchor, var in zip(self._anchor, self._vars, strict=True):
            anchor.assign(var)
        self._optimizer.learning_rate = learning_rate
        self._sampling.reset_from_seed(sampling_seed)
        self._noise.reset_from_seed(noise_seed)
        noise_std = dp.noise_multiplier * dp.clip_norm if dp else 0.0
        clip = dp.clip_norm if dp else 0.0
        # The expected batch, q*n = min(B, n), is also the shuffled batch size: a fixed
        # denominator either way.
        mean_loss = fn(tf.constant(x, tf.float32), tf.constant(y, tf.float32),
                       tf.constant(epochs), tf.constant(steps // epochs),
                       tf.constant(batch_size), tf.constant(rate), tf.constant(rate * len(x)),
                       tf.constant(noise_std), tf.constant(clip), tf.constant(proximal_mu),
                       tf.constant(offset_lr, tf.float32))
        return TrainResult(steps=steps, num_examples=len(x), sampling_rate=rate,
                           mean_loss=float(mean_loss), seconds=time.perf_counter() - started)

    def _run(self, x: tf.Tensor, y: tf.Tensor, epochs: tf.Tensor, steps_per_epoch: tf.Tensor,
             batch_size: tf.Tensor, rate: tf.Tensor, expected_batch: tf.Tensor,
             noise_std: tf.Tensor, clip: tf.Tensor, proximal_mu: tf.Tensor,
             offset_lr: tf.Tensor, *, dp: bool, shuffle: bool, personal: bool,
             shared: bool) -> tf.Tensor:
        """The round's local steps as two nested ``tf.while_loop``s (traced without
        AutoGraph: converting this code took ~3 s of each process's first round)."""
        n = tf.shape(x)[0]
        offset = self.offset if personal else None
        num_shared = len(self._vars) if shared else 0

        def step(order: tf.Tensor, i: tf.Tensor, loss_total: tf.Tensor
                 ) -> tuple[tf.Tensor, tf.Tensor]:
            if shuffle:
                picked = order[i * batch_size:tf.minimum((i + 1) * batch_size, n)]
            else:
                picked = tf.where(self._sampling.uniform([n]) < rate)[:, 0]
            xb, yb = tf.gather(x, picked), tf.gather(y, picked)
            if dp:
                grad_sums, loss_sum = self.clipped_sum(xb, yb, clip, offset, shared=shared)
                # In list order: the shared weights' noise first, the offset's last.
                grad_sums = [g + self._noise.normal(tf.shape(g), stddev=noise_std)
                             for g in grad_sums]
            else:
                grad_sums, loss_sum = self._plain_sum(xb, yb, offset, shared=shared)
            if shared:
                grads = [g / expected_batch + proximal_mu * (v - a) for g, v, a in
                         zip(grad_sums[:num_shared], self._vars, self._anchor, strict=True)]
                self._optimizer.apply_gradients(zip(grads, self._vars, strict=True))
            if personal:  # private: plain SGD at its own rate, no proximal term
                self.offset.assign_sub(offset_lr * grad_sums[num_shared] / expected_batch)
            return i + 1, loss_total + loss_sum / tf.maximum(
                tf.cast(tf.size(picked), tf.float32), 1.0)

        def epoch(e: tf.Tensor, loss_total: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            order = tf.argsort(self._sampling.uniform([n])) if shuffle else tf.range(n)
            _, loss_total = tf.while_loop(
                lambda i, _: i < steps_per_epoch, functools.partial(step, order),
                (tf.constant(0), loss_total))
            return e + 1, loss_total

        _, loss_total = tf.while_loop(lambda e, _: e < epochs, epoch,
                                      (tf.constant(0), tf.constant(0.0)))
        return loss_total / tf.cast(epochs * steps_per_epoch, tf.float32)

    def _logits_with_trace(self, xb: tf.Tensor, tape: tf.GradientTape | None,
                           offset: tf.Tensor | None = None
                           ) -> tuple[tf.Tensor, list[tf.Tensor], list[tf.Tensor]]:
        """Forward pass that records each Dense layer's input and watched pre-activation.

        With ``offset`` the private offset is added to the logit (the last pre-activation)."""
        h, inputs, pre = xb, [], []
        last = len(self._dense) - 1
        for i, layer in enumerate(self._dense):
            inputs.append(h)
            z = tf.matmul(h, layer.kernel) + layer.bias
            if i == last and offset is not None:
                z = z + offset
            if tape is not None:
                tape.watch(z)
            pre.append(z)
            h = layer.activation(z) if i < last else z
        return tf.squeeze(h, -1), inputs, pre

    def _bookkeeping_clipped_sum(self, xb: tf.Tensor, yb: tf.Tensor, clip: tf.Tensor,
                                 offset: tf.Tensor | None = None, *, shared: bool = True
                                 ) -> tuple[list[tf.Tensor], tf.Tensor]:
        """Clipped per-example gradient sums, one array per shared variable, then (with
        ``offset``) one scalar for the private offset, all clipped together. With
        ``shared=False`` only the offset's per-example gradients, clipped on their own."""
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            logits, inputs, pre = self._logits_with_trace(xb, tape, offset)
            loss_sum = tf.reduce_sum(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=yb, logits=logits))
        pre_grads = tape.gradient(loss_sum, pre)
        if offset is not None and not shared:
            g = pre_grads[-1][:, 0]
            return [tf.reduce_sum(g * (clip / tf.maximum(clip, tf.abs(g))))], loss_sum
        # ||d loss_i / d[W, b]||^2 = (||a_i||^2 + 1) * ||g_i||^2 for each Dense layer.
        sq_norms = tf.add_n([(tf.reduce_sum(a * a, 1) + 1.0) * tf.reduce_sum(g * g, 1)
                             for a, g in zip(inputs, pre_grads, strict=True)])
        if offset is not None:  # d loss_i / d offset = g_i of the logit
            sq_norms += tf.reduce_sum(pre_grads[-1] * pre_grads[-1], 1)
        weights = clip / tf.maximum(clip, tf.sqrt(sq_norms))
        grads: list[tf.Tensor] = []
        for a, g in zip(inputs, pre_grads, strict=True):
            wg = g * weights[:, None]
            grads += [tf.matmul(a, wg, transpose_a=True), tf.reduce_sum(wg, 0)]
        if offset is not None:
            grads.append(tf.reduce_sum(pre_grads[-1][:, 0] * weights))
        return grads, loss_sum

    def _tfp_clipped_sum(self, xb: tf.Tensor, yb: tf.Tensor, clip: tf.Tensor,
                         offset: tf.Tensor | None = None, *, shared: bool = True
                         ) -> tuple[list[tf.Tensor], tf.Tensor]:
        # Refused with a private offset in _function (and by RunConfig): tf-privacy's
        # registry knows Keras layers only, not a free variable added to the logit.
        def summed_loss(y_true: tf.Tensor, y_pred: tf.Tensor,
                        sample_weight: tf.Tensor | None = None) -> tf.Tensor:
            per_example = tf.keras.losses.binary_crossentropy(y_true, y_pred)
            if sample_weight is not None:
                per_example = per_example * sample_weight
            return tf.reduce_sum(per_example)

        from tensorflow_privacy.privacy.fast_gradient_clipping import clip_grads

        grads, _, loss_sum = clip_grads.compute_clipped_gradients_and_outputs(
            self.model, clip, self._registry, xb, yb[:, None], clipping_loss=summed_loss)
        return list(grads), loss_sum

    def _plain_sum(self, xb: tf.Tensor, yb: tf.Tensor, offset: tf.Tensor | None = None, *,
                   shared: bool = True) -> tuple[list[tf.Tensor], tf.Tensor]:
        with tf.GradientTape() as tape:
            logits, _, _ = self._logits_with_trace(xb, tape, offset)
            loss_sum = tf.reduce_sum(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=yb, logits=logits))
        targets = ([*self._vars] if shared else []) + ([offset] if offset is not None else [])
        return tape.gradient(loss_sum, targets), loss_sum

    # -- evaluation --------------------------------------------------------------------
    def predict(self, x: np.ndarray, *, offset: float = 0.0) -> np.ndarray:
        """Risks from the current shared weights, plus ``offset`` on the logit."""
        return np.asarray(self._predict(tf.constant(x, tf.float32), tf.constant(offset,
                                                                                tf.float32)),
                          dtype=np.float64)

    def evaluate(self, x: np.ndarray, y: np.ndarray, *, offset: float = 0.0) -> EvalResult:
        return evaluate_scores(self.predict(x, offset=offset), y)


def evaluate_scores(scores: np.ndarray, y: np.ndarray) -> EvalResult:
    """Accuracy at 0.5, ROC AUC and log loss of risk scores against 0/1 labels."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else math.nan
    accuracy = float(np.mean((scores >= DECISION_THRESHOLD) == (y == 1))) if len(y) else math.nan
    auc = roc_auc(y, scores) if len(np.unique(y)) == 2 else math.nan
    return EvalResult(num_examples=len(y), loss=loss, accuracy=accuracy, auc=auc,
                      positives=int(y.sum()))


@functools.lru_cache(maxsize=4)
def get_trainer(*, input_dim: int, hidden_units: tuple[int, ...], local_optimizer: str,
                dp_backend: str) -> LocalTrainer:
    """The process-wide trainer for this model shape (built and traced once)."""
    logger.info("building local trainer: input_dim=%d hidden=%s", input_dim, hidden_units)
    return LocalTrainer(input_dim=input_dim, hidden_units=hidden_units,
                        local_optimizer=local_optimizer, dp_backend=dp_backend)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of 0/1 ``labels`` (both present) and ``scores``: the
    hospital report's ROC curve (:func:`fedcare.hospital.validation_report.roc_points`,
    the same points as scikit-learn's ``roc_curve``) integrated by trapezoids as
    scikit-learn's ``roc_auc_score`` does, so the same figure to the last bit (tested),
    without importing scikit-learn (~21 MB a site process)."""
    from scipy.integrate import trapezoid  # scipy is loaded already (dp-accounting)

    from fedcare.hospital.validation_report import roc_points

    curve = roc_points(labels, scores)
    if curve is None:
        raise ValueError("roc_auc: labels must hold both classes; got one")
    fpr, tpr, _ = curve
    return float(trapezoid(tpr, fpr))
