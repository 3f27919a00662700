"""One deployment, several runs: what an operator meets on a SuperLink and SuperNodes that
stay up between runs (loopback, TLS, SuperNode authentication, three `fedcare supernode`
site processes whose policy allows at most ``MAX_ROUNDS`` rounds a run).

1. Two SecAgg+ runs back to back reach every site: each site answers the second run's
   pre-flight and trains in it (issue 14: on a reused deployment one site never received
   the second run's pre-flight).
2. A site paused (SIGSTOP) as its train message arrives, past its heartbeats: the round
   goes on without it and the report names it with the SuperLink's reason; once resumed,
   its late reply is refused (or the message whose run ended while it arrived is
   forgotten), it says so in its log and keeps running: it answers the next run's
   pre-flight (test 3). Issue 14: the late reply ended the site process; a message
   half-received at the end of a run kept the site from answering the next run.
3. A run every site refuses in pre-flight ends cleanly: the operator's stream names each
   site's reasons and the report, shows no traceback and no Flower exit code 201,
   `fedcare submit` exits with its documented refused status, and `fedcare status` shows
   the refusal from the run folder.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from fedcare.cli.args import EXIT_REFUSED
from fedcare.server.summary import REFUSED_MARKER
from tests.data_factories import write_heart_dir
from tests.e2e.deploy_helpers import BIN, RUN_TIMEOUT, Deployment, wait_for

pytestmark = pytest.mark.slow

SITES = {"alpha": 120, "beta": 100, "gamma": 1500}
PAUSED = "gamma"  # trains on the most rows: seconds, so it is paused before it replies
RECEIVED_TRAIN = "Received: train message"  # Flower's SuperNode log line
LATE_SIGNS = ("reply was not delivered", "arrived only in part")  # the site's warnings
MAX_ROUNDS = 2  # every site's policy: max-rounds
ROUND_TIMEOUT = 180
# fixed noise and RDP: no calibration search at each site (minutes on a loaded machine)
SECAGG_RUN = ('dataset="heart-disease" num-rounds=1 min-sites=3 hidden-units="16" '
              'secure-aggregation="secaggplus" secure-noise=false noise-multiplier=2.0 '
              f'accountant="rdp" delta=0.001 round-timeout={ROUND_TIMEOUT}')
REFUSED_RUN = ('dataset="heart-disease" min-sites=2 hidden-units="16" noise-multiplier=2.0 '
               f'accountant="rdp" delta=0.001 round-timeout={ROUND_TIMEOUT} '
               f'num-rounds={MAX_ROUNDS + 1}')
PLAIN_RUN = ('dataset="heart-disease" num-rounds=1 min-sites=2 hidden-units="16" '
             'noise-multiplier=2.0 accountant="rdp" delta=0.001 '
             f'round-timeout={ROUND_TIMEOUT}')
RUN_LIMIT = 2 * RUN_TIMEOUT


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("reuse")
    dep = Deployment.create(root, list(SITES), spare_ports=len(SITES))
    (root / "data").mkdir()
    write_heart_dir(root / "data", SITES)
    try:
        dep.start_superlink()
        for site, io in zip(SITES, dep.spare_ports, strict=True):
            dep.start_site(site, io, epsilon_budget=20.0, policy=f"max-rounds = {MAX_ROUNDS}\n")
        yield dep
    finally:
        dep.stop_all()


def _submit(dep: Deployment, run_config: str) -> subprocess.CompletedProcess[str]:
    """``fedcare submit PROJECT deployment --stream`` as the operator types it."""
    return subprocess.run(
        [str(BIN / "fedcare"), "submit", *dep.flwr_run_args(run_config, stream=True)],
        env=dep.env, capture_output=True, text=True, timeout=RUN_LIMIT,
        start_new_session=True, check=False)


def _report(dep: Deployment, name: str, result: subprocess.CompletedProcess[str]
            ) -> dict[str, Any]:
    path = dep.root / "runs" / name / "report.json"
    assert path.exists(), f"no report; the stream said:\n{result.stdout[-4000:]}"
    return dict(json.loads(path.read_text()))


def test_two_secaggplus_runs_back_to_back_reach_every_site(deployment: Deployment) -> None:
    out = deployment.root / "runs"
    for name in ("secagg-first", "secagg-second"):
        result = _submit(deployment, f'{SECAGG_RUN} output-dir="{out}" run-name="{name}"')
        report = _report(deployment, name, result)

        assert sorted(report["preflight"]["accepted"]) == sorted(SITES), name
        assert report["preflight"]["silent-nodes"] == [], name
        assert report["status"] == "completed", name
        assert sorted(report["rounds"][0]["train"]) == sorted(SITES), name
        assert report["rounds"][0]["failures"] == [], name


def test_a_site_paused_past_its_heartbeats_is_dropped_and_survives_its_late_reply(
        deployment: Deployment) -> None:
    out = deployment.root / "runs"
    log = deployment.root / f"{PAUSED}.log"
    seen = len(log.read_text(errors="replace"))
    run = subprocess.Popen(
        [str(BIN / "fedcare"), "submit", *deployment.flwr_run_args(
            f'{PLAIN_RUN} output-dir="{out}" run-name="paused"', stream=True)],
        env=deployment.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        wait_for(f"{PAUSED} to receive its train message",
                 lambda: RECEIVED_TRAIN in log.read_text(errors="replace")[seen:]
                 or run.poll() is not None, RUN_LIMIT)
        deployment.signal(PAUSED, signal.SIGSTOP)  # past its heartbeats: until the run ends
        stream, _ = run.communicate(timeout=RUN_LIMIT)
    finally:
        deployment.signal(PAUSED, signal.SIGCONT)
        if run.poll() is None:
            run.kill()
    report = _report(deployment, "paused", subprocess.CompletedProcess([], 0, stream, ""))

    rnd = report["rounds"][0]
    assert sorted(rnd["train"]) == sorted(set(SITES) - {PAUSED})
    failures = [f for f in rnd["failures"] if f["phase"] == "train"]
    assert [f["site"] for f in failures] == [PAUSED]
    assert "Node Unavailable" in failures[0]["reason"]
    # Where the pause fell decides what the resumed site meets: its late reply refused
    # (paused after it had the whole message), or a message whose run ended while it
    # was still arriving, forgotten (paused while receiving it). Both leave it running.
    wait_for(f"{PAUSED} to log what became of the message it was paused on",
             lambda: any(sign in log.read_text(errors="replace")[seen:]
                         for sign in LATE_SIGNS), RUN_LIMIT)
    after = log.read_text(errors="replace")[seen:]
    print(f"{PAUSED} after the pause: " + "; ".join(s for s in LATE_SIGNS if s in after))
    assert "reply was not delivered" not in after or "no longer awaited" in after
    assert deployment.procs[PAUSED].poll() is None  # still running; test 3: it answers


def test_a_run_every_site_refuses_ends_cleanly_naming_the_reasons(
        deployment: Deployment) -> None:
    out = deployment.root / "runs"
    result = _submit(deployment, f'{REFUSED_RUN} output-dir="{out}" run-name="refused"')
    report = _report(deployment, "refused", result)
    (deployment.root / "refused-stream.log").write_text(result.stdout + result.stderr)

    assert report["status"] == "refused"
    stream = result.stdout + result.stderr
    assert "Traceback" not in stream
    assert "Exit Code: 201" not in stream
    reason = f"num-rounds must be <= {MAX_ROUNDS}"
    for site in SITES:
        assert f"{site}: REFUSES" in stream
    assert stream.count(reason) >= len(SITES)
    assert str(out / "refused" / "report.json") in stream
    assert result.returncode == EXIT_REFUSED
    status = subprocess.run([str(BIN / "fedcare"), "status", str(out / "refused")],
                            env=deployment.env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert status.returncode == EXIT_REFUSED
    assert f"{REFUSED_MARKER}: run: at least min-sites=2" in status.stdout
    assert status.stdout.count(reason) == len(SITES)
