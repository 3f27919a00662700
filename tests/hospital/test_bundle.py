"""The hospital-side model bundle: refuse mismatched files, validate inputs, predict, explain."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from fedcare.common.errors import ConfigError, DataValidationError, ModelMismatch
from fedcare.common.model import build_model
from fedcare.data.datasets import breast_cancer, heart_disease
from fedcare.data.preprocess import Preprocessor
from fedcare.data.validate import DataProblem, load_features_csv, load_site_csv, validate_frame
from fedcare.hospital.bundle import (
    Explanation,
    ModelBundle,
    Prediction,
    predict_csv,
)
from tests.bundle_factory import BundleFiles, make_bundle
from tests.data_factories import HEART_HEADER, csv_text, heart_rows, write_text

SCHEMA = breast_cancer.SCHEMA
LABEL = breast_cancer.LABEL
COMPLETENESS_TOLERANCE_64 = 0.02
"""Largest |sum(contributions) - (risk - baseline_risk)| allowed at steps=64. Measured on
the factory model: max 0.015, mean 0.0024 over the 143 test patients (ReLU kinks and the
steep sigmoid make the trapezoid error roughly O(1/steps))."""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> BundleFiles:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def bundle(files: BundleFiles) -> ModelBundle:
    return ModelBundle.load(model_path=files.model, preprocessor_path=files.preprocessor)


@pytest.fixture(scope="module")
def x_test(bundle: ModelBundle, files: BundleFiles) -> np.ndarray:
    return bundle.encode(files.x_test)


def write_patients(path: Path, features: pd.DataFrame,
                   labels: np.ndarray | None = None) -> Path:
    frame = features.copy()
    if labels is not None:
        frame[LABEL] = labels
    frame.to_csv(path, index=False)
    return path


def read_predictions(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def records_of(features: pd.DataFrame) -> list[dict[str, object]]:
    return [{k: float(v) for k, v in row.items()} for row in features.to_dict("records")]


# --------------------------------------------------------------------------- variants


def variant(files: BundleFiles, directory: Path, *,
            manifest: Callable[[dict[str, Any]], None] | None = None,
            preprocessor: Callable[[dict[str, Any]], None] | None = None,
            model: tf.keras.Model | bytes | None = None) -> dict[str, Path]:
    """Copies of the bundle's three files in ``directory``, each optionally altered."""
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / "model.keras"
    if model is None:
        shutil.copy(files.model, model_path)
    elif isinstance(model, bytes):
        model_path.write_bytes(model)
    else:
        model.save(model_path, save_format="keras_v3")
    data = json.loads(files.model.with_name("model.json").read_text())
    if manifest:
        manifest(data)
    (directory / "model.json").write_text(json.dumps(data))
    pre = json.loads(files.preprocessor.read_text())
    if preprocessor:
        preprocessor(pre)
    pre_path = directory / "preprocessor.json"
    pre_path.write_text(json.dumps(pre))
    return {"model_path": model_path, "preprocessor_path": pre_path}


def heart_preprocessor(data: dict[str, Any]) -> None:
    rows = pd.DataFrame(heart_rows(20, seed=1), dtype=object)
    table = validate_frame(rows, heart_disease.SCHEMA, source="heart")
    data.clear()
    data.update(Preprocessor(heart_disease.SCHEMA).fit(table.features).to_dict())


def swap_first_two(names: list[str]) -> None:
    names[0], names[1] = names[1], names[0]


