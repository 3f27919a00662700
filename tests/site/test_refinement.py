"""Site-only refinement of the personalised model: chosen on validation rows carved from
the training rows, labelled, kept at the site, refused by predict/serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError, ModelMismatch
from fedcare.common.personalised import CANDIDATES, SITE_ONLY_LABEL, candidate_key
from fedcare.server.personalisation import format_personalisation, refined_scores
from fedcare.site.policy import SitePolicy, local_refinement, parse_policy
from fedcare.site.refinement import (
    PERSONALISED_MODEL_FILENAME,
    finetune,
    forward,
    load_personalised_model,
    refine,
    save_personalised_model,
    validation_folds,
)

RUN = "run-1"


def rows(n: int = 80, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two features; the label is 1 exactly when the first one is positive."""
    x = np.random.default_rng(seed).normal(size=(n, 2))
    return x, (x[:, 0] > 0).astype(np.float64)


def linear_model(w0: float, w1: float, bias: float) -> list[np.ndarray]:
    """A shared model without hidden layers: logit = w0 * x0 + w1 * x1 + bias."""
    return [np.array([[w0], [w1]], np.float32), np.array([bias], np.float32)]


def mlp(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(2, 3)).astype(np.float32), np.zeros(3, np.float32),
            rng.normal(size=(3, 1)).astype(np.float32), np.zeros(1, np.float32)]


def test_validation_folds_hold_out_every_training_row_once_and_keep_both_classes() -> None:
    _, y = rows(40)

    folds = validation_folds(y, seed=3)

    held = np.concatenate([h for _, h in folds])
    assert sorted(held.tolist()) == list(range(40))
    assert len(folds) == 5
    assert all(set(y[h]) == {0.0, 1.0} for _, h in folds)
    assert all(set(t).isdisjoint(h) for t, h in folds)


def test_validation_folds_of_a_site_with_one_negative_row_are_plain_folds() -> None:
    y = np.array([1.0] * 11 + [0.0])

    folds = validation_folds(y, seed=0)

    assert sorted(np.concatenate([h for _, h in folds]).tolist()) == list(range(12))


def test_a_global_model_that_validates_best_is_kept_and_the_model_is_dp_only() -> None:
    x, y = rows()
    sharp = linear_model(40.0, 0.0, 0.0)  # right on every row, with a wide margin

    result = refine(weights=sharp, offset=0.0, x=x, y=y, seed=0, run=RUN)

    assert result.choice == "global"  # ties with 'offset' (same risks): DP order decides
    assert result.model.validation["global"]["accuracy"] == 1.0
    assert not result.chosen_only().site_only
    assert SITE_ONLY_LABEL not in result.chosen_only().label


def test_a_useless_global_model_is_replaced_by_a_labelled_site_only_model() -> None:
    x, y = rows()
    useless = linear_model(0.0, 0.0, -3.0)  # 'no disease' for everyone

    result = refine(weights=useless, offset=0.0, x=x, y=y, seed=0, run=RUN)
    kept = result.chosen_only()

    assert result.choice not in ("global", "offset")
    assert result.model.validation[result.choice]["accuracy"] >= 0.95
    assert kept.site_only and kept.label == SITE_ONLY_LABEL
    assert kept.to_dict()["never-share"] is True


def test_the_blend_weight_is_chosen_on_validation_and_every_candidate_is_scored() -> None:
    x, y = rows()

    result = refine(weights=mlp(), offset=0.5, x=x, y=y, seed=0, run=RUN)

    assert set(result.model.validation) == set(CANDIDATES)
    assert result.model.blend_weight is not None and 0 < result.model.blend_weight < 1
    for candidate in CANDIDATES:
        assert result.risk(candidate, x).shape == (len(y),)


