"""perf-deploy's arithmetic and /proc reading (the benchmark itself is a command)."""

from __future__ import annotations

import os
from pathlib import Path

from fedcare.deploy.perf import (
    PerfResult,
    cpu_seconds,
    descendants,
    name_of,
    pss_kb,
    rss_kb,
)
from fedcare.deploy.testbed import write_synthetic_heart


def _result(rounds: tuple[float, ...]) -> PerfResult:
    return PerfResult(sites=4, rounds=len(rounds), round_seconds=rounds,
                      peak_total_mb=3072.0, peak_mb={"site1": 740.0},
                      idle_cpu={"site1": 0.6}, dead_site_seconds=30.1,
                      dead_site_line="round 2 train: site1 dropped out: no reply",
                      peak_total_pss_mb=2560.0, peak_pss_mb={"site1": 512.0})


def test_seconds_per_round_is_the_median_of_rounds_2_to_n() -> None:
    assert _result((20.0, 5.0, 9.0, 6.0)).median_round == 6.0  # round 1 (20 s) left out


def test_table_states_memory_in_gb_and_the_dead_site_line() -> None:
    table = _result((20.0, 5.0)).table()
    assert "peak RSS, whole process tree" in table and "3.00 GB" in table
    assert "peak PSS, whole process tree" in table and "2.50 GB" in table
    assert "740 MB   512 MB   0.6 % of a core idle" in table
    assert "30.1 s after the kill" in table and "site1 dropped out" in table


def test_this_process_is_found_with_its_memory_and_cpu() -> None:
    me = os.getpid()
    assert me in descendants([me])
    assert rss_kb(me) > 0 and cpu_seconds(me) > 0
    assert 0 < pss_kb(me) <= rss_kb(me) + 4  # its shared pages count in part (4 kB: rounding)


def test_processes_are_named_by_their_command() -> None:
    python = b"/work/.venv/bin/python"
    assert name_of([python, b"-m", b"fedcare.flower_compat", b"superexec", b"--x"]) \
        == "flower-superexec (fedcare)"
    assert name_of([python, b"-m", b"fedcare.cli", b"certs", b"sync", b"--certs", b"c"]) \
        == "fedcare certs sync"
    assert name_of([python, b"/x/bin/flwr-serverapp", b"--insecure"]) == "flwr-serverapp"
    assert name_of([python, b"-c", b"print()"]) == "python"
    assert name_of([b""]) == ""


def test_synthetic_heart_rows_pass_the_schema_check(tmp_path: Path) -> None:
    from fedcare.data.datasets import schema_for
    from fedcare.data.validate import load_site_csv

    path = write_synthetic_heart(tmp_path / "site.csv", 40, seed=3)
    table = load_site_csv(path, schema_for("heart-disease"), missing="drop")
    assert table.report.rows_kept == 40
    assert set(table.labels) == {0, 1}