def set_key(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data[key] = value
    return edit


def with_input_width(width: int) -> tf.keras.Model:
    return build_model(input_dim=width, hidden_units=(16,), seed=0)


def with_output(units: int, activation: str) -> tf.keras.Model:
    return tf.keras.Sequential([tf.keras.Input(shape=(30,)),
                                tf.keras.layers.Dense(units, activation=activation)])


def with_lambda() -> tf.keras.Model:
    return tf.keras.Sequential([tf.keras.Input(shape=(30,)),
                                tf.keras.layers.Lambda(lambda t: t * 2.0),
                                tf.keras.layers.Dense(1, activation="sigmoid")])


# --------------------------------------------------------------------------- loading


def test_real_bundle_loads_with_schema_features_and_baseline(bundle: ModelBundle) -> None:
    assert bundle.schema is SCHEMA
    assert bundle.feature_names == SCHEMA.encoded_feature_names()
    assert bundle.threshold == 0.5
    assert bundle.manifest["run"] == "test-run"
    assert 0.0 < bundle.baseline_risk < 1.0


MISMATCHES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("heart-disease preprocessor for a breast-cancer model",
     {"preprocessor": heart_preprocessor},
     ["preprocessor schema must be 'breast-cancer'", "got 'heart-disease'"]),
    ("manifest features reordered",
     {"manifest": lambda m: swap_first_two(m["features"])},
     ["manifest features must be", "reordered", "position 0: 'mean_texture'"]),
    ("preprocessor features reordered",
     {"preprocessor": lambda p: swap_first_two(p["encoded_feature_names"])},
     ["preprocessor encoded_feature_names must be", "reordered"]),
    ("manifest lacks a feature",
     {"manifest": lambda m: m["features"].pop()},
     ["manifest features must be", "missing ['worst_fractal_dimension']"]),
    ("manifest version bump", {"manifest": set_key("version", 2)},
     ["manifest version must be 1; got 2", "not a manifest this fedcare can read"]),
    ("manifest version true", {"manifest": set_key("version", True)},
     ["manifest version must be 1; got True"]),
    ("unknown manifest format", {"manifest": set_key("format", "other")},
     ["manifest format must be 'fedcare-model-manifest'"]),
    ("preprocessor version bump", {"preprocessor": set_key("version", 2)},
     ["preprocessor version must be 1; got 2"]),
    ("unknown preprocessor format", {"preprocessor": set_key("format", "sklearn")},
     ["preprocessor format must be 'fedcare.preprocessor'"]),
    ("manifest schema differs from its dataset", {"manifest": set_key("schema", "x")},
     ["manifest schema must be 'breast-cancer'", "got 'x'"]),
    ("manifest without privacy", {"manifest": lambda m: m.pop("privacy")},
     ["missing privacy"]),
    ("manifest names another model file", {"manifest": set_key("model", "round-0003.keras")},
     ["manifest describes model file 'round-0003.keras'; got 'model.keras'"]),
    ("preprocessor statistics broken",
     {"preprocessor": lambda p: p["columns"][0].update(scale=-1.0)},
     ["scale must be > 0"]),
    ("model input width", {"model": "width29"}, ["model input width must be 30", "got 29"]),
    ("two softmax outputs", {"model": "softmax2"},
     ["model output must be a single sigmoid unit", "(None, 2)"]),
    ("linear output", {"model": "linear1"},
     ["model output must be a single sigmoid unit", "activation 'linear'"]),
    ("not a zip (legacy HDF5)", {"model": b"\x89HDF\r\n\x1a\nnot really"},
     ["Keras v3 '.keras' zip file", "not a zip"]),
    ("lambda layer refused by safe mode", {"model": "lambda"},
     ["loadable Keras v3 model (safe mode", "lambda"]),
]
_MODELS: dict[str, Callable[[], tf.keras.Model]] = {
    "width29": lambda: with_input_width(29),
    "softmax2": lambda: with_output(2, "softmax"),
    "linear1": lambda: with_output(1, "linear"),
    "lambda": with_lambda,
}


@pytest.mark.parametrize(("case", "edits", "fragments"), MISMATCHES,
                         ids=[m[0] for m in MISMATCHES])
def test_mismatched_bundle_is_refused_naming_the_problem_and_files(
    files: BundleFiles, tmp_path: Path, case: str, edits: dict[str, Any],
    fragments: list[str],
) -> None:
    edits = dict(edits)
    if isinstance(edits.get("model"), str):
        edits["model"] = _MODELS[edits["model"]]()
    paths = variant(files, tmp_path / "v", **edits)
    with pytest.raises(ModelMismatch) as caught:
        ModelBundle.load(model_path=paths["model_path"],
                         preprocessor_path=paths["preprocessor_path"])
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, (case, message)
    # The message names the files involved: the one at fault, and the bundle it was for.
    assert str(paths["model_path"]) in message
    assert any(str(p) in message for p in (paths["preprocessor_path"],
                                           paths["model_path"].with_name("model.json")))