def test_the_offset_candidate_is_the_global_logit_plus_the_offset() -> None:
    x, y = rows(20)
    weights = linear_model(1.0, 2.0, 0.5)

    result = refine(weights=weights, offset=-1.25, x=x, y=y, seed=0, run=RUN)

    z = x[:, 0] + 2 * x[:, 1] + 0.5
    np.testing.assert_allclose(result.risk("global", x), 1 / (1 + np.exp(-z)), rtol=1e-6)
    np.testing.assert_allclose(result.risk("offset", x), 1 / (1 + np.exp(-(z - 1.25))),
                               rtol=1e-6)


def test_finetune_takes_plain_gradient_steps_on_mean_cross_entropy() -> None:
    x = np.array([[1.0, 0.0], [0.0, 2.0]])
    y = np.array([1.0, 0.0])
    weights = linear_model(0.0, 0.0, 0.0)

    (kernel, bias) = finetune(weights, 0.5, x, y, epochs=1, learning_rate=1.0)

    p = 1 / (1 + np.exp(-0.5))  # both rows start at logit 0 + offset 0.5
    # grad W = X^T (p - y) / n; grad b = mean(p - y)
    np.testing.assert_allclose(kernel[:, 0], [-(p - 1) / 2, -(2 * p) / 2], rtol=1e-6)
    np.testing.assert_allclose(bias, [0.5 - ((p - 1) + p) / 2], rtol=1e-6)


def test_forward_matches_keras_for_a_relu_mlp() -> None:
    from fedcare.common.model import build_model, weights_of

    model = build_model(input_dim=2, hidden_units=(3,), seed=0)
    x, _ = rows(5)

    _, z = forward(weights_of(model), x)

    np.testing.assert_allclose(1 / (1 + np.exp(-z)), model(x.astype(np.float32)).numpy()[:, 0],
                               rtol=1e-5)


def test_the_kept_model_round_trips_through_its_json_file(tmp_path: Path) -> None:
    x, y = rows()
    weights = mlp()
    kept = refine(weights=weights, offset=0.3, x=x, y=y, seed=0, run=RUN).chosen_only()

    path = save_personalised_model(tmp_path, kept)
    loaded = load_personalised_model(tmp_path)
    doc = json.loads(path.read_text())

    assert path.name == PERSONALISED_MODEL_FILENAME
    assert loaded is not None and loaded.choice == kept.choice
    np.testing.assert_allclose(loaded.risk(weights, x), kept.risk(weights, x), rtol=1e-6)
    assert doc["label"] == kept.label and doc["contains-site-only-training"] == kept.site_only


def test_a_malformed_model_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / PERSONALISED_MODEL_FILENAME).write_text('{"format": "something-else"}')

    with pytest.raises(ModelMismatch, match=PERSONALISED_MODEL_FILENAME):
        load_personalised_model(tmp_path)


# -- who allows it ----------------------------------------------------------------------

SITE_ONLY_RUN: dict[str, Any] = {"personalisation": "offset", "finetune-epochs": 1,
                                 "local-refinement": "site-only"}


@pytest.mark.parametrize(("policy_mode", "run_mode", "used"), [
    ("dp", "dp", "dp"), ("dp", "site-only", "dp"), ("site-only", "dp", "dp"),
    ("site-only", "site-only", "site-only")])
def test_site_only_refinement_needs_both_the_run_and_the_site_policy(
        policy_mode: str, run_mode: str, used: str) -> None:
    config = RunConfig.from_mapping({**SITE_ONLY_RUN, "local-refinement": run_mode})

    assert local_refinement(SitePolicy(local_refinement=policy_mode), config) == used


def test_the_built_in_policy_keeps_personalised_models_dp_only() -> None:
    assert SitePolicy().local_refinement == "dp"
    assert parse_policy({"local-refinement": "site-only"}, where="p.toml").local_refinement == \
        "site-only"


