"""The hospital-side model bundle: load the global model safely, predict, explain.

A hospital holds three files: the global model ``model.keras``, its manifest
``model.json`` (written beside it by :mod:`fedcare.server.checkpoint`) and its OWN
``preprocessor.json`` (the site-local scaling fitted on its training rows). The
:class:`ModelBundle` refuses to load unless the three belong together (same schema, same
encoded features in the same order, a model of the right width with one sigmoid output),
so a risk is never computed from inputs scaled for another model.

Safety: the model file must be a Keras v3 ``.keras`` zip; it is loaded from a private
copy of the bytes that were hashed (``describe()["model-sha256"]``) with
``safe_mode=True`` and ``compile=False``. Keras 2.15 sends any other file (HDF5,
SavedModel) to its legacy loader, where ``safe_mode`` does not apply, so those are
refused before Keras sees them. Nothing is unpickled.

Explanations are integrated gradients (Sundararajan, Taly and Yan, 2017) of the risk
with respect to the ENCODED inputs, from the all-zeros encoded vector:

* a standardized numeric feature at 0 is this site's training mean, so its contribution
  says how far the patient's value, compared with the site's average patient, moved the
  risk;
* a binary feature at 0 means "absent / no" (e.g. not a smoker), not the site's share;
  a patient with 0 there gets contribution exactly 0 for it;
* a one-hot column at 0 means "not this category"; the baseline has every one-hot
  column of a categorical feature at 0, a point no real patient occupies. Each
  category column of a patient's own category carries that category's effect relative
  to "no category"; the other columns are 0 for the patient and so contribute exactly 0.

The baseline is site-specific (each site standardizes with its own statistics), so two
hospitals' explanations of the same patient can differ. Contributions sum to
``risk - baseline_risk`` up to the path integral's discretization error (trapezoid rule
with ``steps`` intervals), which shrinks as ``steps`` grows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import tensorflow as tf

from fedcare.common.errors import ConfigError, DataValidationError, ModelMismatch
from fedcare.common.files import fsync_dir, strict_json_loads
from fedcare.common.formats import MANIFEST, MANIFEST_FORMAT
from fedcare.common.personalised import SITE_ONLY_LABEL
from fedcare.data.datasets import DATASETS, schema_for
from fedcare.data.preprocess import PREPROCESSOR_FORMAT, PREPROCESSOR_VERSION, Preprocessor
from fedcare.data.schema import Column, TabularSchema, format_number
from fedcare.data.validate import (
    MAX_LISTED_PROBLEMS,
    DataProblem,
    load_features_csv,
    validate_frame,
)
from fedcare.site.pairing import check_model_run
from fedcare.site.personal import PrivatePart, load_private_part
from fedcare.site.refinement import PERSONALISED_MODEL_FILENAME, is_personalised_model_file

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
DEFAULT_THRESHOLD = 0.5
DEFAULT_STEPS = 64
TOP_K = 3
"""How many features ``Prediction.to_dict`` and ``predict_csv`` list each way."""
REQUEST_SOURCE = "request"
MANIFEST_KEYS: tuple[str, ...] = ("format", "version", "run", "fedcare-version", "dataset",
                                  "schema", "features", "privacy", "site-level-privacy")
"""Keys a manifest must hold (it may hold more, e.g. hidden-units, rounds)."""
PREDICTION_COLUMNS: tuple[str, ...] = ("row", "risk", "label", "pushed_up", "pushed_down")
_PREDICT_BATCH = 4096
_PATH_ROWS = 1 << 16  # rows of (patient, step) pairs per integrated-gradients call


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, kw_only=True)
class Explanation:
    """Integrated-gradients attributions of one patient's risk to the encoded features.

    ``contributions`` sum to ``risk - baseline_risk`` (approximately; see the module
    docstring), ``baseline_risk`` being the model's risk at the all-zeros encoded input.
    """

    contributions: dict[str, float]
    baseline_risk: float

    def top(self, k: int = TOP_K) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The ``k`` features that pushed the risk up most, and the ``k`` that pushed it down.

        Pushed up: largest positive contributions first. Pushed down: most negative first.
        Features contributing exactly 0 are in neither list.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"Explanation.top: k must be an integer >= 0; got {k!r}")
        items = list(self.contributions.items())
        up = sorted((i for i in items if i[1] > 0), key=lambda i: -i[1])[:k]
        down = sorted((i for i in items if i[1] < 0), key=lambda i: i[1])[:k]
        return up, down


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """One patient's risk, the label at ``threshold`` (``risk >= threshold``), and why."""

    risk: float
    label: int
    threshold: float
    explanation: Explanation

    def to_dict(self, k: int = TOP_K) -> dict[str, Any]:
        """JSON-ready: risk, label, threshold, baseline risk and the top ``k`` each way."""
        up, down = self.explanation.top(k)
        return {
            "risk": self.risk,
            "label": self.label,
            "threshold": self.threshold,
            "baseline_risk": self.explanation.baseline_risk,
            "pushed_up": [{"feature": f, "contribution": c} for f, c in up],
            "pushed_down": [{"feature": f, "contribution": c} for f, c in down],
        }


