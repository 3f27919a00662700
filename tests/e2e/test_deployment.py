"""A real deployment on 127.0.0.1: one SuperLink (TLS, SuperNode authentication, SQLite
state), two authenticated hospital SuperNodes, and three that must be refused.

Every process runs in its own session and is killed as a group when the module ends.
One SuperLink serves every test here (starting one costs ~10 s of TensorFlow imports).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedcare.deploy import certs as certs_mod
from fedcare.simulations.run import PROJECT_ROOT
from tests.data_factories import write_heart_dir

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
HONEST = ("alpha", "beta")
START_TIMEOUT = 90.0
RUN_TIMEOUT = 300.0
REFUSED_WAIT = "15"  # seconds a refused SuperNode keeps retrying before it gives up


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class Deployment:
    root: Path
    certs: Path
    env: dict[str, str]
    fleet: str
    control: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        out = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            _kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            _kill_group(proc, signal.SIGKILL)
            proc.wait()


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def wait_for(what: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("deployment")
    certs = root / "certs"
    # gamma gets a key pair but is then taken off the list: its key must be refused
    certs_mod.init(certs, hosts=["localhost", "127.0.0.1"], sites=[*HONEST, "gamma"])
    certs_mod.remove_site(certs, "gamma")
    certs_mod.create_ca(root / "other-ca")
    (root / "data").mkdir()
    write_heart_dir(root / "data", {"alpha": 120, "beta": 100, "gamma": 80})
    fleet, control, serverappio, io_a, io_b, *io_bad = free_ports(8)
    env = {**os.environ, "FLWR_HOME": str(root / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(PROJECT_ROOT),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    dep = Deployment(root=root, certs=certs, env=env, fleet=f"127.0.0.1:{fleet}",
                     control=f"127.0.0.1:{control}")
    try:
        dep.start("superlink", [str(BIN / "fedcare"), "superlink", "--certs", str(certs),
                                "--database", str(root / "state" / "superlink.db"),
                                "--fleet-address", dep.fleet, "--control-address", dep.control,
                                "--serverappio-address", f"127.0.0.1:{serverappio}"])
        wait_for("the SuperLink to register the listed sites",
                 lambda: "SuperNode registrations: registered" in dep.log("superlink"),
                 START_TIMEOUT)
        for site, io in zip(HONEST, (io_a, io_b)):
            dep.start(site, [str(BIN / "fedcare"), "supernode", "--site", site,
                             "--csv", str(root / "data" / f"{site}.csv"),
                             "--state-dir", str(root / "sites" / site),
                             "--superlink", dep.fleet, "--certs", str(certs),
                             "--epsilon-budget", "4", "--clientappio-address",
                             f"127.0.0.1:{io}"])
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
        dep.start("unlisted-key", [str(BIN / "fedcare"), "supernode", "--site", "gamma",
                                   "--csv", str(root / "data" / "gamma.csv"),
                                   "--state-dir", str(root / "sites" / "gamma"),
                                   "--superlink", dep.fleet, "--certs", str(certs),
                                   "--clientappio-address", f"127.0.0.1:{io_bad[2]}"])
        yield dep
    finally:
        dep.stop_all()


@pytest.fixture(scope="module")
def dp_run(deployment: Deployment) -> dict[str, object]:
    """``flwr run . deployment``, pointed at this SuperLink, 2 rounds with DP."""
    out = deployment.root / "runs"
    overrides = (f'dataset="heart-disease" num-rounds=2 min-sites=2 hidden-units="16" '
                 f'output-dir="{out}" run-name="deployed" target-epsilon=1.0 delta=0.001')
    federation = (f'address="{deployment.control}" '
                  f'root-certificates="{deployment.certs / certs_mod.CA_CERT}"')
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "flwr"), "run", str(PROJECT_ROOT), "deployment", "--stream",
         "--federation-config", federation, "--run-config", overrides],
        env=deployment.env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
        start_new_session=True)
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