def test_all_cross_file_problems_are_reported_together(files: BundleFiles,
                                                       tmp_path: Path) -> None:
    paths = variant(files, tmp_path / "v",
                    manifest=lambda m: swap_first_two(m["features"]),
                    preprocessor=lambda p: swap_first_two(p["encoded_feature_names"]),
                    model=with_input_width(29))
    with pytest.raises(ModelMismatch, match="4 problem") as caught:
        ModelBundle.load(model_path=paths["model_path"],
                         preprocessor_path=paths["preprocessor_path"])
    message = str(caught.value)
    assert "manifest features" in message and "preprocessor encoded_feature_names" in message
    assert "input width must be 30" in message
    assert "model sha256 must be" in message  # the model file is not the manifest's


def test_missing_files_are_named_all_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        ModelBundle.load(model_path=tmp_path / "nope.keras",
                         preprocessor_path=tmp_path / "pre.json")
    message = str(caught.value)
    for name in ("nope.keras", "model.json", "pre.json"):
        assert str(tmp_path / name) in message
    assert "must be an existing file" in message


def test_explicit_manifest_path_is_used(files: BundleFiles, tmp_path: Path) -> None:
    elsewhere = tmp_path / "manifests" / "run.json"
    elsewhere.parent.mkdir()
    shutil.copy(files.model.with_name("model.json"), elsewhere)
    loaded = ModelBundle.load(model_path=files.model, preprocessor_path=files.preprocessor,
                              manifest_path=elsewhere)
    assert loaded.manifest["run"] == "test-run"


@pytest.mark.parametrize("threshold", [0, 1, -0.1, float("nan"), True, "0.5"])
def test_threshold_must_be_inside_zero_one(files: BundleFiles, threshold: Any) -> None:
    with pytest.raises(ConfigError, match=r"threshold must be a number in \(0, 1\)"):
        ModelBundle.load(model_path=files.model, preprocessor_path=files.preprocessor,
                         threshold=threshold)


def test_describe_shows_provenance_raw_features_privacy_and_model_hash(
    files: BundleFiles,
) -> None:
    loaded = ModelBundle.load(model_path=files.model, preprocessor_path=files.preprocessor,
                              threshold=0.3)
    manifest = json.loads(files.model.with_name("model.json").read_text())
    described = loaded.describe()
    assert described == {
        "run": "test-run", "fedcare-version": "0.1.0", "dataset": "breast-cancer",
        "schema": "breast-cancer", "features": list(SCHEMA.feature_names()),
        "threshold": 0.3, "privacy": manifest["privacy"], "site-level-privacy": None,
        "model-sha256": hashlib.sha256(files.model.read_bytes()).hexdigest(),
        "personalisation": {"kind": "none", "model": "global", "reason": "no site dir given"},
    }
    json.dumps(described, allow_nan=False)  # servable as is


# --------------------------------------------------------------------------- predictions


def test_predict_encoded_gives_one_risk_per_row_in_zero_one(bundle: ModelBundle,
                                                           x_test: np.ndarray) -> None:
    risks = bundle.predict_encoded(x_test)
    assert risks.shape == (len(x_test),)
    assert ((risks >= 0) & (risks <= 1)).all()
    expected = bundle.model(x_test, training=False).numpy()[:, 0]
    np.testing.assert_allclose(risks, expected, rtol=1e-6, atol=1e-7)
    assert bundle.predict_encoded(x_test[:0]).shape == (0,)


@pytest.mark.parametrize("bad", [np.zeros((2, 29)), np.zeros(30), np.full((1, 30), np.nan)])
def test_predict_encoded_rejects_wrong_shapes_and_non_finite(bundle: ModelBundle,
                                                            bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="predict_encoded: x must"):
        bundle.predict_encoded(bad)


