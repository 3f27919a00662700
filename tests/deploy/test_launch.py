"""Launcher plans and the site's pre-flight checks (no processes started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcare.cli import main
from fedcare.deploy import certs as certs_mod
from fedcare.deploy.launch import SuperLinkPlan, SuperNodePlan, check_site
from tests.data_factories import HEART_HEADER, csv_text, heart_rows, write_text


def test_superlink_is_tls_with_node_auth_unless_insecure(tmp_path: Path) -> None:
    plan = SuperLinkPlan(certs=tmp_path, database=tmp_path / "db", storage_dir=tmp_path / "ffs")
    cmd = plan.command()
    assert "--enable-supernode-auth" in cmd and "--ssl-certfile" in cmd
    assert "--insecure" not in cmd and "--database" in cmd
    insecure = SuperLinkPlan(certs=tmp_path, database=tmp_path / "db",
                             storage_dir=tmp_path / "ffs", insecure=True).command()
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure


def test_superlink_refuses_to_start_without_certificates(tmp_path: Path) -> None:
    assert main(["superlink", "--certs", str(tmp_path / "none"),
                 "--database", str(tmp_path / "db")]) == 2


def test_supernode_node_config_carries_the_keys_the_clientapp_reads(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(b"CA")
    plan = SuperNodePlan(site="alpha", csv=tmp_path / "a.csv", state_dir=tmp_path / "s",
                         superlink="h:9092", policy=tmp_path / "p.toml",
                         root_cert=tmp_path / "ca.pem", private_key=tmp_path / "k")
    from flwr.common.config import parse_config_args

    parsed = parse_config_args([plan.node_config()])
    assert parsed["site-name"] == "alpha" and "epsilon-budget" not in parsed
    assert parsed["policy-path"] == str((tmp_path / "p.toml").resolve())
    assert parsed["data-path"] == str((tmp_path / "a.csv").resolve())
    assert parsed["state-dir"] == str((tmp_path / "s").resolve())
    node = plan.site_node()
    assert node.node_config == parsed
    assert node.root_certificates == b"CA" and node.private_key == tmp_path / "k"
    assert node.poll_interval == 0.1 and plan.max_connect_attempts == 5
    # each site keeps its own copy of a run's bundle (never a shared $FLWR_HOME)
    assert node.flower_dir == (tmp_path / "s").resolve() / "flower"


def test_insecure_site_has_neither_ca_nor_key(tmp_path: Path) -> None:
    plan = SuperNodePlan(site="alpha", csv=tmp_path / "a.csv", state_dir=tmp_path / "s",
                         superlink="h:9092", root_cert=tmp_path / "missing.pem",
                         private_key=tmp_path / "k", insecure=True)
    node = plan.site_node()
    assert node.root_certificates is None and node.private_key is None


def test_supernode_refuses_a_bad_csv_listing_every_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = heart_rows(20, seed=1)
    rows[2]["age"] = "old"
    rows[5]["sex"] = "7"
    csv = write_text(tmp_path, "site.csv", csv_text(rows, HEART_HEADER))
    certs_mod.init(tmp_path / "certs", hosts=["localhost"], sites=["alpha"])
    code = main(["supernode", "--site", "alpha", "--csv", str(csv), "--state-dir",
                 str(tmp_path / "state"), "--superlink", "127.0.0.1:1",
                 "--certs", str(tmp_path / "certs")])
    out = capsys.readouterr().out
    assert code == 1
    assert "2 data problem(s)" in out and "age" in out and "sex" in out
    assert "not starting" in out
    assert not (tmp_path / "state").exists()  # nothing started, nothing written


def test_site_checks_its_policy_and_key_files_before_connecting(tmp_path: Path) -> None:
    csv = write_text(tmp_path, "site.csv", csv_text(heart_rows(20, seed=1), HEART_HEADER))
    policy = write_text(tmp_path, "site-policy.toml", "lifetime-epsilon-budget = 0\n")
    plan = SuperNodePlan(site="alpha", csv=csv, state_dir=tmp_path / "s", superlink="h:1",
                         policy=policy, root_cert=tmp_path / "missing.pem",
                         private_key=None)
    with pytest.raises(Exception, match="lifetime-epsilon-budget must be") as err:
        check_site(plan)
    assert "root certificate must be a readable file" in str(err.value)
    assert "private key must be a readable file" in str(err.value)


_STOPPED_WHILE_STARTING = """
import sys, time
from fedcare.cli import main
from fedcare.deploy import launch, probe
launch.check_site = lambda plan: "ok"
probe.wait_for_superlink = lambda *args, **kwargs: 1
def slow_site(plan):  # like importing TensorFlow: Flower's handlers not installed yet
    print("SITE STARTING", flush=True)
    time.sleep(60)
    sys.exit(9)
