"""A real deployment on 127.0.0.1: one SuperLink (TLS, SuperNode authentication, SQLite
state), two authenticated hospital SuperNodes, and three that must be refused.

Every process runs in its own session and is killed as a group when the module ends.
One SuperLink serves every test here (starting one costs ~10 s of TensorFlow imports).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcare.deploy import certs as certs_mod
from tests.data_factories import write_heart_dir
from tests.e2e.deploy_helpers import BIN, Deployment

pytestmark = pytest.mark.slow

HONEST = ("alpha", "beta")
REFUSED_WAIT = "15"  # seconds a refused SuperNode keeps retrying before it gives up


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("deployment")
    # gamma gets a key pair but is then taken off the list: its key must be refused
    dep = Deployment.create(root, [*HONEST, "gamma"], spare_ports=5)
    certs = dep.certs
    certs_mod.remove_site(certs, "gamma")
    certs_mod.create_ca(root / "other-ca")
    (root / "data").mkdir()
    write_heart_dir(root / "data", {"alpha": 120, "beta": 100, "gamma": 80})
    io_a, io_b, *io_bad = dep.spare_ports
    try:
        dep.start_superlink()
        for site, io in zip(HONEST, (io_a, io_b)):
            dep.start_site(site, io)
        node = [str(BIN / "flower-supernode"), "--superlink", dep.fleet, "--isolation",
                "process", "--max-wait-time", REFUSED_WAIT]
        dep.start("no-tls", [*node, "--insecure",
                             "--clientappio-api-address", f"127.0.0.1:{io_bad[0]}"])
        dep.start("other-ca", [*node, "--root-certificates",
                               str(root / "other-ca" / certs_mod.CA_CERT),
                               "--auth-supernode-private-key",
                               str(certs_mod.site_key_path(certs, "alpha")),
                               "--clientappio-api-address", f"127.0.0.1:{io_bad[1]}"])
        # the unlisted site goes through `fedcare supernode`, as a hospital would
        dep.start_site("gamma", io_bad[2], epsilon_budget=None, name="unlisted-key")
        yield dep
    finally:
        dep.stop_all()


@pytest.fixture(scope="module")
def dp_run(deployment: Deployment) -> dict[str, object]:
    """``flwr run . deployment``, pointed at this SuperLink, 2 rounds with DP."""
    out = deployment.root / "runs"
    overrides = (f'dataset="heart-disease" num-rounds=2 min-sites=2 hidden-units="16" '
                 f'output-dir="{out}" run-name="deployed" target-epsilon=1.0 delta=0.001')
    started = time.monotonic()
    result = deployment.flwr_run(overrides)
    seconds = time.monotonic() - started
    report_path = out / "deployed" / "report.json"
    assert report_path.exists(), (f"no report; flwr run said:\n{result.stdout[-3000:]}"
                                  f"\n{result.stderr[-3000:]}")
    return {"report": json.loads(report_path.read_text()), "seconds": seconds,
            "run_dir": out / "deployed", "stdout": result.stdout}


def test_two_authenticated_sites_complete_a_dp_run_over_tls(dp_run: dict[str, object],
                                                             deployment: Deployment) -> None:
    report = dp_run["report"]
    assert isinstance(report, dict)
    assert sorted(report["sites"]) == sorted(HONEST)
    assert len(report["rounds"]) == 2
    for site in HONEST:
        assert 0 < report["sites"][site]["epsilon"] <= 1.0 + 1e-6
        ledger = deployment.root / "sites" / site / "privacy-ledger.json"
        assert len(json.loads(ledger.read_text())["entries"]) == 2
    run_dir = dp_run["run_dir"]
    assert isinstance(run_dir, Path)
    assert (run_dir / "model.keras").stat().st_size > 0
    manifest = json.loads((run_dir / "model.json").read_text())
    assert sorted(manifest["privacy"]) == sorted(HONEST)
    print(f"deployment run: 2 rounds in {dp_run['seconds']:.1f}s (flwr run, end to end)")


def test_supernode_without_tls_is_refused(dp_run: dict[str, object],
                                          deployment: Deployment) -> None:
    proc = deployment.procs["no-tls"]
    assert proc.wait(timeout=60) != 0
    assert "UNAVAILABLE" in deployment.log("no-tls")


def test_supernode_trusting_another_ca_is_refused(dp_run: dict[str, object],
                                                  deployment: Deployment) -> None:
    proc = deployment.procs["other-ca"]
    assert proc.wait(timeout=60) != 0
    assert "CERTIFICATE_VERIFY_FAILED" in deployment.log("other-ca")


def test_supernode_whose_key_is_not_on_the_list_is_refused(dp_run: dict[str, object],
                                                           deployment: Deployment) -> None:
    proc = deployment.procs["unlisted-key"]
    assert proc.wait(timeout=60) == 1  # `fedcare supernode` reports the refusal
    assert "No SuperNode found with the given public key" in deployment.log("unlisted-key")
    assert "gamma" not in dp_run["report"]["sites"]  # type: ignore[index]
    assert not (deployment.root / "sites" / "gamma" / "privacy-ledger.json").exists()


def _group_is_empty(pgid: int) -> bool:
    import os

    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sigterm_stops_a_site_cleanly_leaving_no_process(dp_run: dict[str, object],
                                                         deployment: Deployment) -> None:
    import signal

    from tests.e2e.deploy_helpers import wait_for

    proc = deployment.procs["beta"]
    proc.send_signal(signal.SIGTERM)

    assert proc.wait(timeout=60) == 0
    wait_for("the site's process group to empty", lambda: _group_is_empty(proc.pid), 30)


def test_sigterm_stops_the_superlink_cleanly_leaving_no_process(
        dp_run: dict[str, object], deployment: Deployment) -> None:
    import signal

    from tests.e2e.deploy_helpers import wait_for

    proc = deployment.procs["superlink"]
    proc.send_signal(signal.SIGTERM)

    assert proc.wait(timeout=60) == 0
    wait_for("the SuperLink's process group to empty", lambda: _group_is_empty(proc.pid), 30)