def test_predict_frame_labels_at_the_threshold(files: BundleFiles, bundle: ModelBundle,
                                               x_test: np.ndarray) -> None:
    predictions = bundle.predict_frame(files.x_test)
    risks = bundle.predict_encoded(x_test)
    assert [p.risk for p in predictions] == risks.tolist()
    assert [p.label for p in predictions] == (risks >= 0.5).astype(int).tolist()
    strict = ModelBundle.load(model_path=files.model, preprocessor_path=files.preprocessor,
                              threshold=0.9)
    assert [p.label for p in strict.predict_frame(files.x_test)] == (
        risks >= 0.9).astype(int).tolist()
    assert 0 < sum(p.label for p in predictions) < len(predictions)  # not vacuous


def test_predict_frame_validates_with_the_schema_rules(files: BundleFiles,
                                                       bundle: ModelBundle) -> None:
    frame = files.x_test.iloc[:3].copy()
    frame.loc[frame.index[1], "mean_area"] = 90000.0
    with pytest.raises(DataValidationError) as caught:
        bundle.predict_frame(frame)
    assert ("frame: row 2: column 'mean_area': must be a number in [0, 30000]; "
            "got '90000.0'") in str(caught.value)


def test_prediction_to_dict_has_the_api_fields(bundle: ModelBundle,
                                              files: BundleFiles) -> None:
    data = bundle.predict_frame(files.x_test.iloc[:1])[0].to_dict()
    assert set(data) == {"risk", "label", "threshold", "baseline_risk", "pushed_up",
                         "pushed_down"}
    assert data["threshold"] == 0.5 and data["baseline_risk"] == bundle.baseline_risk
    for entry in data["pushed_up"]:
        assert set(entry) == {"feature", "contribution"} and entry["contribution"] > 0
    for entry in data["pushed_down"]:
        assert entry["contribution"] < 0
    assert len(data["pushed_up"]) <= 3 and len(data["pushed_down"]) <= 3
    json.dumps(data, allow_nan=False)


def test_explanation_top_orders_each_direction_and_skips_zeros() -> None:
    explanation = Explanation(contributions={"a": 0.3, "b": -0.1, "c": 0.0, "d": 0.5,
                                             "e": -0.4, "f": 0.2},
                              baseline_risk=0.4)
    assert explanation.top(2) == ([("d", 0.5), ("a", 0.3)], [("e", -0.4), ("b", -0.1)])
    assert explanation.top() == ([("d", 0.5), ("a", 0.3), ("f", 0.2)],
                                 [("e", -0.4), ("b", -0.1)])
    assert explanation.top(0) == ([], [])
    with pytest.raises(ValueError, match="k must be an integer >= 0"):
        explanation.top(-1)
    prediction = Prediction(risk=0.7, label=1, threshold=0.5, explanation=explanation)
    assert prediction.to_dict(k=1)["pushed_down"] == [{"feature": "e", "contribution": -0.4}]


# --------------------------------------------------------------------------- explanations


def test_integrated_gradients_are_complete_within_tolerance_at_64_steps(
    bundle: ModelBundle, x_test: np.ndarray,
) -> None:
    risks = bundle.predict_encoded(x_test)
    explanations = bundle.explain_encoded(x_test, steps=64)
    sums = np.array([sum(e.contributions.values()) for e in explanations])
    gap = np.abs(sums - (risks - bundle.baseline_risk))
    assert gap.max() <= COMPLETENESS_TOLERANCE_64
    # Not vacuous: the risks move far from the baseline, so contributions are large.
    assert np.abs(risks - bundle.baseline_risk).max() > 0.4
    assert all(e.baseline_risk == bundle.baseline_risk for e in explanations)


