"""The quiet terminal: what a run's bar says, where logs go, what the workers inherit."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from fedcare.flower_compat.simulation import SiteReply
from fedcare.research import terminal


def _reply(server_round: int, eps: float | None = None, *, error: bool = False,
           kind: str = "train") -> SiteReply:
    return SiteReply(kind=kind, server_round=server_round, error=error,
                     metrics={} if eps is None else {"epsilon-run": eps})


@pytest.fixture
def display(monkeypatch: pytest.MonkeyPatch) -> terminal._State:
    class FakeDisplay:
        def __init__(self) -> None:
            self.tasks: dict[int, dict[str, object]] = {}
            self.printed: list[str] = []
            self.console = self

        def print(self, text: str, **options: object) -> None:
            self.printed.append(text)

        def add_task(self, name: str, **fields: object) -> int:
            self.tasks[len(self.tasks)] = {"name": name, **fields}
            return len(self.tasks) - 1

        def update(self, task: int, **fields: object) -> None:
            self.tasks[task].update(fields)

        def remove_task(self, task: int) -> None:
            del self.tasks[task]

    state = terminal._State(verbose=False, display=FakeDisplay())
    monkeypatch.setattr(terminal, "_STATE", state)
    return state


def test_run_bar_counts_this_rounds_replies_and_names_the_largest_site_epsilon(
        display: terminal._State) -> None:
    bar = terminal.RunBar("run demo", rounds=10, sites=4, delta=1e-3, keep=True)

    for eps in (0.2, 0.3):
        bar.on_reply(_reply(3, eps))
    bar.on_reply(_reply(3, error=True))
    bar.on_reply(_reply(3, kind="evaluate"))  # evaluation replies are not training replies

    task = display.display.tasks[0]
    assert task["completed"] == pytest.approx(2 + 3 / 4)
    assert task["status"] == ("round 3/10 | 3/4 sites (1 refused/failed) | eps this run <= "
                              "0.3 per site (delta 0.001)")


def test_a_kept_bar_leaves_its_last_status_in_the_output(display: terminal._State) -> None:
    bar = terminal.RunBar("run demo", rounds=1, sites=1, delta=None, keep=True)
    bar.on_reply(_reply(1))
    bar.finish()
    assert display.display.printed == ["run demo: round 1/1 | 1/1 sites"]


def test_a_new_round_starts_the_reply_count_again(display: terminal._State) -> None:
    bar = terminal.RunBar("run x", rounds=2, sites=2, delta=None, keep=False)
    bar.on_reply(_reply(1))
    bar.on_reply(_reply(1))
    bar.on_reply(_reply(2))
    assert display.display.tasks[0]["status"] == "round 2/2 | 1/2 sites"
    bar.finish()
    assert display.display.tasks == {}  # a sweep cell's bar goes when the cell is done


def test_cells_bar_eta_is_the_mean_cell_time_times_cells_left(display: terminal._State
                                                              ) -> None:
    cells = terminal.CellsBar("sweep", total=5, skipped=1)
    cells.advance(30.0)
    cells.advance(90.0)
    task = display.display.tasks[0]
    assert task["status"] == "3/5 cells (1 cached)"
    assert task["eta"] == "ETA 2m00s"  # 60 s mean x 2 cells left


def test_bars_do_nothing_without_a_display() -> None:
    bar = terminal.RunBar("run x", rounds=2, sites=2, delta=None, keep=True)
    bar.on_reply(_reply(1))
    bar.finish()


def test_run_log_keeps_records_from_before_the_run_folder_exists(tmp_path: Path) -> None:
    log = logging.getLogger("fedcare.test_terminal")
    log.setLevel(logging.INFO)
    run_log = terminal.RunLog()
    try:
        log.info("pre-flight: site-0 accepted")
        run_log.open(tmp_path / "run")
        log.info("round 1 done")
    finally:
        run_log.close()
    log.info("after the run")
    text = (tmp_path / "run" / terminal.RUN_LOG).read_text()
    assert "pre-flight: site-0 accepted" in text and "round 1 done" in text
    assert "after the run" not in text


def test_run_log_writes_a_flower_record_once_while_flwr_propagates(tmp_path: Path) -> None:
    # Arrange: the handler sits on the root and on "flwr"; a propagating flwr record
    # reaches both
    flwr_log = logging.getLogger("flwr")
    flwr_log.setLevel(logging.INFO)
    propagate = flwr_log.propagate
    flwr_log.propagate = True
    run_log = terminal.RunLog()
    try:
        run_log.open(tmp_path / "run")
        # Act
        flwr_log.info("[ROUND 1/2]")
        flwr_log.info("[ROUND 1/2]")  # a second record with the same text is kept
    finally:
        run_log.close()
        flwr_log.propagate = propagate
    # Assert
    text = (tmp_path / "run" / terminal.RUN_LOG).read_text()
    assert text.count("[ROUND 1/2]") == 2


@pytest.mark.parametrize(("argv", "expected"), [
    (["sweep", "--out-dir", "sw"], Path("sw/fedcare-sweep.log")),
    (["benchmark-heart-table"], Path("runs/heart-table/fedcare-benchmark-heart-table.log")),
    (["benchmark-heart", "--output-dir", "o"], Path("o/fedcare-benchmark-heart.log")),
    (["simulate"], None),  # a simulation logs to its run folder's run.log
])
def test_command_log_sits_beside_the_commands_results(argv: list[str],
                                                      expected: Path | None) -> None:
    from fedcare.cli import build_parser

    args: argparse.Namespace = build_parser().parse_args(argv)
    assert args.quiet_terminal
    assert terminal.command_log_path(args) == expected


def test_quiet_start_up_keeps_a_users_own_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    terminal.quiet_start_up()
    import os

    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    assert os.environ["GRPC_VERBOSITY"] == "ERROR"


@pytest.mark.parametrize(("name", "level", "on_screen"), [
    ("fedcare.research.run", logging.WARNING, True),
    ("py.warnings", logging.WARNING, False),  # a library's DeprecationWarning: log file only
    ("absl", logging.WARNING, False),
    ("tensorflow", logging.ERROR, True),
])
def test_quiet_screen_keeps_fedcare_warnings_and_framework_errors(name: str, level: int,
                                                                 on_screen: bool) -> None:
    record = logging.LogRecord(name, level, __file__, 1, "note", None, None)
    assert terminal._framework_notes_to_files(record) is on_screen