# --------------------------------------------------------------------------- loading


def _read_json(path: Path, role: str) -> dict[str, Any]:
    try:
        data = strict_json_loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelMismatch(f"{path}: the {role} must be a strict JSON object; got {exc}") from exc
    if not isinstance(data, dict):
        raise ModelMismatch(f"{path}: the {role} must be a JSON object; "
                            f"got {type(data).__name__}")
    return data


def _names_difference(got: object, want: Sequence[str]) -> str | None:
    """How a feature-name list differs from ``want``, in words (``None``: it does not)."""
    if not isinstance(got, list) or not all(isinstance(n, str) for n in got):
        return f"a list of names; got {type(got).__name__}"
    if got == list(want):
        return None
    if sorted(got) == sorted(want):
        at = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
        return (f"the same {len(want)} names in the same order; got them reordered "
                f"(first difference at position {at}: {got[at]!r} where {want[at]!r} belongs)")
    missing = [n for n in want if n not in got]
    extra = [n for n in got if n not in want]
    return (f"the {len(want)} encoded features of the schema, in order; got {len(got)} "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''})")


def _check_threshold(threshold: object) -> float:
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold) or not 0.0 < threshold < 1.0):
        raise ConfigError([f"model bundle: threshold must be a number in (0, 1); "
                           f"got {threshold!r}"])
    return float(threshold)


def _check_files(paths: dict[str, Path]) -> None:
    problems = []
    for role, path in paths.items():
        if not path.exists():
            problems.append(f"model bundle: {role} must be an existing file; "
                            f"got no file at {os.fspath(path)!r}")
        elif not path.is_file():
            problems.append(f"model bundle: {role} must be a file; "
                            f"got a directory at {os.fspath(path)!r}")
    if problems:
        raise ConfigError(problems)


def _check_manifest(manifest: dict[str, Any], path: Path, model_path: Path) -> TabularSchema:
    head = [f"{path}: manifest {k} must be {w!r}; got {manifest.get(k, '<absent>')!r}"
            for k, w in (("format", MANIFEST_FORMAT), ("version", MANIFEST_VERSION))
            if manifest.get(k) != w or isinstance(manifest.get(k), bool)]
    if head:  # an unknown format: nothing else in it can be trusted to mean anything
        raise ModelMismatch(f"{path}: not a manifest this fedcare can read (model "
                            f"{model_path}):\n  " + "\n  ".join(head))
    problems = []
    absent = [k for k in MANIFEST_KEYS if k not in manifest]
    if absent:
        problems.append(f"{path}: manifest must hold {', '.join(MANIFEST_KEYS)}; "
                        f"missing {', '.join(absent)}")
    named = manifest.get("model")
    if named is not None and named != model_path.name:
        problems.append(f"{path}: manifest describes model file {named!r}; got "
                        f"{model_path.name!r} ({model_path}): a round checkpoint or a "
                        "renamed file? Rename both files together or pass the matching pair")
    dataset = manifest.get("dataset")
    schema = schema_for(dataset) if dataset in DATASETS else None
    if schema is None:
        problems.append(f"{path}: manifest dataset must be one of {', '.join(DATASETS)}; "
                        f"got {dataset!r}")
    elif manifest.get("schema") != schema.name:
        problems.append(f"{path}: manifest schema must be {schema.name!r} (the schema of "
                        f"dataset {dataset!r}); got {manifest.get('schema', '<absent>')!r}")
    if not isinstance(manifest.get("privacy"), dict):
        problems.append(f"{path}: manifest privacy must be an object of per-site figures; "
                        f"got {manifest.get('privacy', '<absent>')!r}")
    if problems or schema is None:
        raise ModelMismatch(f"{path}: manifest of {model_path} is malformed:\n  "
                            + "\n  ".join(problems))
    return schema


