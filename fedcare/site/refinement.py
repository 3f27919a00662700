"""Site-side refinement of the personalised model, chosen on the site's own validation rows.

Runs at the site after the last federated step (``local-refinement = "site-only"``, when
both the run config and the site policy allow it). The DP-trained global model and the
site's DP-trained private offset are what the federation gives the site; this step adds
candidates trained on the site's rows WITHOUT DP (allowed only because the result never
leaves the site) and keeps whichever predicts the site's validation rows best:

* ``global``, ``offset``: the DP candidates, used as they are;
* ``local``: L2-regularised logistic regression on the site's rows;
* ``blend``: ``w * risk(offset) + (1 - w) * risk(local)``, ``w`` chosen on validation;
* ``head``: a private last layer, logistic regression on the global model's last hidden
  layer (FedPer / FedRep style);
* ``fine-tune``: the global model (offset folded into its last bias) trained further,
  full batch, plain gradient descent.

Validation rows are carved from the TRAINING rows only (stratified k-fold, seeded): every
training row is scored once by a candidate fitted without it; the site's test rows are
never seen here. The choice maximises out-of-fold accuracy, ties broken by out-of-fold log
loss, then by the order of :data:`~fedcare.common.personalised.CANDIDATES` (DP first). The
chosen candidate is then refitted on all training rows. Because the global candidates are
among those compared, a site never ends up with a model that validated worse than the
global or offset model: that is the fallback.

Caveat, stated in the docs: the DP candidates were trained (under DP) on the same rows, so
their validation score is not out-of-sample; with the noise these rows carry this matters
little, and it errs towards keeping the DP model.

The model file (``personalised-model.json``, in the site's state dir, JSON, never pickled)
carries :data:`~fedcare.common.personalised.SITE_ONLY_LABEL` whenever the chosen model
contains site-only training; ``fedcare predict``/``serve`` refuse to load it and the model
bundle never picks it up. The site's privacy ledger and statement are untouched: nothing
here is sent, so the DP statement for what left the site is the same as without it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.common.errors import ModelMismatch
from fedcare.common.files import strict_json_loads, write_json_atomic
from fedcare.common.personalised import CANDIDATES, DP_CANDIDATES, SITE_ONLY_LABEL

__all__ = ["BLEND_WEIGHTS", "PERSONALISED_MODEL_FILENAME", "PersonalisedModel", "Refinement",
           "is_personalised_model_file", "load_personalised_model", "refine",
           "save_personalised_model"]

logger = logging.getLogger(__name__)

PERSONALISED_MODEL_FILENAME = "personalised-model.json"
PERSONALISED_MODEL_FORMAT = "fedcare-personalised-model"
PERSONALISED_MODEL_VERSION = 1
#: Weights of the global-with-offset risk in the blend, tried on validation rows.
BLEND_WEIGHTS = (0.2, 0.35, 0.5, 0.65, 0.8)
#: Folds of the site's training rows used as validation rows (fewer if a class is rarer).
VALIDATION_FOLDS = 5
#: Inverse L2 strength of the site-only logistic regressions (scikit-learn's ``C``).
LOGISTIC_C = 0.3
LOGISTIC_MAX_ITER = 2000
#: Full-batch steps and step size of the non-DP fine-tuning candidate.
FINETUNE_EPOCHS = 20
FINETUNE_LEARNING_RATE = 0.1
#: What the choice maximises on the validation rows: "accuracy" (ties: log loss) or
#: "log-loss" (ties: accuracy).
SELECT_BY = "accuracy"


# ------------------------------------------------------------------------- the models


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def forward(weights: Sequence[np.ndarray], x: np.ndarray,
            offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The shared model (Dense relu layers, then one logit) in numpy: (last hidden layer's
    activations, logit + ``offset``). With no hidden layer the 'activations' are ``x``."""
    a = np.asarray(x, np.float64)
    pairs = list(zip(weights[0::2], weights[1::2], strict=True))
    for kernel, bias in pairs[:-1]:
        a = np.maximum(a @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64), 0.0)
    kernel, bias = pairs[-1]
    z = (a @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64))[:, 0] + offset
    return a, z


