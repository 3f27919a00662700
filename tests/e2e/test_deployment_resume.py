"""kill -9 the consortium server of a real deployment between rounds, restart it, resume.

On 127.0.0.1: ``fedcare superlink`` (TLS, SuperNode authentication, SQLite state) and two
authenticated ``fedcare supernode`` sites. "The server" is the SuperLink's process group:
flower-superlink, its SuperExec and the flwr-serverapp that runs ``run_federation``. The
SuperNodes are left running: they must survive the SuperLink's death and reconnect.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fedcare.common.runid import attempt_run_id
from tests.data_factories import write_heart_dir
from tests.e2e import resume_checks as checks
from tests.e2e.deploy_helpers import RUN_TIMEOUT, Deployment, wait_for

pytestmark = pytest.mark.slow

SITES = ("alpha", "beta")
ROUNDS = 3
DELTA = 1e-3


def test_kill_9_superlink_between_rounds_then_resume_finishes_with_ledgers_intact(
        tmp_path: Path) -> None:
    started = time.monotonic()
    dep = Deployment.create(tmp_path, list(SITES), spare_ports=len(SITES))
    (tmp_path / "data").mkdir()
    write_heart_dir(tmp_path / "data", {"alpha": 120, "beta": 100})
    out = tmp_path / "runs"
    run_dir, sites_dir = out / "crash", tmp_path / "sites"
    run_config = (f'dataset="heart-disease" num-rounds={ROUNDS} min-sites=2 '
                  f'hidden-units="16" output-dir="{out}" run-name="crash" '
                  f'target-epsilon=1.0 delta={DELTA}')
    try:
        dep.start_superlink()
        for site, port in zip(SITES, dep.spare_ports):
            dep.start_site(site, port)
        submitted = dep.flwr_run(run_config, stream=False, timeout=120)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        # Kill once round 1 is checkpointed and a site has already spent privacy on
        # round 2: the worst moment, as round 2 must then be redone and charged again.
        wait_for("round 1's checkpoint and a spend on round 2",
                 lambda: (checks.checkpointed_round(run_dir) >= 1
                          and checks.spent_on(sites_dir, 2)),
                 RUN_TIMEOUT, interval=0.05)
        dep.kill("superlink")
        killed_at = time.monotonic()
        checkpoint = checks.checkpointed_round(run_dir)
        assert checkpoint < ROUNDS and not (run_dir / "report.json").exists()
        before = checks.ledger_entries(sites_dir)
        eps_before = checks.epsilons(sites_dir, DELTA)

        # Same database and certificates; the SuperNodes are not touched.
        dep.start_superlink("superlink-restarted")
        resumed = dep.flwr_run(f"{run_config} resume=true")

        report_path = run_dir / "report.json"
        assert report_path.is_file(), (f"no report; flwr run said:\n{resumed.stdout[-3000:]}"
                                       f"\n{resumed.stderr[-3000:]}")
        for site in SITES:  # never restarted: the same processes served both attempts
            assert dep.procs[site].poll() is None, dep.log(site)[-3000:]
    finally:
        dep.stop_all()
    report = json.loads(report_path.read_text())
    redone = checks.assert_resumed_intact(report, sites_dir, run_name="crash",
                                          rounds=ROUNDS, checkpoint=checkpoint, delta=DELTA,
                                          before=before, eps_before=eps_before)
    after = checks.ledger_entries(sites_dir)
    assert {r for entries in after.values() for r, _ in entries} == {
        attempt_run_id("crash", 0), attempt_run_id("crash", 1)}
    assert (run_dir / "model.keras").stat().st_size > 0
    assert sorted(json.loads((run_dir / "model.json").read_text())["privacy"]) == list(SITES)
    print(f"\nSuperLink killed after round {checkpoint}'s checkpoint; rounds redone: "
          f"{sorted(redone)}; restart to report {time.monotonic() - killed_at:.1f}s; "
          f"test {time.monotonic() - started:.1f}s; epsilon "
          f"{ {s: round(report['sites'][s]['epsilon'], 3) for s in SITES} }")
