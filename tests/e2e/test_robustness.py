"""Faults and attacks in real simulations: dropouts, a malicious site, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedcare.common.config import RunConfig
from fedcare.research.run import PROJECT_ROOT, run_simulation
from tests.e2e.resume_checks import (
    assert_resumed_intact,
    checkpointed_round,
    epsilons,
    ledger_entries,
    spent_on,
)

pytestmark = pytest.mark.slow

DELTA = 1e-3


def small_run(tmp_path: Path, **changes: object) -> RunConfig:
    return RunConfig(num_rounds=3, output_dir=str(tmp_path / "runs"), run_name="robust",
                     delta=DELTA, secure_noise=False, hidden_units="16").replace(**changes)


def test_a_site_crashing_mid_run_does_not_stop_the_others(tmp_path: Path) -> None:
    # Site 1 of 3 crashes while training from round 2 on; min-sites = 2 still reply.
    config = small_run(tmp_path, min_sites=2, fail_sites="1", fail_round=2, round_timeout=120.0)

    report = run_simulation(config, num_sites=3)

    trained = [sorted(r["train"]) for r in report["rounds"]]
    assert trained == [["site-0", "site-1", "site-2"], ["site-0", "site-2"], ["site-0", "site-2"]]
    dropped = [[(f["site"], f["phase"]) for f in r["failures"]] for r in report["rounds"]]
    assert dropped == [[], [("site-1", "train")], [("site-1", "train")]]
    assert report["sites"]["site-1"]["failures"] == 2
    assert report["final"]["mean-site-accuracy"] > 0.75
    assert (tmp_path / "runs" / "robust" / "model.keras").is_file()


def test_one_sign_flipping_site_of_five_is_contained_by_the_median(tmp_path: Path) -> None:
    # Same seed, same data; site 0 sends -10 x its update. Accuracy on every site's
    # held-out rows (the attacker's included) stays within 3 points of the clean run.
    # The claim is about the shared (global) model: no site-private part in this comparison.
    common = {"num_rounds": 5, "min_sites": 5, "strategy": "fedmedian",
              "personalisation": "none"}
    clean = run_simulation(small_run(tmp_path, run_name="clean", **common), num_sites=5)
    attacked = run_simulation(small_run(tmp_path, run_name="attacked", malicious_sites="0",
                                        attack="sign-flip", attack_scale=10.0, **common),
                              num_sites=5)
    # Two rounds of plain averaging suffice to show the harm.
    plain = run_simulation(small_run(tmp_path, run_name="fedavg-attacked", malicious_sites="0",
                                     **{**common, "strategy": "fedavg", "num_rounds": 2}),
                           num_sites=5)

    clean_acc = clean["final"]["mean-site-accuracy"]
    attacked_acc = attacked["final"]["mean-site-accuracy"]
    assert clean_acc > 0.85
    assert attacked_acc >= clean_acc - 0.03
    # The attack is real: averaging it in does harm.
    assert plain["final"]["mean-site-accuracy"] < attacked_acc - 0.03
    print(f"\nmean site accuracy: clean {clean_acc:.3f}, attacked+median {attacked_acc:.3f}, "
          f"attacked+fedavg {plain['final']['mean-site-accuracy']:.3f}")


def test_kill_9_between_rounds_then_resume_finishes_with_ledgers_intact(tmp_path: Path) -> None:
    rounds, sites = 3, 3
    out = tmp_path / "runs"
    run_dir = out / "crash"
    command = [sys.executable, "-m", "fedcare.cli", "simulate", "--sites", str(sites),
               "--rounds", str(rounds), "--output-dir", str(out), "--run-name", "crash",
               "--set", "hidden-units='16'", "--set", "secure-noise=false",
               "--set", f"min-sites={sites}"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "FLWR_TELEMETRY_ENABLED": "0"}
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log,
                             start_new_session=True)
    state = run_dir / "resume.json"
    deadline = time.monotonic() + 600
    try:
        # Kill once round 1 is checkpointed and a site has already spent privacy on round 2:
        # the worst moment, as round 2 must then be redone and charged again.
        while time.monotonic() < deadline and first.poll() is None:
            if checkpointed_round(run_dir) >= 1 and spent_on(run_dir / "sites", 2):
                break
            time.sleep(0.05)
        assert first.poll() is None, "the run ended before it could be killed"
        os.killpg(first.pid, signal.SIGKILL)  # the server and its simulated sites, at once
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    checkpoint = json.loads(state.read_text())["round"]
    before = ledger_entries(run_dir / "sites")
    eps_before = epsilons(run_dir / "sites", DELTA)
    assert not (run_dir / "report.json").exists()

    resumed = subprocess.run([*command, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600, check=False)

    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    redone = assert_resumed_intact(report, run_dir / "sites", run_name="crash", rounds=rounds,
                                   checkpoint=checkpoint, delta=DELTA, before=before,
                                   eps_before=eps_before)
    print(f"\nkilled after round {checkpoint}'s checkpoint; rounds redone: {sorted(redone)}")
