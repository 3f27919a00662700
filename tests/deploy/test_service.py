"""`fedcare service install-unit`: the systemd unit a hospital or the consortium installs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcare.cli import main

SITE_ARGS = ["--args", "--site st-mary --csv /srv/fedcare/data/site.csv "
             "--state-dir /srv/fedcare/state --superlink link.example:9092"]


def test_site_unit_runs_the_site_command_restarts_on_failure_and_disables_telemetry(
        tmp_path: Path) -> None:
    out = tmp_path / "fedcare-supernode.service"

    code = main(["service", "install-unit", "supernode", "--user", "fedcare",
                 "--working-dir", "/srv/fedcare", "--out", str(out),
                 "--fedcare", "/opt/fedcare/bin/fedcare", *SITE_ARGS])

    text = out.read_text()
    assert code == 0
    assert ("ExecStart=/opt/fedcare/bin/fedcare supernode --site st-mary --csv "
            "/srv/fedcare/data/site.csv --state-dir /srv/fedcare/state --superlink "
            "link.example:9092") in text
    for line in ("User=fedcare", "WorkingDirectory=/srv/fedcare", "Restart=on-failure",
                 "Environment=FLWR_TELEMETRY_ENABLED=0", "KillSignal=SIGTERM"):
        assert line in text.splitlines()


def test_an_existing_unit_is_not_replaced_without_force(tmp_path: Path) -> None:
    out = tmp_path / "u.service"
    out.write_text("mine")
    args = ["service", "install-unit", "superlink", "--user", "fedcare",
            "--working-dir", "/srv/fedcare", "--out", str(out)]

    assert main(args) == 1
    assert out.read_text() == "mine"
    assert main([*args, "--force"]) == 0 and "fedcare superlink" in out.read_text()


@pytest.mark.parametrize(("flags", "problem"), [
    (["--user", "fedcare", "--working-dir", "relative"], "must be an absolute path"),
    (["--user", "two words", "--working-dir", "/srv"], "must be a user name"),
])
def test_bad_settings_are_refused_naming_them(tmp_path: Path, flags: list[str], problem: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "u.service"
    assert main(["service", "install-unit", "supernode", *flags, "--out", str(out),
                 *SITE_ARGS]) == 1
    assert problem in capsys.readouterr().err
    assert not out.exists()


def test_a_site_unit_without_its_site_arguments_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["service", "install-unit", "supernode", "--user", "fedcare",
                 "--working-dir", "/srv", "--out", str(tmp_path / "u.service")]) == 1
    assert "must pass --site, --csv, --state-dir and --superlink" in capsys.readouterr().err