def _load_keras(raw: bytes, path: Path) -> tf.keras.Model:
    if path.suffix != ".keras" or not zipfile.is_zipfile(io.BytesIO(raw)):
        raise ModelMismatch(
            f"{path}: model must be a Keras v3 '.keras' zip file; got "
            + ("a file named " + repr(path.name) if path.suffix != ".keras"
               else "a file that is not a zip (legacy HDF5/other formats are refused: Keras "
                    "would load them without safe_mode)"))
    with tempfile.TemporaryDirectory(prefix="fedcare-model-") as tmp:
        copy = Path(tmp) / "model.keras"  # load exactly the bytes that were hashed
        copy.write_bytes(raw)
        try:
            return tf.keras.models.load_model(copy, compile=False, safe_mode=True)
        except Exception as exc:  # Keras raises many types for a bad archive
            raise ModelMismatch(f"{path}: model must be a loadable Keras v3 model "
                                f"(safe mode, no custom code); got {type(exc).__name__}: "
                                f"{exc}") from exc


def _check_model(model: tf.keras.Model, width: int, model_path: Path,
                 manifest_path: Path) -> list[str]:
    problems = []
    input_shape = model.input_shape
    if not (isinstance(input_shape, tuple) and len(input_shape) == 2):
        problems.append(f"{model_path}: model must take one input of shape (rows, features); "
                        f"got input shape {input_shape}")
    elif input_shape[1] != width:
        problems.append(f"{model_path}: model input width must be {width} (the features in "
                        f"{manifest_path}); got {input_shape[1]}")
    output_shape = model.output_shape
    last = model.layers[-1] if model.layers else None
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    if output_shape != (None, 1) or activation != "sigmoid":
        problems.append(f"{model_path}: model output must be a single sigmoid unit (a risk "
                        f"in [0, 1]); got output shape {output_shape} from layer "
                        f"{getattr(last, 'name', None)!r} with activation {activation!r}")
    return problems


