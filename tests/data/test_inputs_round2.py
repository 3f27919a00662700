"""Issue 16: each probe a hostile tester ran against main, as a regression test.

Items 1 and 8 at the command line, item 4's summary, item 5 (sites 0, run-name, ledger,
token file, config problems together, step sizes, certificates) and item 6 (a folder per
seed). Reading and quality details are in tests/common; audit and refusal logic in
tests/server/test_refused_and_audit.py.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from fedcare.cli import main
from fedcare.cli.args import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError
from fedcare.deploy import certs as certs_mod
from fedcare.research import heart_benchmark
from tests.data_factories import HEART_HEADER, csv_text, heart_rows, write_text


def test_check_csv_refuses_dev_zero_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check-csv", "/dev/zero", "--dataset", "heart-disease"])

    assert code == EXIT_FAILED
    assert "/dev/zero: path must be a file; got a character device" in capsys.readouterr().out


def test_check_csv_prints_quality_and_readiness_and_passes_without_strict(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_text(tmp_path, "site.csv", csv_text(heart_rows(1, seed=0) * 200, HEART_HEADER))

    code = main(["check-csv", str(path), "--target-epsilon", "1", "--rounds", "5"])

    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert "WARNING 199 of 200 rows (100%) repeat an earlier row exactly" in out
    assert "DP readiness of site.csv: 150 training rows, eps 1 (this run, at this site)" in out
    assert "5 rounds" in out and "OK with" in out


def test_check_csv_strict_fails_on_warnings(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write_text(tmp_path, "site.csv", csv_text(heart_rows(1, seed=0), HEART_HEADER))

    code = main(["check-csv", str(path), "--strict"])

    out = capsys.readouterr().out
    assert code == EXIT_FAILED
    assert "data quality: 1 row(s) left after cleaning" in out


def test_simulate_with_zero_sites_is_an_error_not_four_sites(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--sites", "0", "--rounds", "1"])

    assert code == EXIT_USAGE
    assert "sites must be >= min-sites (2); got 0" in capsys.readouterr().err


def test_a_run_name_may_not_leave_the_output_folder() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"run-name": "../x"})

    assert "config: run-name must be a folder name" in str(err.value)
    assert "got '../x'" in str(err.value)


def test_a_privacy_problem_is_reported_with_the_other_problems() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"clip-norm": 0, "strategy": "bogus"})

    assert len(err.value.problems) == 2
    assert any("strategy must be one of" in p for p in err.value.problems)
    assert any("config: clip-norm must be a finite number > 0; got 0.0" in p
               for p in err.value.problems)


def test_a_shared_key_problem_is_reported_once() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"batch-size": 0})

    assert err.value.problems == ("config: batch-size must be >= 1; got 0",)


def test_an_absurd_offset_learning_rate_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"offset-learning-rate": 1e6})

    assert "offset-learning-rate must be in [0, 100]" in str(err.value)


def test_ledger_of_a_missing_folder_fails_and_creates_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nonexistent"

    code = main(["ledger", str(missing), "--site", "x"])

    assert code == EXIT_FAILED
    assert not missing.exists()
    assert "got no such folder" in capsys.readouterr().err


@pytest.mark.parametrize(("mode", "fragment"), [
    (None, "file must exist; got no file at this path"),
    (0o644, "token file must be readable by its owner only (chmod 600); got mode 0644"),
])
def test_serve_token_file_problems_are_messages_not_tracebacks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int | None,
        fragment: str) -> None:
    token = tmp_path / "token"
    if mode is not None:
        token.write_text("a-long-enough-token-for-the-api-0123456789\n")
        token.chmod(mode)

    code = main(["serve", "--model", str(tmp_path / "model.keras"), "--site-dir",
                 str(tmp_path), "--token-file", str(token)])

    assert code == EXIT_USAGE
    assert fragment in capsys.readouterr().err


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    root = tmp_path / "certs"
    certs_mod.init(root, hosts=["127.0.0.1"], sites=[])
    return root


def test_certs_status_fails_when_server_cert_and_key_do_not_match(
        certs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = certs_mod._new_key().private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())
    (certs / certs_mod.SERVER_KEY).write_bytes(other)

    code = main(["certs", "status", "--certs", str(certs)])

    assert code == EXIT_FAILED
    assert "DOES NOT MATCH ITS KEY server.key" in capsys.readouterr().out


def test_an_expired_certificate_says_how_long_ago_not_negative_days(certs: Path) -> None:
    rows = certs_mod.status(certs)
    expiry = rows[0].not_after
    assert expiry is not None
    later = expiry + dt.timedelta(days=1, hours=3)

    line = certs_mod.status(certs, now=later)[0].line(later)

    assert "expired" in line and "(1 day(s) ago) - EXPIRED" in line
    assert "-" + "2 days" not in line and "days left" not in line


def test_benchmark_heart_gives_each_seed_its_own_run_folders(tmp_path: Path) -> None:
    config = RunConfig(dataset="heart-disease", partitioning="natural", run_name="X",
                       output_dir=str(tmp_path))

    first = heart_benchmark.run_folders(config, split_seed=43, seed=0, with_dp=True)
    second = heart_benchmark.run_folders(config, split_seed=43, seed=1, with_dp=True)

    assert first["dp"] == tmp_path / "X-split43-seed0-dp"
    assert set(first.values()).isdisjoint(second.values())


def test_benchmark_heart_refuses_an_existing_folder_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "X-split43-seed1-nodp").mkdir()
    calls: list[Any] = []
    monkeypatch.setattr(heart_benchmark, "load_sites", lambda config: calls.append(config))

    with pytest.raises(ConfigError) as err:
        heart_benchmark.run_benchmark({"run-name": "X", "output-dir": str(tmp_path)},
                                      split_seed=43, seeds=[0, 1], with_dp=False)

    assert calls == []
    assert "X-split43-seed1-nodp" in str(err.value)


def test_a_refused_run_exits_non_zero_and_says_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import fedcare.research.run as run_mod

    config = RunConfig(dp_mode="noise-multiplier", noise_multiplier=0.01).to_run_config()
    report = {"run": "r", "config": config, "final": {}, "privacy": {}, "rounds": [],
              "status": "refused", "refusal-reason": "refused: no site trained in any round",
              "refusals": {"site-0": ["epsilon budget exceeded"]},
              "sites": {"site-0": {"test-rows": 5, "failures": 1}}}
    monkeypatch.setattr(run_mod, "run_simulation", lambda *a, **k: report)

    code = main(["simulate", "--rounds", "1", "--sites", "2"])

    out = capsys.readouterr().out
    assert code == EXIT_FAILED
    assert "RUN REFUSED" in out and "refused" in out.split("\n")[5]
    assert "no DP" not in out and "DP off" not in out and "model:" not in out


def test_pipes_and_devices_are_never_opened_blocking(tmp_path: Path) -> None:
    # The check itself must not hang a shell either: a FIFO with no writer.
    fifo = tmp_path / "cleveland.csv"
    os.mkfifo(fifo)

    assert main(["check-csv", str(fifo)]) == EXIT_FAILED


def test_supernode_start_prints_the_data_quality_report(tmp_path: Path) -> None:
    from fedcare.deploy.launch import SuperNodePlan, check_site

    csv = write_text(tmp_path, "site.csv", csv_text(heart_rows(1, seed=0) * 60, HEART_HEADER))
    plan = SuperNodePlan(site="alpha", csv=csv, state_dir=tmp_path / "s", superlink="x:1",
                         insecure=True)

    summary = check_site(plan)

    assert "data quality of" in summary and "WARNING 59 of 60 rows" in summary
    assert "DP readiness of alpha" in summary


def test_supernode_strict_does_not_start_on_data_quality_warnings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = write_text(tmp_path, "site.csv", csv_text(heart_rows(1, seed=0), HEART_HEADER))

    code = main(["supernode", "--site", "alpha", "--csv", str(csv), "--state-dir",
                 str(tmp_path / "s"), "--superlink", "127.0.0.1:1", "--insecure", "--strict"])

    assert code == EXIT_FAILED
    out = capsys.readouterr().out
    assert "data quality: 1 row(s) left after cleaning" in out and "not starting" in out
