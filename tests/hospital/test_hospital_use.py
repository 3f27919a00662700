"""A hospital using the global model on its own premises, end to end with a real bundle."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score

from fedcare.cli import main
from fedcare.cli.args import EXIT_FAILED, EXIT_OK
from fedcare.common.files import write_json_atomic
from fedcare.data.datasets import breast_cancer
from fedcare.hospital.api import make_server
from fedcare.hospital.bundle import ModelBundle
from fedcare.hospital.drift import training_profile
from fedcare.site.site import PROFILE_FILENAME
from tests.bundle_factory import BundleFiles, make_bundle

LABEL = breast_cancer.SCHEMA.label.name


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> BundleFiles:
    made = make_bundle(tmp_path_factory.mktemp("bundle"))
    bundle = ModelBundle.load(model_path=made.model, preprocessor_path=made.preprocessor)
    write_json_atomic(made.preprocessor.parent / PROFILE_FILENAME,
                      training_profile(bundle.encode(made.x_train), bundle.feature_names))
    return made


def write_csv(path: Path, frame, labels=None) -> Path:  # type: ignore[no-untyped-def]
    out = frame.copy()
    if labels is not None:
        out[LABEL] = labels
    out.to_csv(path, index=False)
    return path


def bundle_args(files: BundleFiles) -> list[str]:
    return ["--model", str(files.model), "--site-dir", str(files.preprocessor.parent)]


def test_predict_scores_every_patient(files: BundleFiles, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "new.csv", files.x_test.head(20))
    out = tmp_path / "scores.csv"

    code = main(["predict", *bundle_args(files), "--csv", str(csv), "--out", str(out)])

    assert code == EXIT_OK
    lines = out.read_text().splitlines()
    assert len(lines) == 21 and "risk" in lines[0] and "pushed_up" in lines[0]


def test_predict_refuses_a_bad_file_and_writes_nothing(files: BundleFiles, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    frame = files.x_test.head(5).astype(object)
    frame.iloc[2, 0] = "n/a"
    csv = write_csv(tmp_path / "bad.csv", frame)
    out = tmp_path / "scores.csv"

    code = main(["predict", *bundle_args(files), "--csv", str(csv), "--out", str(out)])

    assert code == EXIT_FAILED
    assert "row 4" in capsys.readouterr().out
    assert not out.exists()


def test_validation_report_numbers_match_an_independent_computation(
        files: BundleFiles, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "heldout.csv", files.x_test, files.y_test)
    out = tmp_path / "report"

    code = main(["validation-report", *bundle_args(files), "--csv", str(csv), "--site",
                 "site-0", "--out", str(out)])

    assert code == EXIT_OK
    report = json.loads((out / "validation-report.json").read_text())
    bundle = ModelBundle.load(model_path=files.model, preprocessor_path=files.preprocessor)
    risks = bundle.predict_encoded(bundle.encode(files.x_test))
    assert report["n"] == len(files.y_test)
    assert report["auc"] == pytest.approx(roc_auc_score(files.y_test, risks), abs=1e-12)
    assert report["accuracy"]["value"] == pytest.approx(
        accuracy_score(files.y_test, risks >= 0.5), abs=1e-12)
    assert report["calibration"]["brier"] == pytest.approx(
        brier_score_loss(files.y_test, risks), abs=1e-9)
    assert report["privacy"]["statement"].startswith("eps=1.00 at delta=1e-03")
    assert (out / "validation-report.html").stat().st_size > 0
    assert (out / "roc.png").stat().st_size > 0 and (out / "calibration.png").stat().st_size > 0


def test_drift_flags_a_shifted_batch_and_passes_a_similar_one(files: BundleFiles,
                                                             tmp_path: Path) -> None:
    same = write_csv(tmp_path / "same.csv", files.x_train.sample(150, random_state=0))
    shifted_frame = files.x_train.sample(150, random_state=1).copy()
    shifted_frame["mean_radius"] = shifted_frame["mean_radius"] * 1.6
    shifted = write_csv(tmp_path / "shifted.csv", shifted_frame)

    assert main(["drift", *bundle_args(files), "--csv", str(same)]) == EXIT_OK
    assert main(["drift", *bundle_args(files), "--csv", str(shifted)]) == EXIT_FAILED


def _request(url: str, body: dict | None = None, token: str | None = None
             ) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if data:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_api_over_http_with_the_real_model(files: BundleFiles) -> None:
    bundle = ModelBundle.load(model_path=files.model, preprocessor_path=files.preprocessor)
    token = "a-long-enough-test-token"
    server = make_server(bundle, token=token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        patients = json.loads(files.x_test.head(3).to_json(orient="records"))
        expected = bundle.predict_encoded(bundle.encode(files.x_test.head(3)))

        status, body = _request(f"{server.url}/predict", {"patients": patients}, token)
        assert status == 200
        np.testing.assert_allclose([p["risk"] for p in body["predictions"]], expected,
                                   rtol=1e-6)
        assert all("pushed_up" in p for p in body["predictions"])

        bad = [dict(patients[0], mean_radius="big")]
        status, body = _request(f"{server.url}/predict", {"patients": bad}, token)
        assert status == 400 and body["problems"][0]["column"] == "mean_radius"

        status, _ = _request(f"{server.url}/predict", {"patients": patients})
        assert status == 401
        status, body = _request(f"{server.url}/model", token=token)
        assert status == 200 and body["model-sha256"] == bundle.model_sha256
    finally:
        server.shutdown()
        server.server_close()