class ModelBundle:
    """The global model, its manifest and this site's preprocessing, checked to fit."""

    def __init__(self, *, model: tf.keras.Model, manifest: dict[str, Any],
                 preprocessor: Preprocessor, model_sha256: str,
                 threshold: float = DEFAULT_THRESHOLD,
                 personalisation: dict[str, Any] | None = None) -> None:
        """Prefer :meth:`load`, which checks that the parts belong together."""
        self.threshold = _check_threshold(threshold)
        self.personalisation = personalisation or {"kind": "none", "model": "global"}
        self.model = model
        self.manifest = manifest
        self.preprocessor = preprocessor
        self.schema: TabularSchema = preprocessor.schema
        self.feature_names: tuple[str, ...] = self.schema.encoded_feature_names()
        self.model_sha256 = model_sha256
        width = len(self.feature_names)
        spec = tf.TensorSpec(shape=(None, width), dtype=tf.float32)

        @tf.function(input_signature=[spec])
        def risk(x: tf.Tensor) -> tf.Tensor:
            return model(x, training=False)[:, 0]

        @tf.function(input_signature=[spec, tf.TensorSpec(shape=(None,), dtype=tf.float32),
                                      tf.TensorSpec(shape=(None,), dtype=tf.float32)])
        def integrated_gradients(x: tf.Tensor, alphas: tf.Tensor,
                                 weights: tf.Tensor) -> tf.Tensor:
            # Baseline 0, so the path point at alpha is alpha * x; all (step, patient)
            # points go through the model in one batch. The model treats rows
            # independently (Dense layers, inference mode), so the gradient of the summed
            # risks with respect to a row is that row's own gradient.
            points = alphas[:, None, None] * x[None, :, :]
            flat = tf.reshape(points, (-1, width))
            with tf.GradientTape() as tape:
                tape.watch(flat)
                total = tf.reduce_sum(model(flat, training=False))
            grads = tf.reshape(tape.gradient(total, flat), tf.shape(points))
            return x * tf.tensordot(weights, grads, axes=1)

        self._risk = risk
        self._integrated_gradients = integrated_gradients
        self.baseline_risk = float(risk(tf.zeros((1, width), tf.float32)).numpy()[0])

    @classmethod
    def load(
        cls,
        *,
        model_path: str | os.PathLike[str],
        preprocessor_path: str | os.PathLike[str],
        manifest_path: str | os.PathLike[str] | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        site_dir: str | os.PathLike[str] | None = None,
    ) -> ModelBundle:
        """Load and cross-check the three files; :class:`ModelMismatch` if they do not fit.

        ``manifest_path`` defaults to ``model.json`` beside the model. Missing files raise
        :class:`ConfigError` naming every missing path. With ``site_dir``, the site's
        private part (``private-part.json``, from the model's run) personalises the model;
        without one the global model is used, and ``describe()`` says which it is.
        """
        threshold = _check_threshold(threshold)
        model_p = Path(model_path)
        refuse_personalised_model(model_p)
        manifest_p = Path(manifest_path) if manifest_path is not None else (
            model_p.parent / MANIFEST)
        pre_p = Path(preprocessor_path)
        _check_files({"model_path": model_p, "manifest_path": manifest_p,
                      "preprocessor_path": pre_p})

        manifest = _read_json(manifest_p, "model manifest")
        schema = _check_manifest(manifest, manifest_p, model_p)

        pre_data = _read_json(pre_p, "site preprocessor")
        head = [f"{pre_p}: preprocessor {k} must be {w!r}; got {pre_data.get(k, '<absent>')!r}"
                for k, w in (("format", PREPROCESSOR_FORMAT), ("version", PREPROCESSOR_VERSION))
                if pre_data.get(k) != w or isinstance(pre_data.get(k), bool)]
        if head:
            raise ModelMismatch(f"{pre_p}: not a preprocessor this fedcare can read (for "
                                f"model {model_p}):\n  " + "\n  ".join(head))

        problems = []
        want = schema.encoded_feature_names()
        if pre_data.get("schema") != schema.name:
            problems.append(f"{pre_p}: preprocessor schema must be {schema.name!r} (the schema "
                            f"in {manifest_p}); got {pre_data.get('schema', '<absent>')!r}")
        difference = _names_difference(manifest.get("features"), want)
        if difference:
            problems.append(f"{manifest_p}: manifest features must be {difference}")
        difference = _names_difference(pre_data.get("encoded_feature_names"), want)
        if difference and pre_data.get("schema") == schema.name:
            problems.append(f"{pre_p}: preprocessor encoded_feature_names must be {difference}")
        preprocessor = None
        if not problems:
            try:
                preprocessor = Preprocessor.from_dict(schema, pre_data)
            except ValueError as exc:
                problems.append(f"{pre_p}: {exc}")

        raw = model_p.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if "model-sha256" in manifest and manifest["model-sha256"] != digest:
            problems.append(f"{model_p}: model sha256 must be {manifest['model-sha256']!r} (as "
                            f"written in {manifest_p} with its privacy figures); got {digest!r}")
        model = None
        try:
            model = _load_keras(raw, model_p)
        except ModelMismatch as exc:
            problems.append(str(exc))
        if model is not None:
            problems += _check_model(model, len(want), model_p, manifest_p)
        if problems or preprocessor is None or model is None:
            raise ModelMismatch(
                f"model bundle does not fit together (model {model_p}, manifest {manifest_p}, "
                f"preprocessor {pre_p}): {len(problems)} problem(s):\n  " + "\n  ".join(problems))
        if site_dir is not None:
            check_model_run(manifest, manifest_p, site_dir)
        personalisation = _personalise(model, manifest, site_dir)
        bundle = cls(model=model, manifest=manifest, preprocessor=preprocessor,
                     model_sha256=digest, threshold=threshold, personalisation=personalisation)
        logger.info("loaded model bundle: run %s, %s, %d features, model sha256 %s, "
                    "site preprocessing %s", manifest.get("run"), schema.name, len(want),
                    bundle.model_sha256[:12], pre_p)
        return bundle

    # ----------------------------------------------------------------------- predict

    def encode(self, features: pd.DataFrame) -> np.ndarray:
        """Raw schema feature columns -> encoded float32 rows, with this site's statistics.

        Expects values already checked against the schema (:meth:`predict_frame`,
        :meth:`predict_records` and :func:`predict_csv` check them); NaN is imputed.
        """
        return self.preprocessor.transform(features)

    def _check_encoded(self, x: np.ndarray, action: str) -> np.ndarray:
        array = np.asarray(x, dtype=np.float32)
        width = len(self.feature_names)
        if array.ndim != 2 or array.shape[1] != width:
            raise ValueError(f"ModelBundle.{action}: x must have shape (rows, {width}); "
                             f"got {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"ModelBundle.{action}: x must hold finite numbers; got NaN or "
                             "infinity")
        return array

    def predict_encoded(self, x: np.ndarray) -> np.ndarray:
        """Risk in [0, 1] for each encoded row: float64, shape ``(n,)``."""
        array = self._check_encoded(x, "predict_encoded")
        parts = [self._risk(array[i:i + _PREDICT_BATCH]).numpy()
                 for i in range(0, len(array), _PREDICT_BATCH)]
        return np.concatenate(parts).astype(np.float64) if parts else np.empty(0)

    def explain_encoded(self, x: np.ndarray, *, steps: int = DEFAULT_STEPS) -> list[Explanation]:
        """Integrated gradients for each encoded row, baseline all zeros, ``steps`` intervals.

        Trapezoid rule on ``steps + 1`` points of the straight path; one vectorized
        gradient call per batch of patients.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"ModelBundle.explain_encoded: steps must be an integer >= 1; "
                             f"got {steps!r}")
        array = self._check_encoded(x, "explain_encoded")
        alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)
        weights = np.full(steps + 1, 1.0 / steps, dtype=np.float32)
        weights[[0, -1]] = 0.5 / steps
        batch = max(1, _PATH_ROWS // (steps + 1))
        explanations: list[Explanation] = []
        for i in range(0, len(array), batch):
            attributions = self._integrated_gradients(array[i:i + batch], alphas,
                                                      weights).numpy().astype(np.float64)
            explanations.extend(
                Explanation(contributions=dict(zip(self.feature_names, row.tolist(),
                                                   strict=True)),
                            baseline_risk=self.baseline_risk)
                for row in attributions)
        return explanations

    def _predict_checked(self, features: pd.DataFrame) -> list[Prediction]:
        x = self.encode(features)
        risks = self.predict_encoded(x)
        explanations = self.explain_encoded(x)
        return [Prediction(risk=float(r), label=int(r >= self.threshold),
                           threshold=self.threshold, explanation=e)
                for r, e in zip(risks, explanations, strict=True)]

    def predict_frame(self, features: pd.DataFrame) -> list[Prediction]:
        """Validate raw feature rows with the schema rules, then predict and explain.

        Rows are numbered from 1 in problem messages (source ``"frame"``). A label column,
        if present, is validated and ignored. Raises :class:`DataValidationError`.
        """
        if not isinstance(features, pd.DataFrame):
            raise TypeError(f"ModelBundle.predict_frame: features must be a pandas DataFrame; "
                            f"got {type(features).__name__}")
        checked = _validate_features(features, self.schema, source="frame",
                                     lines=np.arange(1, len(features) + 1))
        return self._predict_checked(checked)

    def predict_records(self, records: list[dict[str, object]]) -> list[dict[str, Any]]:
        """For the HTTP API: each record maps every raw feature column to a value.

        Values may be numbers or strings of numbers; ``None`` or ``""`` means "not
        recorded" (allowed in optional columns only; imputed with this site's training
        value). Every problem (unknown or missing field, bad value) is collected, rows
        numbered from 1, and raised once as :class:`DataValidationError` (source
        ``"request"``). Returns ``[Prediction.to_dict()]``.
        """
        frame, problems = _records_frame(records, self.schema)
        if not len(frame):
            _raise_merged(problems, None, self.schema)
        try:
            checked = _validate_features(frame, self.schema, source=REQUEST_SOURCE,
                                         lines=np.arange(1, len(frame) + 1))
        except DataValidationError as exc:
            _raise_merged(problems, exc, self.schema)
        if problems:
            _raise_merged(problems, None, self.schema)
        return [p.to_dict() for p in self._predict_checked(checked)]

    def describe(self) -> dict[str, Any]:
        """What the ``/model`` endpoint shows: provenance, inputs, threshold and privacy."""
        return {
            "run": self.manifest.get("run"),
            "fedcare-version": self.manifest.get("fedcare-version"),
            "dataset": self.manifest.get("dataset"),
            "schema": self.schema.name,
            "features": list(self.schema.feature_names()),
            "threshold": self.threshold,
            "privacy": self.manifest.get("privacy"),
            "site-level-privacy": self.manifest.get("site-level-privacy"),
            "model-sha256": self.model_sha256,
            "personalisation": self.personalisation,
        }


def refuse_personalised_model(path: Path) -> None:
    """A site's refined personalised model is never loaded into a bundle (predict, serve,
    validation report, drift): it may contain non-DP training on the site's rows."""
    if path.is_file() and is_personalised_model_file(path):
        raise ModelMismatch(f"{path}: model_path must be a shared global model (.keras with "
                            f"its manifest); got a site's refined personalised model "
                            f"({SITE_ONLY_LABEL}): fedcare predict and serve refuse it")