launch.run_site = slow_site
sys.exit(main(["supernode", "--site", "alpha", "--csv", sys.argv[1] + "/a.csv",
               "--state-dir", sys.argv[1] + "/s", "--superlink", "127.0.0.1:1",
               "--certs", sys.argv[1], "--insecure"]))
"""


def test_supernode_stopped_while_it_starts_exits_0_not_killed_by_the_signal(
        tmp_path: Path) -> None:
    """SIGTERM can come before Flower installs its signal handlers (TF import)."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _STOPPED_WHILE_STARTING, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None
    for line in proc.stdout:
        if "SITE STARTING" in line:
            break
    proc.send_signal(signal.SIGTERM)

    assert proc.wait(timeout=60) == 0


def test_supernode_that_cannot_reach_its_superlink_exits_1_naming_the_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from fedcare.deploy import launch, probe

    monkeypatch.setattr(launch, "check_site", lambda plan: "ok")
    monkeypatch.setattr(probe, "FIRST_WAIT", 0.0)
    monkeypatch.setattr(launch, "run_site", lambda plan: pytest.fail("must not start"))
    with socket.create_server(("127.0.0.1", 0)) as sock:
        address = f"127.0.0.1:{sock.getsockname()[1]}"

    code = main(["supernode", "--site", "alpha", "--csv", str(tmp_path / "a.csv"),
                 "--state-dir", str(tmp_path / "s"), "--superlink", address,
                 "--certs", str(tmp_path), "--insecure", "--max-connect-attempts", "2"])

    err = capsys.readouterr().err
    assert code == 1
    assert "giving up after 2 connection attempt(s)" in err
    assert "must accept connections" in err


@pytest.mark.parametrize("flag", [["--poll-interval", "0"], ["--max-connect-attempts", "0"]])
def test_supernode_rejects_bad_poll_and_attempt_settings(flag: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["supernode", "--site", "a", "--csv", "a.csv", "--state-dir", "s",
              "--superlink", "h:1", *flag])
    assert exited.value.code == 2


def _status(tmp_path: Path, address: str) -> int:
    return main(["supernode", "status", "--site", "alpha", "--state-dir", str(tmp_path / "s"),
                 "--clientappio-address", address])


def test_site_status_is_1_when_its_process_does_not_answer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as sock:
        address = f"127.0.0.1:{sock.getsockname()[1]}"

    assert _status(tmp_path, address) == 1
    out = capsys.readouterr().out
    assert "site alpha: NOT RUNNING" in out and "PROBLEM: the site process does not answer" in out


def test_site_status_is_0_for_a_running_site_and_shows_its_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as sock:
        code = _status(tmp_path, f"127.0.0.1:{sock.getsockname()[1]}")

    out = capsys.readouterr().out
    assert code == 0, out
    assert "site alpha: running" in out and "all of it left" in out


def test_running_a_site_needs_its_csv_and_superlink(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["supernode", "--site", "alpha", "--state-dir", "s"]) == 2
    assert "--csv and --superlink must be given" in capsys.readouterr().err