def test_a_bad_policy_value_is_refused_naming_key_and_value() -> None:
    with pytest.raises(ConfigError, match="local-refinement must be one of 'dp', 'site-only'; "
                                          'got "always"'):
        parse_policy({"local-refinement": "always"}, where="p.toml")


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"local-refinement": "yes"}, "local-refinement must be one of dp, site-only; got 'yes'"),
    ({"finetune-epochs": 0}, "local-refinement must be dp unless personalisation is offset"),
])
def test_run_config_rejects_bad_local_refinement(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        RunConfig.from_mapping({**SITE_ONLY_RUN, **changes})


def test_refine_at_site_does_nothing_when_the_policy_says_dp(tmp_path: Path) -> None:
    from fedcare.site.refinement import refine_at_site
    from fedcare.site.site import SiteSpec

    site = SiteSpec(name="a", state_dir=tmp_path, epsilon_budget=5.0,
                    policy=SitePolicy(local_refinement="dp"))
    config = RunConfig.from_mapping(SITE_ONLY_RUN)

    assert refine_at_site(config, site, mlp(), run_id=RUN) is None
    assert not (tmp_path / PERSONALISED_MODEL_FILENAME).exists()


# -- what the server reports, what predict/serve do -------------------------------------


def test_the_report_names_the_choice_and_labels_a_site_only_model() -> None:
    metrics = {"refined-choice": float(CANDIDATES.index("blend")),
               candidate_key("blend", "accuracy"): 0.9, candidate_key("blend", "auc"): 0.8,
               candidate_key("offset", "accuracy"): 0.7, candidate_key("offset", "auc"): 0.8}

    scores = refined_scores(metrics)

    assert scores is not None
    assert (scores["choice"], scores["accuracy"], scores["label"]) == ("blend", 0.9,
                                                                       SITE_ONLY_LABEL)
    assert scores["candidates"]["offset"]["accuracy"] == 0.7
    assert refined_scores({"personal-accuracy": 0.5}) is None


def test_the_printed_table_labels_site_only_models() -> None:
    row = {"global": {"accuracy": 0.5, "auc": 0.6}, "personalised": {"accuracy": 0.7, "auc": 0.6},
           "refined": {"choice": "local", "accuracy": 0.8, "auc": 0.7}}
    section = {"sites": {"a": row},
               "mean-over-sites": {k: row[k] for k in ("global", "personalised", "refined")}}

    text = format_personalisation(section)

    assert "local (site-only: never share it)" in text
    assert SITE_ONLY_LABEL in text


def test_predict_and_serve_refuse_a_personalised_model_file(tmp_path: Path) -> None:
    from fedcare.hospital.bundle import ModelBundle

    x, y = rows()
    kept = refine(weights=mlp(), offset=0.0, x=x, y=y, seed=0, run=RUN).chosen_only()
    path = save_personalised_model(tmp_path, kept)
    renamed = path.rename(tmp_path / "model.keras")  # the content gives it away too

    for model_path in (path, renamed):
        if not model_path.exists():
            continue
        with pytest.raises(ModelMismatch, match="never share it"):
            ModelBundle.load(model_path=model_path, preprocessor_path=tmp_path / "p.json")


def test_a_virtual_site_refines_keeps_its_model_and_reports_test_scores(tmp_path: Path) -> None:
    from fedcare.common.model import build_model, weights_of
    from fedcare.site.refinement import refine_at_site
    from fedcare.site.site import load_site, resolve_site

    config = RunConfig.from_mapping({**SITE_ONLY_RUN, "dataset": "breast-cancer",
                                     "output-dir": str(tmp_path), "hidden-units": "4"})
    site = resolve_site(config, {"partition-id": 0, "num-partitions": 2}, run_name=RUN)
    data = load_site(config, site)
    weights = weights_of(build_model(input_dim=data.x_train.shape[1], hidden_units=(4,), seed=0))

    metrics = refine_at_site(config, site, weights, run_id=RUN)

    kept = load_personalised_model(site.state_dir)
    assert metrics is not None and kept is not None
    assert metrics["refined-choice"] == CANDIDATES.index(kept.choice)
    assert set(metrics) == {"refined-choice", *(candidate_key(c, m) for c in CANDIDATES
                                                 for m in ("accuracy", "auc"))}
    assert all(0.0 <= metrics[candidate_key(c, "accuracy")] <= 1.0 for c in CANDIDATES)