def test_integrated_gradients_error_shrinks_as_steps_grow(bundle: ModelBundle,
                                                          x_test: np.ndarray) -> None:
    target = bundle.predict_encoded(x_test) - bundle.baseline_risk

    def worst_gap(steps: int) -> float:
        sums = np.array([sum(e.contributions.values())
                         for e in bundle.explain_encoded(x_test, steps=steps)])
        return float(np.abs(sums - target).max())

    gaps = [worst_gap(s) for s in (4, 16, 64, 256)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < gaps[0] / 20, gaps


def test_feature_at_its_baseline_contributes_nothing(bundle: ModelBundle,
                                                     files: BundleFiles) -> None:
    stats = {c["name"]: c for c in json.loads(files.preprocessor.read_text())["columns"]}
    frame = files.x_test.iloc[:4].copy()
    frame["mean_radius"] = stats["mean_radius"]["center"]  # the site's training mean
    x = bundle.encode(frame)
    assert np.abs(x[:, 0]).max() < 1e-6
    x[:, 5] = 0.0  # an encoded value exactly at the baseline
    for explanation in bundle.explain_encoded(x):
        assert abs(explanation.contributions["mean_radius"]) < 1e-6
        assert explanation.contributions["mean_compactness"] == 0.0
        assert max(abs(v) for v in explanation.contributions.values()) > 1e-3  # not vacuous


def test_vectorized_integrated_gradients_match_a_per_step_reference(
    bundle: ModelBundle, x_test: np.ndarray,
) -> None:
    steps, x = 8, x_test[:3]
    reference = []
    for row in x:  # one tape per patient per step: slow, obviously correct
        grads = []
        for alpha in np.linspace(0.0, 1.0, steps + 1):
            point = tf.constant(alpha * row[None, :], dtype=tf.float32)
            with tf.GradientTape() as tape:
                tape.watch(point)
                risk = bundle.model(point, training=False)[0, 0]
            grads.append(tape.gradient(risk, point).numpy()[0])
        g = np.array(grads)
        reference.append(row * (g[0] / 2 + g[1:-1].sum(axis=0) + g[-1] / 2) / steps)
    got = [list(e.contributions.values()) for e in bundle.explain_encoded(x, steps=steps)]
    np.testing.assert_allclose(np.array(got), np.array(reference), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_explain_rejects_bad_step_counts(bundle: ModelBundle, x_test: np.ndarray,
                                         steps: Any) -> None:
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        bundle.explain_encoded(x_test[:1], steps=steps)


# --------------------------------------------------------------------------- CSV


def test_predict_csv_writes_one_row_per_patient_with_the_bundles_risks(
    files: BundleFiles, bundle: ModelBundle, x_test: np.ndarray, tmp_path: Path,
) -> None:
    source = write_patients(tmp_path / "patients.csv", files.x_test, files.y_test)
    out = tmp_path / "out" / "predictions.csv"
    assert predict_csv(bundle, source, out) == len(files.x_test)
    rows = read_predictions(out)
    assert list(rows[0]) == ["row", "risk", "label", "pushed_up", "pushed_down"]
    assert [int(r["row"]) for r in rows] == list(range(2, len(files.x_test) + 2))
    risks = bundle.predict_encoded(x_test)
    assert [float(r["risk"]) for r in rows] == risks.tolist()  # exact: written with repr
    assert [int(r["label"]) for r in rows] == (risks >= 0.5).astype(int).tolist()
    piece = r"[\w=.]+:[+-]\S+"
    for row in rows:
        for column, sign in (("pushed_up", 1), ("pushed_down", -1)):
            if row[column]:
                assert re.fullmatch(rf"{piece}(; {piece})*", row[column]), row[column]
                values = [float(p.split(":")[1]) for p in row[column].split("; ")]
                assert all(sign * v > 0 for v in values)
    assert [p.name for p in out.parent.iterdir()] == ["predictions.csv"]  # no temp left


def test_predict_csv_works_without_the_label_column(files: BundleFiles, bundle: ModelBundle,
                                                    tmp_path: Path) -> None:
    labelled = write_patients(tmp_path / "labelled.csv", files.x_test, files.y_test)
    unlabelled = write_patients(tmp_path / "unlabelled.csv", files.x_test)
    assert LABEL not in unlabelled.read_text().splitlines()[0]
    predict_csv(bundle, labelled, tmp_path / "a.csv")
    predict_csv(bundle, unlabelled, tmp_path / "b.csv")
    assert read_predictions(tmp_path / "a.csv") == read_predictions(tmp_path / "b.csv")


def test_predict_csv_rows_are_the_input_line_numbers(files: BundleFiles, bundle: ModelBundle,
                                                     tmp_path: Path) -> None:
    lines = write_patients(tmp_path / "p.csv", files.x_test.iloc[:3]).read_text().splitlines()
    source = tmp_path / "gaps.csv"
    source.write_text("\n".join([lines[0], lines[1], "", "", lines[2], lines[3]]) + "\n")
    predict_csv(bundle, source, tmp_path / "out.csv")
    assert [r["row"] for r in read_predictions(tmp_path / "out.csv")] == ["2", "5", "6"]


def test_predict_csv_with_a_bad_value_names_row_and_column_and_writes_nothing(
    files: BundleFiles, bundle: ModelBundle, tmp_path: Path,
) -> None:
    frame = files.x_test.iloc[:5].astype(object)
    frame.iloc[2, frame.columns.get_loc("mean_texture")] = "twelve"
    frame.iloc[4, frame.columns.get_loc("worst_area")] = -5
    source = write_patients(tmp_path / "bad.csv", frame, files.y_test[:5])
    out = tmp_path / "predictions.csv"
    out.write_text("earlier results\n")
    with pytest.raises(DataValidationError) as caught:
        predict_csv(bundle, source, out)
    message = str(caught.value)
    assert "bad.csv: row 4: column 'mean_texture': must be a number in [0, 400]; " \
           "got 'twelve'" in message
    assert "bad.csv: row 6: column 'worst_area': must be a number in [0, 50000]; " \
           "got '-5'" in message
    assert caught.value.total == 2
    assert out.read_text() == "earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "predictions.csv"]


def test_predict_csv_refuses_to_overwrite_its_input(files: BundleFiles, bundle: ModelBundle,
                                                    tmp_path: Path) -> None:
    source = write_patients(tmp_path / "p.csv", files.x_test.iloc[:2])
    before = source.read_text()
    with pytest.raises(ConfigError, match="out_path must differ from the input"):
        predict_csv(bundle, source, tmp_path / "." / "p.csv")
    assert source.read_text() == before


# --------------------------------------------------------------------------- load_features_csv


def test_load_features_csv_without_label_returns_no_labels_and_true_lines(
    files: BundleFiles, tmp_path: Path,
) -> None:
    source = write_patients(tmp_path / "p.csv", files.x_test.iloc[:4])
    table = load_features_csv(source, SCHEMA)
    assert table.labels is None and len(table) == 4
    assert table.lines.tolist() == [2, 3, 4, 5]
    pd.testing.assert_frame_equal(table.features,
                                  files.x_test.iloc[:4].reset_index(drop=True),
                                  check_exact=True)


def test_load_features_csv_with_label_validates_and_returns_it(files: BundleFiles,
                                                               tmp_path: Path) -> None:
    good = write_patients(tmp_path / "good.csv", files.x_test.iloc[:4], files.y_test[:4])
    table = load_features_csv(good, SCHEMA)
    assert table.labels is not None and table.labels.tolist() == files.y_test[:4].tolist()
    bad = write_patients(tmp_path / "bad.csv", files.x_test.iloc[:4],
                         np.array([0, 1, 2, 1]))
    with pytest.raises(DataValidationError, match=rf"row 4: column '{LABEL}': must be 0 or 1"):
        load_features_csv(bad, SCHEMA)


def test_load_features_csv_reports_problems_exactly_like_training_files(
    files: BundleFiles, tmp_path: Path,
) -> None:
    frame = files.x_test.iloc[:6].astype(object)
    frame.iloc[1, 0] = "?"
    frame.iloc[3, 4] = ""
    frame.iloc[5, 7] = "1e999"
    source = write_patients(tmp_path / "bad.csv", frame, files.y_test[:6])
    with pytest.raises(DataValidationError) as training:
        load_site_csv(source, SCHEMA)
    with pytest.raises(DataValidationError) as new:
        load_features_csv(source, SCHEMA)
    assert str(new.value) == str(training.value)
    assert new.value.total == 3


def test_load_features_csv_reports_header_problems_but_not_the_absent_label(
    files: BundleFiles, tmp_path: Path,
) -> None:
    frame = files.x_test.iloc[:2].drop(columns=["mean_area"]).rename(
        columns={"mean_radius": "mean_radios"})
    source = write_patients(tmp_path / "hdr.csv", frame)
    with pytest.raises(DataValidationError) as caught:
        load_features_csv(source, SCHEMA)
    message = str(caught.value)
    assert "column 'mean_radios'" in message and "did you mean 'mean_radius'" in message
    assert "missing 'mean_radius', 'mean_area'" in message
    assert LABEL not in message.split("missing")[-1]


def test_load_features_csv_keeps_rows_with_empty_optional_cells(tmp_path: Path) -> None:
    rows = heart_rows(3, seed=2)
    rows[1]["chol"] = ""
    header = [h for h in HEART_HEADER if h != "num"]
    source = write_text(tmp_path, "heart.csv", csv_text(rows, header))
    table = load_features_csv(source, heart_disease.SCHEMA)
    assert len(table) == 3 and table.labels is None  # nothing dropped
    assert math.isnan(table.features["chol"][1])
    assert table.report.missing_by_column == {"chol": 1}


def test_load_features_csv_reports_a_missing_file_like_training(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="file must exist"):
        load_features_csv(tmp_path / "none.csv", SCHEMA)


# --------------------------------------------------------------------------- records


def test_predict_records_accepts_numbers_and_strings_of_numbers(
    files: BundleFiles, bundle: ModelBundle,
) -> None:
    records = records_of(files.x_test.iloc[:3])
    records[1] = {k: repr(v) for k, v in records[1].items()}
    got = bundle.predict_records(records)
    want = [p.to_dict() for p in bundle.predict_frame(files.x_test.iloc[:3])]
    assert got == want


def test_predict_records_lists_every_problem_with_row_and_field(
    files: BundleFiles, bundle: ModelBundle,
) -> None:
    records = records_of(files.x_test.iloc[:4])
    records[0]["mean_radios"] = records[0].pop("mean_radius")  # unknown field (and missing)
    records[1]["mean_texture"] = "abc"
    del records[2]["worst_area"]
    records[3][LABEL] = 1
    records[3]["mean_area"] = 1e6
    with pytest.raises(DataValidationError) as caught:
        bundle.predict_records(records)
    error = caught.value
    assert error.source == "request"
    found = [(p.row, p.column) for p in error.problems if isinstance(p, DataProblem)]
    assert found == [(1, "mean_radius"), (1, "mean_radios"), (2, "mean_texture"),
                     (3, "worst_area"), (4, "mean_area"), (4, LABEL)]
    message = str(error)
    assert "request: row 1: column 'mean_radios': field must be a breast-cancer feature" \
        in message and "did you mean 'mean_radius'" in message
    assert "request: row 2: column 'mean_texture': must be a number in [0, 400]; got 'abc'" \
        in message
    assert "request: row 3: column 'worst_area': field must be present" in message
    assert "the label is an outcome, not an input" in message
    assert error.total == 6


@pytest.mark.parametrize(("records", "fragment"), [
    ([], "records must hold at least one record; got none"),
    ({"mean_radius": 1}, "records must be a list of objects"),
    (["not a record"], "row 1: record must be an object mapping feature names"),
])
def test_predict_records_rejects_malformed_requests(bundle: ModelBundle, records: Any,
                                                    fragment: str) -> None:
    with pytest.raises(DataValidationError, match=re.escape(fragment)):
        bundle.predict_records(records)


def test_predict_records_null_in_a_required_field_is_a_problem(files: BundleFiles,
                                                               bundle: ModelBundle) -> None:
    records = records_of(files.x_test.iloc[:1])
    records[0]["mean_smoothness"] = None
    with pytest.raises(DataValidationError, match="this column may not be empty"):
        bundle.predict_records(records)


def test_a_model_file_that_is_not_the_one_in_the_manifest_is_refused(tmp_path: Path) -> None:
    files = make_bundle(tmp_path, epochs=1)
    other = make_bundle(tmp_path / "other", epochs=2, seed=1)
    files.model.write_bytes(other.model.read_bytes())  # same shape, different weights

    with pytest.raises(ModelMismatch, match="model sha256 must be"):
        ModelBundle.load(model_path=files.model, preprocessor_path=files.preprocessor)
