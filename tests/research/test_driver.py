"""A simulation's driver never trains: it does not import the sites' code or TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest

from fedcare.common.config import RunConfig
from fedcare.flower_compat.simulation import AppByName

REPO = Path(__file__).resolve().parents[2]


def test_an_app_by_name_travels_as_its_name_and_arrives_as_the_app() -> None:
    # Arrange: Flower's engine ships a closure over the ClientApp to each worker
    ref = AppByName("fedcare.common.config", "RunConfig")

    def load() -> object:
        return ref

    # Act: what Ray does with it (cloudpickle), then the worker's call
    shipped = cloudpickle.dumps(load)
    arrived = cloudpickle.loads(shipped)()

    # Assert
    assert arrived is RunConfig
    assert b"fedcare.common.config" in shipped and len(shipped) < 2_000


def test_an_app_by_name_is_read_from_flowers_module_attribute_form() -> None:
    assert AppByName.of("fedcare.site.app:app") == AppByName("fedcare.site.app", "app")
    with pytest.raises(ValueError, match=r"app must be MODULE:ATTRIBUTE; got 'fedcare'"):
        AppByName.of("fedcare")


def test_an_app_by_name_called_in_place_loads_and_calls_the_app() -> None:
    ref = AppByName("fedcare.common.config", "RunConfig")

    assert ref(num_rounds=3).num_rounds == 3


_DRIVER = """
import json, sys
from fedcare.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "tensorflow": "tensorflow" in sys.modules,
                  "site-code": "fedcare.site.app" in sys.modules}))
"""


@pytest.mark.slow
def test_fedcare_simulate_trains_in_the_workers_only(tmp_path: Path) -> None:
    # Act: a real 2-site simulation through the CLI, in a fresh interpreter
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, "simulate", "--sites", "2", "--rounds", "2",
         "--output-dir", str(tmp_path), "--run-name", "driver"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}, check=False)

    # Assert: the run and its audit completed, and the driver never loaded either
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == {"code": 0, "tensorflow": False, "site-code": False}, done.stderr[-3000:]
    report = json.loads((tmp_path / "driver" / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    audit = report["membership-audit"]
    assert sorted(audit) == ["site-0", "site-1"]
    assert all(row["violates_claim"] is False and row["epsilon_lower_bound"] >= 0.0
               for row in audit.values()), audit
