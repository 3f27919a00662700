"""The console in a real browser: a live 2-site simulation, a site's ledger, the form.

Slow: one real ``fedcare simulate`` (breast-cancer, 2 sites, a few rounds) shared by the
module. Screenshots go to each test's tmp dir; with ``FEDCARE_DOCS_SCREENSHOTS=1`` they
are also copied to docs/ (how docs/console-*.png were made).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 12
"""Rounds of breast-cancer at 2 sites take about a second: enough to watch them pass."""
SITES = 2
RUN = "live"
START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 900.0
SETTLE_S = 60.0
"""After the simulation exits, the page must say "finished" within this (it polls every 3 s)."""
POLL_MS = 500
CLI = "from fedcare.cli import main; raise SystemExit(main())"


@dataclass
class Proc:
    proc: subprocess.Popen[str]
    lines: queue.Queue[str]
    log: list[str]

    def wait_for(self, text: str, timeout: float = START_TIMEOUT_S) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout}s; log:\n"
                                     + "".join(self.log[-40:])) from None
            if text in line:
                return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def spawn(*args: str) -> Proc:
    """``fedcare ARGS`` with this worktree first on the path; stdout+stderr as lines."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLWR_TELEMETRY_ENABLED": "0",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def pump() -> None:
        for line in proc.stdout or ():
            log.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return Proc(proc, lines, log)


def start_console(*args: str) -> tuple[Proc, str]:
    console = spawn("console", "--port", "0", *args)
    line = console.wait_for("console listening on")
    return console, line.split("listening on ")[1].split()[0].rstrip("/")


@dataclass
class LiveRun:
    runs: Path
    simulation: Proc
    console_url: str

    def finished(self) -> Path:
        assert self.simulation.proc.wait(RUN_TIMEOUT_S) == 0, "".join(self.simulation.log[-40:])
        return self.runs / RUN


@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    """The console on an empty runs folder, then a real 2-site simulation writing into it."""
    runs = tmp_path_factory.mktemp("console") / "runs"
    runs.mkdir()
    console, url = start_console("--runs", str(runs), "--refresh", "1")
    simulation = spawn("simulate", "--sites", str(SITES), "--rounds", str(ROUNDS),
                       "--output-dir", str(runs), "--run-name", RUN)
    try:
        yield LiveRun(runs, simulation, url)
    finally:
        simulation.stop()
        console.stop()