@dataclass(frozen=True)
class Logistic:
    """``sigmoid(x . coef + intercept)``, fitted with L2 penalty (scikit-learn, lbfgs)."""

    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> Logistic:
        positives, n = float(np.sum(y)), len(y)
        if positives in (0.0, float(n)):  # one class only: its smoothed log-odds
            rate = (positives + 0.5) / (n + 1.0)
            return cls(np.zeros(x.shape[1]), math.log(rate / (1.0 - rate)))
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=LOGISTIC_C, max_iter=LOGISTIC_MAX_ITER)
        model.fit(x, y)
        return cls(np.asarray(model.coef_[0], np.float64), float(model.intercept_[0]))

    def logit(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.coef + self.intercept

    def to_dict(self) -> dict[str, Any]:
        return {"coef": self.coef.tolist(), "intercept": self.intercept}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Logistic:
        return cls(np.asarray(data["coef"], np.float64), float(data["intercept"]))


def finetune(weights: Sequence[np.ndarray], offset: float, x: np.ndarray, y: np.ndarray, *,
             epochs: int = FINETUNE_EPOCHS, learning_rate: float = FINETUNE_LEARNING_RATE
             ) -> list[np.ndarray]:
    """The shared model with ``offset`` folded into its last bias, trained ``epochs`` full-batch
    plain (non-DP) gradient-descent steps on mean binary cross-entropy."""
    params = [np.array(w, np.float64) for w in weights]
    params[-1] = params[-1] + offset
    n = len(y)
    target = np.asarray(y, np.float64)[:, None]
    for _ in range(epochs):
        acts = [np.asarray(x, np.float64)]
        for i in range(0, len(params) - 2, 2):
            acts.append(np.maximum(acts[-1] @ params[i] + params[i + 1], 0.0))
        grad_z = (_sigmoid(acts[-1] @ params[-2] + params[-1]) - target) / n
        grads: list[np.ndarray] = [np.empty(0)] * len(params)
        for i in range(len(params) - 2, -1, -2):
            grads[i], grads[i + 1] = acts[i // 2].T @ grad_z, grad_z.sum(axis=0)
            if i:
                grad_z = (grad_z @ params[i].T) * (acts[i // 2] > 0)
        params = [p - learning_rate * g for p, g in zip(params, grads, strict=True)]
    return [p.astype(np.float32) for p in params]


@dataclass(frozen=True, kw_only=True)
class PersonalisedModel:
    """The site's refined personalised model: everything but the global weights it sits on."""

    choice: str
    offset: float
    run: str
    blend_weight: float | None = None
    local: Logistic | None = None
    head: Logistic | None = None
    finetuned: tuple[np.ndarray, ...] | None = None
    validation: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    validation_folds: int = 0

    def __post_init__(self) -> None:
        if self.choice not in CANDIDATES:
            raise ValueError(f"personalised model: choice must be one of "
                             f"{', '.join(CANDIDATES)}; got {self.choice!r}")

    @property
    def site_only(self) -> bool:
        """True when the model contains training on the site's rows without DP."""
        return self.choice not in DP_CANDIDATES

    @property
    def label(self) -> str:
        return SITE_ONLY_LABEL if self.site_only else (
            "personalised model: DP-trained global model and private offset only")

    def risk(self, weights: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
        """The personalised risk of each row of ``x`` (encoded like the training rows)."""
        return _risk(self.choice, weights, x, offset=self.offset, local=self.local,
                     head=self.head, finetuned=self.finetuned, blend_weight=self.blend_weight)

    def to_dict(self) -> dict[str, Any]:
        return {"format": PERSONALISED_MODEL_FORMAT, "format-version": PERSONALISED_MODEL_VERSION,
                "label": self.label, "contains-site-only-training": self.site_only,
                "never-share": self.site_only, "run": self.run, "choice": self.choice,
                "offset": self.offset, "blend-weight": self.blend_weight,
                "local": None if self.local is None else self.local.to_dict(),
                "head": None if self.head is None else self.head.to_dict(),
                "fine-tuned": None if self.finetuned is None else [
                    {"shape": list(w.shape), "values": w.ravel().tolist()}
                    for w in self.finetuned],
                "validation": {k: dict(v) for k, v in self.validation.items()},
                "validation-folds": self.validation_folds}

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> PersonalisedModel:
        if not is_personalised_model(data) or data.get("format-version") != \
                PERSONALISED_MODEL_VERSION:
            raise ModelMismatch(f"{path}: personalised model must be a "
                                f"{PERSONALISED_MODEL_FORMAT} object of format-version "
                                f"{PERSONALISED_MODEL_VERSION}; got {str(data)[:120]!r}")
        try:
            tuned = data["fine-tuned"]
            return cls(choice=str(data["choice"]), offset=float(data["offset"]),
                       run=str(data["run"]), blend_weight=data["blend-weight"],
                       local=None if data["local"] is None else Logistic.from_dict(data["local"]),
                       head=None if data["head"] is None else Logistic.from_dict(data["head"]),
                       finetuned=None if tuned is None else tuple(
                           np.asarray(w["values"], np.float32).reshape(w["shape"])
                           for w in tuned),
                       validation=data["validation"],
                       validation_folds=int(data["validation-folds"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ModelMismatch(f"{path}: personalised model is malformed: {err}") from err


def _risk(choice: str, weights: Sequence[np.ndarray], x: np.ndarray, *, offset: float,
          local: Logistic | None, head: Logistic | None,
          finetuned: Sequence[np.ndarray] | None, blend_weight: float | None) -> np.ndarray:
    hidden, z = forward(weights, x, offset)
    if choice == "global":
        return _sigmoid(z - offset)
    if choice == "offset":
        return _sigmoid(z)
    if choice == "local" and local is not None:
        return _sigmoid(local.logit(x))
    if choice == "blend" and local is not None and blend_weight is not None:
        return blend_weight * _sigmoid(z) + (1 - blend_weight) * _sigmoid(local.logit(x))
    if choice == "head" and head is not None:
        return _sigmoid(head.logit(hidden))
    if choice == "fine-tune" and finetuned is not None:
        return _sigmoid(forward(finetuned, x)[1])
    raise ModelMismatch(f"personalised model: {choice} needs its fitted part; got none")


# ------------------------------------------------------------------------- choosing


@dataclass(frozen=True, kw_only=True)
class Refinement:
    """Every candidate refitted on all training rows, their validation scores and the
    choice; :meth:`risk` scores any candidate (the benchmark reports each of them)."""

    model: PersonalisedModel
    weights: tuple[np.ndarray, ...]

    @property
    def choice(self) -> str:
        return self.model.choice

    def risk(self, candidate: str, x: np.ndarray) -> np.ndarray:
        m = self.model
        return _risk(candidate, self.weights, x, offset=m.offset, local=m.local, head=m.head,
                     finetuned=m.finetuned, blend_weight=m.blend_weight)

    def chosen_only(self) -> PersonalisedModel:
        """The model to keep: the chosen candidate's parts only."""
        m, c = self.model, self.model.choice
        return PersonalisedModel(
            choice=c, offset=m.offset, run=m.run,
            blend_weight=m.blend_weight if c == "blend" else None,
            local=m.local if c in ("local", "blend") else None,
            head=m.head if c == "head" else None,
            finetuned=m.finetuned if c == "fine-tune" else None,
            validation=m.validation, validation_folds=m.validation_folds)


def validation_folds(y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded folds of the training rows: stratified when every class has >= 2 rows."""
    from sklearn.model_selection import KFold, StratifiedKFold

    y = np.asarray(y)
    rarest = int(min(np.sum(y == 1), np.sum(y == 0)))
    if rarest >= 2:
        splitter: Any = StratifiedKFold(n_splits=min(VALIDATION_FOLDS, rarest), shuffle=True,
                                        random_state=seed % 2**32)
        return list(splitter.split(np.zeros(len(y)), y))
    splitter = KFold(n_splits=min(VALIDATION_FOLDS, len(y)), shuffle=True,
                     random_state=seed % 2**32)
    return list(splitter.split(np.zeros(len(y))))


def _scores(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return {"accuracy": float(np.mean((p >= 0.5) == (y == 1))),
            "log-loss": float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))}


def _rank(scores: Mapping[str, float], candidate: str) -> tuple[float, float, int]:
    if SELECT_BY == "log-loss":
        return (scores["log-loss"], -scores["accuracy"], CANDIDATES.index(candidate))
    return (-scores["accuracy"], scores["log-loss"], CANDIDATES.index(candidate))


def refine(*, weights: Sequence[np.ndarray], offset: float, x: np.ndarray, y: np.ndarray,
           seed: int, run: str) -> Refinement:
    """Choose the site's personalised model on validation rows carved from ``x, y`` (the
    site's TRAINING rows, encoded), then refit the choice on all of them."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    weights = tuple(np.asarray(w, np.float32) for w in weights)
    hidden, z = forward(weights, x, offset)
    has_head = len(weights) > 2  # without a hidden layer a private head is 'local'
    names = [c for c in CANDIDATES if has_head or c != "head"]
    out_of_fold = {c: np.empty(len(y)) for c in ("local", "head", "fine-tune")}
    out_of_fold["global"], out_of_fold["offset"] = _sigmoid(z - offset), _sigmoid(z)
    folds = validation_folds(y, seed)
    for train, held in folds:
        out_of_fold["local"][held] = _sigmoid(Logistic.fit(x[train], y[train]).logit(x[held]))
        if has_head:
            out_of_fold["head"][held] = _sigmoid(
                Logistic.fit(hidden[train], y[train]).logit(hidden[held]))
        tuned = finetune(weights, offset, x[train], y[train])
        out_of_fold["fine-tune"][held] = _sigmoid(forward(tuned, x[held])[1])
    blends = {w: w * out_of_fold["offset"] + (1 - w) * out_of_fold["local"]
              for w in BLEND_WEIGHTS}
    blend_weight = min(BLEND_WEIGHTS, key=lambda w: _rank(_scores(blends[w], y), "blend"))
    out_of_fold["blend"] = blends[blend_weight]
    validation = {c: _scores(out_of_fold[c], y) for c in names}
    choice = min(names, key=lambda c: _rank(validation[c], c))
    model = PersonalisedModel(
        choice=choice, offset=float(offset), run=run, blend_weight=blend_weight,
        local=Logistic.fit(x, y), head=Logistic.fit(hidden, y) if has_head else None,
        finetuned=tuple(finetune(weights, offset, x, y)), validation=validation,
        validation_folds=len(folds))
    logger.info("personalised model chosen on %d validation folds of %d training rows: %s "
                "(validation accuracy %s)", len(folds), len(y), choice,
                ", ".join(f"{c} {validation[c]['accuracy']:.3f}" for c in names))
    return Refinement(model=model, weights=weights)


# ------------------------------------------------------------------------- the file


def is_personalised_model(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == PERSONALISED_MODEL_FORMAT


def is_personalised_model_file(path: Path) -> bool:
    """True for a personalised-model file (by name or by content): never a shareable model."""
    path = Path(path)
    if path.name == PERSONALISED_MODEL_FILENAME:
        return True
    try:
        head = path.read_bytes()[:200]
    except OSError:
        return False
    return PERSONALISED_MODEL_FORMAT.encode() in head


def save_personalised_model(state_dir: Path, model: PersonalisedModel) -> Path:
    path = Path(state_dir) / PERSONALISED_MODEL_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, model.to_dict())
    logger.warning("%s saved at the site: %s (%s)", path, model.choice, model.label)
    return path


def load_personalised_model(state_dir: Path) -> PersonalisedModel | None:
    path = Path(state_dir) / PERSONALISED_MODEL_FILENAME
    if not path.is_file():
        return None
    return PersonalisedModel.from_dict(strict_json_loads(path.read_text(encoding="utf-8")), path)


# ------------------------------------------------------------------------- at the site


def refine_at_site(config: Any, site: Any, weights: Sequence[np.ndarray], *,
                   run_id: str) -> dict[str, float] | None:
    """After the site's DP fine-tuning: refine its personalised model on its own rows if the
    run asks for ``local-refinement = "site-only"`` and the site policy allows it (else
    ``None``: the personalised model stays the DP one). Keeps the chosen model in the
    site's state dir; returns scores on the site's held-out rows for the reply (evaluation
    metrics, as every round's), never a weight."""
    from fedcare.common.personalised import candidate_key, choice_key
    from fedcare.common.runid import run_of
    from fedcare.site.personal import load_private_part
    from fedcare.site.policy import default_policy, local_refinement
    from fedcare.site.site import load_site
    from fedcare.site.training import derive_seed, evaluate_scores

    if local_refinement(site.policy or default_policy(), config) != "site-only":
        return None
    run = run_of(run_id)
    part = load_private_part(site.state_dir)
    offset = part.offset if part is not None and part.run == run else 0.0
    data = load_site(config, site)
    result = refine(weights=weights, offset=offset, x=data.x_train, y=data.y_train,
                    seed=derive_seed(config.seed, site.name, "refine"), run=run)
    save_personalised_model(site.state_dir, result.chosen_only())
    metrics: dict[str, float] = {choice_key(): float(CANDIDATES.index(result.choice))}
    for candidate in result.model.validation:
        scored = evaluate_scores(result.risk(candidate, data.x_test), data.y_test)
        metrics[candidate_key(candidate, "accuracy")] = scored.accuracy
        metrics[candidate_key(candidate, "auc")] = scored.auc
    return metrics
