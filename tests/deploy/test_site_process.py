"""`fedcare supernode status` checks the process the site's state folder records, not
whatever answers on a port (two sites on one host: the second's check found the first)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fedcare.cli.main import main
from fedcare.common.errors import ConfigError
from fedcare.deploy import site_process


def _free_address() -> str:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return f"127.0.0.1:{sock.getsockname()[1]}"  # closed: nothing answers there


def _ended_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _status(state: Path, site: str = "alpha", *extra: str) -> int:
    return main(["supernode", "status", "--site", site, "--state-dir", str(state), *extra])


def test_a_record_round_trips_and_only_its_own_process_removes_it(tmp_path: Path) -> None:
    written = site_process.write_record(tmp_path, site="alpha",
                                        clientappio_address="127.0.0.1:9095")

    assert site_process.read_record(tmp_path) == written
    assert written.pid == os.getpid()
    other = {**written.to_record(), "pid": written.pid + 1}
    site_process.record_path(tmp_path).write_text(json.dumps(other))
    site_process.remove_record(tmp_path)
    assert site_process.record_path(tmp_path).exists()  # another process's record stays
    site_process.write_record(tmp_path, site="alpha", clientappio_address="127.0.0.1:9095")
    site_process.remove_record(tmp_path)
    assert site_process.read_record(tmp_path) is None


def test_a_broken_record_names_the_file_and_each_field(tmp_path: Path) -> None:
    path = site_process.record_path(tmp_path)
    path.write_text(json.dumps({"format": site_process.SITE_PROCESS_FORMAT, "site": "",
                                "pid": True, "clientappio-address": "9094"}))

    with pytest.raises(ConfigError) as err:
        site_process.read_record(tmp_path)

    text = str(err.value)
    assert str(path) in text
    assert "site must be" in text and "pid must be" in text and "HOST:PORT" in text


def test_status_checks_the_recorded_port_not_the_default_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Arrange: site alpha answers on its own port; site beta's record names a port where
    # nothing answers, while something (alpha) answers on alpha's port
    with socket.create_server(("127.0.0.1", 0)) as alpha_port:
        alpha_address = f"127.0.0.1:{alpha_port.getsockname()[1]}"
        beta_address = _free_address()
        site_process.write_record(tmp_path / "alpha", site="alpha",
                                  clientappio_address=alpha_address)
        site_process.write_record(tmp_path / "beta", site="beta",
                                  clientappio_address=beta_address)

        # Act
        alpha_code = _status(tmp_path / "alpha", "alpha")
        alpha_out = capsys.readouterr().out
        beta_code = _status(tmp_path / "beta", "beta")
        beta_out = capsys.readouterr().out

    # Assert
    assert alpha_code == 0, alpha_out
    assert f"site alpha: running (pid {os.getpid()}, local port {alpha_address}" in alpha_out
    assert beta_code == 1
    assert f"site beta: NOT RUNNING (pid {os.getpid()}, local port {beta_address}" in beta_out
    assert f"does not answer on {beta_address}" in beta_out


def test_status_is_1_when_the_recorded_process_has_ended(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as port:  # something answers there
        address = f"127.0.0.1:{port.getsockname()[1]}"
        record = {"format": site_process.SITE_PROCESS_FORMAT, "version": 1, "site": "alpha",
                  "pid": _ended_pid(), "clientappio-address": address, "started": "x"}
        tmp_path.joinpath(site_process.SITE_PROCESS_FILENAME).write_text(json.dumps(record))

        code = _status(tmp_path)

    out = capsys.readouterr().out
    assert code == 1
    assert "site alpha: NOT RUNNING" in out
    assert f"its process (pid {record['pid']}) has ended" in out


def test_status_is_1_for_another_sites_state_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as port:
        site_process.write_record(tmp_path, site="beta",
                                  clientappio_address=f"127.0.0.1:{port.getsockname()[1]}")

        code = _status(tmp_path, "alpha")

    out = capsys.readouterr().out
    assert code == 1
    assert "is site 'beta''s, not 'alpha''s" in out