def save(page: Any, tmp_path: Path, name: str, *, docs: bool = False) -> Path:
    """A full-page screenshot in the test's tmp dir (and docs/ when asked for)."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if docs and os.environ.get("FEDCARE_DOCS_SCREENSHOTS") == "1":
        shutil.copyfile(path, REPO / "docs" / name)
    return path


LIVE_STATE_JS = """() => [document.querySelector('#run-status')?.textContent ?? '',
                         document.querySelector('#rounds-done')?.textContent ?? '']"""
"""Status and rounds read in one script, so both come from the same refresh of the live
fragment (two separate reads can straddle a refresh: the old rounds, the new status)."""


def live_state(page: Any) -> tuple[str, int]:
    status, rounds = page.evaluate(LIVE_STATE_JS)
    rounds = rounds.strip()
    return status.strip(), int(rounds) if rounds.isdigit() else -1


def watch_until_finished(page: Any, live_run: LiveRun, tmp_path: Path) -> list[int]:
    """Poll the page (never reloading it) until it says finished; the rounds it showed.

    Fails if the page is still not finished ``SETTLE_S`` after the simulation exited.
    """
    seen: list[int] = []
    exited_at: float | None = None
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        status, shown = live_state(page)
        if not seen or shown != seen[-1]:
            seen.append(shown)
            if 1 <= shown < ROUNDS and len([r for r in seen if r >= 1]) == 2:
                save(page, tmp_path, "console-consortium-running.png")
        if status == "finished":
            return seen
        if exited_at is None and live_run.simulation.proc.poll() is not None:
            exited_at = time.monotonic()
        assert exited_at is None or time.monotonic() - exited_at < SETTLE_S, (
            f"simulation exited ({live_run.simulation.proc.returncode}) but the page still "
            f"shows rounds {seen}; log:\n" + "".join(live_run.simulation.log[-40:]))
        page.wait_for_timeout(POLL_MS)
    raise AssertionError(f"the run did not finish within {RUN_TIMEOUT_S}s; page showed {seen}")


def test_consortium_view_follows_a_live_simulation_round_by_round(
        live_run: LiveRun, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    while not (live_run.runs / RUN).is_dir():
        assert live_run.simulation.proc.poll() is None, "".join(live_run.simulation.log[-40:])
        page.wait_for_timeout(POLL_MS)
    page.goto(f"{live_run.console_url}/runs/{RUN}")
    page.evaluate("window.__notReloaded = true")

    seen = watch_until_finished(page, live_run, tmp_path)
    save(page, tmp_path, "console-consortium.png", docs=True)
    eps_cells = page.locator("#sites td.eps .eps-text").all_text_contents()

    assert live_run.finished().is_dir()
    progress = [r for r in seen if r >= 1]
    assert progress == sorted(progress) and progress[-1] == ROUNDS
    assert len([r for r in progress if r < ROUNDS]) >= 1, f"no round shown mid-run: {seen}"
    assert page.evaluate("window.__notReloaded") is True  # refreshed in place
    assert page.locator("#sites tbody tr").count() == SITES
    assert len(eps_cells) == 2 * SITES
    assert all(cell.startswith("ε=") and "at δ=1e-03" in cell for cell in eps_cells)
    assert sum("(this run)" in c for c in eps_cells) == SITES
    assert sum("(lifetime at this site)" in c for c in eps_cells) == SITES
    assert page.locator("a[href$='/files/report.json']").count() == 1


def ledger_json(state_dir: Path, site: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", CLI, "ledger", str(state_dir), "--site", site,
                          "--json"], capture_output=True, text=True, env=env, cwd=REPO,
                         check=True, timeout=START_TIMEOUT_S)
    return dict(json.loads(out.stdout))


DRIFT_ROWS = 60
DRIFT_ROWS_CHECKED = f"{DRIFT_ROWS} new rows"


def write_new_patients(path: Path) -> None:
    """The first DRIFT_ROWS bundled patients, features only, as a hospital would export them."""
    from fedcare.data.datasets.breast_cancer import LABEL, raw_frame

    raw_frame().drop(columns=[LABEL]).head(DRIFT_ROWS).to_csv(path, index=False)


def breast_cancer_patient() -> dict[str, str]:
    from fedcare.data.datasets.breast_cancer import LABEL, raw_frame

    row = raw_frame().drop(columns=[LABEL]).iloc[0]
    return {str(name): repr(float(v)) for name, v in row.items()}


def test_hospital_view_matches_fedcare_ledger_and_answers_the_form(
        live_run: LiveRun, browser: Any, tmp_path: Path) -> None:
    run_dir = live_run.finished()
    state_dir = run_dir / "sites" / "site-0"
    policy = tmp_path / "site-policy.toml"
    policy.write_text('format = "fedcare-site-policy"\nversion = 1\nrequire-dp = true\n'
                      "lifetime-epsilon-budget = 5.0\n")
    expected = ledger_json(state_dir, "site-0")
    new_patients = tmp_path / "new-patients.csv"
    write_new_patients(new_patients)
    console, url = start_console("--site-dir", str(state_dir), "--policy", str(policy),
                                 "--model", str(run_dir / "model.keras"),
                                 "--drift-csv", str(new_patients))
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/site")
        entries = int(page.text_content("#ledger-entries") or "-1")
        epsilon = float(page.get_attribute("#lifetime-epsilon", "data-epsilon") or "nan")
        audit = page.text_content("#audit-result")
        policy_rows = page.locator("#policy tbody tr").count()
        drift = page.text_content("#drift-summary") or ""
        drift_rows = page.locator("#drift tbody tr").count()

        patient = breast_cancer_patient()
        for name, value in patient.items():
            page.fill(f"#predict-form input[name='{name}']", value)
        page.click("#predict-form button[type='submit']")
        page.wait_for_selector("#predict-result")
        risk = page.text_content("#risk")
        pushed = page.locator("#predict-result .explain li").count()
        save(page, tmp_path, "console-hospital.png", docs=True)

        page.fill("#predict-form input[name='mean_radius']", "big")
        page.click("#predict-form button[type='submit']")
        problems = page.text_content("#predict-problems") or ""
    finally:
        console.stop()

    assert entries == len(expected["entries"]) == ROUNDS
    assert epsilon == pytest.approx(expected["epsilon"], rel=1e-12)
    assert audit == "intact"
    assert policy_rows == 4
    assert DRIFT_ROWS_CHECKED in drift
    assert drift_rows == 30  # breast-cancer: 30 numeric features, one encoded column each
    assert risk == f"{reference_risk(run_dir, state_dir, patient):.3f}"
    assert pushed >= 2
    assert "mean_radius" in problems and "Traceback" not in problems


def reference_risk(run_dir: Path, state_dir: Path, patient: dict[str, str]) -> float:
    """The same patient through ModelBundle directly (what the form must show)."""
    from fedcare.hospital.bundle import ModelBundle
    from fedcare.site.site import PREPROCESSOR_FILENAME

    bundle = ModelBundle.load(model_path=run_dir / "model.keras",
                              preprocessor_path=state_dir / PREPROCESSOR_FILENAME,
                              site_dir=state_dir)
    return float(bundle.predict_records([dict(patient)])[0]["risk"])