def _site_only_notice(site_dir: Path) -> dict[str, str]:
    path = site_dir / PERSONALISED_MODEL_FILENAME
    if not path.is_file():
        return {}
    return {"site-only-model": f"{path} is not used here ({SITE_ONLY_LABEL})"}


def _personalise(model: tf.keras.Model, manifest: dict[str, Any],
                 site_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Apply the site's private part to ``model`` in place; its provenance, or why not.
    A refined site-only model in ``site_dir`` is never used; the provenance says so."""
    if site_dir is not None:
        notice = _site_only_notice(Path(site_dir))
        return {**_personalise_dp(model, manifest, site_dir), **notice}
    return _personalise_dp(model, manifest, site_dir)


def _personalise_dp(model: tf.keras.Model, manifest: dict[str, Any],
                    site_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    if site_dir is None:
        return {"kind": "none", "model": "global", "reason": "no site dir given"}
    part: PrivatePart | None = load_private_part(Path(site_dir))
    if part is None:
        logger.info("no private part in %s: using the global model", site_dir)
        return {"kind": "none", "model": "global", "reason": "this site has no private part"}
    if part.run != manifest.get("run"):
        logger.warning("private part in %s is from run %s, the model from run %s: using the "
                       "global model", site_dir, part.run, manifest.get("run"))
        return {"kind": "none", "model": "global",
                "reason": f"the site's private part (v{part.version}) is from run {part.run!r}, "
                          f"not the model's run {manifest.get('run')!r}"}
    model.set_weights(part.apply(model.get_weights()))
    logger.info("personalised model: global model of run %s + private part v%d (round %d, %s)",
                part.run, part.version, part.global_round, part.phase)
    return {"model": "personalised", **part.provenance()}


# --------------------------------------------------------------------------- validation


def _stand_in(column: Column) -> str:
    """A cell value ``column`` accepts (stands in for a label the input does not carry)."""
    if column.kind == "categorical":
        return format_number(column.categories[0])
    if column.kind == "numeric" and column.minimum is not None:
        return format_number(column.minimum)
    if column.kind == "numeric" and column.maximum is not None:
        return format_number(min(0.0, column.maximum))
    return "0"


def _validate_features(frame: pd.DataFrame, schema: TabularSchema, *, source: str,
                       lines: np.ndarray) -> pd.DataFrame:
    """Check raw feature rows like a training file (the label optional); keep every row."""
    if schema.label.name not in frame.columns:
        frame = frame.assign(**{schema.label.name: _stand_in(schema.label)})
    table = validate_frame(frame, schema, source=source, missing="keep", line_numbers=lines)
    return table.features


def _records_frame(records: object,
                   schema: TabularSchema) -> tuple[pd.DataFrame, list[DataProblem]]:
    """Records -> a frame of strings (the feature columns), plus every structural problem.

    A field that is absent gets a valid stand-in cell, so it is reported once (as absent)
    rather than a second time as an empty cell.
    """
    problems: list[DataProblem] = []
    names = schema.feature_names()
    if not isinstance(records, list):
        problems.append(DataProblem(REQUEST_SOURCE, None, None,
                                    "records must be a list of objects (feature -> value); "
                                    f"got {type(records).__name__}"))
        return pd.DataFrame(columns=list(names), dtype=object), problems
    if not records:
        problems.append(DataProblem(REQUEST_SOURCE, None, None,
                                    "records must hold at least one record; got none"))
    rows: list[list[str]] = []
    for row, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            problems.append(DataProblem(REQUEST_SOURCE, row, None,
                                        "record must be an object mapping feature names to "
                                        f"values; got {type(record).__name__}"))
            rows.append([_stand_in(column) for column in schema.features])
            continue
        cells = []
        for column in schema.features:
            if column.name in record:
                value = record[column.name]
                cells.append("" if value is None else str(value))
                continue
            null = "; send null for a value not recorded" if column.optional else ""
            problems.append(DataProblem(
                REQUEST_SOURCE, row, column.name,
                f"field must be present (every record names every {schema.name} "
                f"feature{null}); got no such field"))
            cells.append(_stand_in(column))
        for key in record:
            if key in names:
                continue
            close = get_close_matches(str(key), list(names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            outcome = (" (the label is an outcome, not an input)"
                       if key == schema.label.name else "")
            problems.append(DataProblem(
                REQUEST_SOURCE, row, str(key),
                f"field must be a {schema.name} feature ({', '.join(names)}); "
                f"got an unknown field{outcome}{hint}"))
        rows.append(cells)
    return pd.DataFrame(rows, columns=list(names), dtype=object), problems


def _raise_merged(problems: list[DataProblem], exc: DataValidationError | None,
                  schema: TabularSchema) -> NoReturn:
    """Raise one :class:`DataValidationError`: structural and value problems, row by row."""
    found = list(problems)
    total = len(found)
    if exc is not None:
        # Value problems all have a row; the "... and N more" summary line has none.
        found += [p for p in exc.problems if isinstance(p, DataProblem) and p.row is not None]
        total += exc.total
    order = {name: i for i, name in enumerate(schema.feature_names())}
    found.sort(key=lambda p: (-1 if p.row is None else p.row,
                              order.get(p.column or "", len(order))))
    listed = found[:MAX_LISTED_PROBLEMS]
    if total > len(listed):
        listed.append(DataProblem(REQUEST_SOURCE, None, None,
                                  f"... and {total - len(listed)} more problem(s) not listed "
                                  f"({total} in all)"))
    raise DataValidationError(REQUEST_SOURCE, listed, total=total)


# --------------------------------------------------------------------------- CSV


def _format_top(items: list[tuple[str, float]]) -> str:
    return "; ".join(f"{name}:{value:+.3g}" for name, value in items)


def predict_csv(bundle: ModelBundle, csv_path: str | os.PathLike[str],
                out_path: str | os.PathLike[str]) -> int:
    """Validate a CSV of patients, write one prediction per row; return rows written.

    The input is checked with :func:`~fedcare.data.validate.load_features_csv` (the label
    column optional); on any problem :class:`DataValidationError` lists them all and
    nothing is written. The output (columns ``row, risk, label, pushed_up, pushed_down``;
    ``row`` is the input line number) is written to a temporary file and renamed into
    place, so a reader never sees half a file.
    """
    source, target = Path(csv_path), Path(out_path)
    if target.resolve() == source.resolve():
        raise ConfigError([f"predict: out_path must differ from the input file; got "
                           f"{os.fspath(target)!r} for both"])
    table = load_features_csv(source, bundle.schema)
    predictions = bundle._predict_checked(table.features)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PREDICTION_COLUMNS)
    for line, prediction in zip(table.lines.tolist(), predictions, strict=True):
        up, down = prediction.explanation.top(TOP_K)
        writer.writerow([line, repr(prediction.risk), prediction.label, _format_top(up),
                         _format_top(down)])
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                    suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    logger.info("%s: wrote %d prediction(s) to %s (threshold %s, model sha256 %s)",
                source, len(predictions), target, bundle.threshold, bundle.model_sha256[:12])
    return len(predictions)


__all__ = [
    "Explanation",
    "ModelBundle",
    "Prediction",
    "predict_csv",
]
