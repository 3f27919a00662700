"""The site trust boundary on a real deployment (127.0.0.1, TLS, SuperNode authentication):
whatever bundle and run config the consortium sends, a hospital runs only its installed
fedcare, under its own policy, and refuses before it opens a data file.

Five hostile jobs, then honest ones, against the same two sites:
(a) a bundle naming a new ClientApp module that reads the CSV and leaks a row;
(b) a bundle whose fedcare/site/app.py monkeypatches the site's training function;
(c) a bundle whose training code drops DP (and would still claim eps);
(d) the honest bundle with dp-mode="off";
(e) the honest bundle with target-epsilon above the site's max-epsilon-per-run.
Each must be refused by both sites in pre-flight, leave no marker file (no bundle code ran
at a site) and nothing in any ledger; the honest run after them is unaffected. Then a site
without enough lifetime budget refuses in pre-flight while the other trains.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcare.research.run import PROJECT_ROOT
from tests.data_factories import write_heart_dir
from tests.e2e.deploy_helpers import BIN, Deployment

pytestmark = pytest.mark.slow

SITES = ("alpha", "beta")
BUDGETS = {"alpha": 4.0, "beta": 1.2}  # beta: one eps-1 run fits, a second does not
RUN = ('dataset="heart-disease" num-rounds=1 min-sites={min_sites} hidden-units="8" '
       'output-dir="{out}" run-name="{name}" target-epsilon={eps} delta=0.001')
# Bundle code that leaves a trace if it is ever imported or run inside a site process
# (`fedcare supernode ...`); the ServerApp process may import the bundle: it is the
# consortium's own side.
TRACE = '''
import sys as _sys
from pathlib import Path as _Path
if "supernode" in _sys.argv:
    _Path({marker!r}).write_text("bundle code ran at a site: " + " ".join(_sys.argv))
'''
EVIL_CLIENT = TRACE + '''
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _leak(msg, context):
    row = _Path(str(context.node_config["data-path"])).read_text().splitlines()[1]
    _Path({marker!r}).write_text(row)
    return Message(RecordDict({{"preflight": ConfigRecord({{"site": "x", "accepted": True,
                                                           "leak": row}})}}), reply_to=msg)


@app.query("preflight")
def preflight(msg, context):
    return _leak(msg, context)


@app.train()
def train(msg, context):
    return _leak(msg, context)
'''
MONKEYPATCH = TRACE + '''
import fedcare.site.site as _site
_honest = _site.train_round
def _patched(*args, **kwargs):
    _Path({marker!r}).write_text("patched train_round ran")
    return _honest(*args, **kwargs)
_site.train_round = _patched
'''
NO_DP = TRACE + '''
DPSettings.__init__ = lambda self, **kw: object.__setattr__(self, "noise_multiplier", 0.0)
'''


def _copy_project(dest: Path) -> Path:
    """The honest project as `flwr run` would ship it: pyproject and the fedcare package."""
    shutil.copy(PROJECT_ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(PROJECT_ROOT / "fedcare", dest / "fedcare",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def hostile_bundles(root: Path) -> dict[str, tuple[Path, str, Path]]:
    """name -> (project folder, run-config extra, marker path)."""
    out: dict[str, tuple[Path, str, Path]] = {}

    def folder(name: str) -> tuple[Path, Path]:
        path = root / "bundles" / name
        path.mkdir(parents=True)
        return path, root / f"marker-{name}"

    project, marker = folder("a-foreign-clientapp")
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    assert 'clientapp = "fedcare.site.app:app"' in pyproject
    (project / "pyproject.toml").write_text(
        pyproject.replace('clientapp = "fedcare.site.app:app"', 'clientapp = "evil.client:app"'))
    (project / "evil").mkdir()
    (project / "evil" / "__init__.py").write_text("")
    (project / "evil" / "client.py").write_text(EVIL_CLIENT.format(marker=str(marker)))
    out["a"] = (project, "", marker)

    project, marker = folder("b-monkeypatch")
    _copy_project(project)
    with (project / "fedcare" / "site" / "app.py").open("a") as f:
        f.write(MONKEYPATCH.format(marker=str(marker)))
    out["b"] = (project, "", marker)

    project, marker = folder("c-no-dp")
    _copy_project(project)
    with (project / "fedcare" / "site" / "training.py").open("a") as f:
        f.write(NO_DP.format(marker=str(marker)))
    out["c"] = (project, "", marker)

    out["d"] = (PROJECT_ROOT, ' dp-mode="off"', root / "marker-d")
    out["e"] = (PROJECT_ROOT, "", root / "marker-e")  # eps 5 > max-epsilon-per-run 3
    return out


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("trust")
    dep = Deployment.create(root, list(SITES), spare_ports=len(SITES))
    (root / "data").mkdir()
    write_heart_dir(root / "data", {"alpha": 120, "beta": 100})
    try:
        dep.start_superlink()
        for site, port in zip(SITES, dep.spare_ports):
            dep.start_site(site, port, epsilon_budget=BUDGETS[site])
        yield dep
    finally:
        dep.stop_all()


def _run(dep: Deployment, name: str, *, project: Path = PROJECT_ROOT, extra: str = "",
         eps: float = 1.0, min_sites: int = 2) -> dict[str, Any]:
    out = dep.root / "runs"
    result = dep.flwr_run(RUN.format(min_sites=min_sites, out=out, name=name, eps=eps) + extra,
                          project=project)
    path = out / name / "report.json"
    assert path.exists(), f"no report for {name}:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    return dict(json.loads(path.read_text()))


def _ledger_entries(dep: Deployment, site: str) -> int:
    path = dep.root / "sites" / site / "privacy-ledger.json"
    return len(json.loads(path.read_text())["entries"]) if path.exists() else 0


@pytest.fixture(scope="module")
def hostile(federation: Deployment) -> dict[str, tuple[dict[str, Any], Path]]:
    runs = {}
    for case, (project, extra, marker) in hostile_bundles(federation.root).items():
        eps = 5.0 if case == "e" else 1.0
        runs[case] = (_run(federation, f"hostile-{case}", project=project, extra=extra,
                           eps=eps), marker)
    return runs


EXPECTED = {"a": "clientapp must be 'fedcare.site.app:app'",
            "b": "fedcare code must equal the fedcare installed at this site",
            "c": "fedcare code must equal the fedcare installed at this site",
            "d": "dp-mode must not be off (require-dp = true)",
            "e": "target-epsilon must be <= 3"}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_hostile_job_is_refused_by_every_site_before_any_code_or_data(
        case: str, hostile: dict[str, tuple[dict[str, Any], Path]],
        federation: Deployment) -> None:
    report, marker = hostile[case]
    assert report["status"] == "refused"
    answers = report["preflight"]["sites"]
    assert sorted(answers) == sorted(SITES)
    for site in SITES:
        assert answers[site]["accepted"] is False
        assert any(EXPECTED[case] in reason for reason in answers[site]["reasons"]), \
            answers[site]["reasons"]
        assert _ledger_entries(federation, site) == 0
    assert not marker.exists(), marker.read_text()
    assert report["rounds"] == []
    assert not (federation.root / "runs" / f"hostile-{case}" / "model.keras").exists()


@pytest.fixture(scope="module")
def honest(hostile: dict[str, Any], federation: Deployment) -> dict[str, dict[str, Any]]:
    first = _run(federation, "honest-1")
    second = _run(federation, "honest-2", min_sites=1)
    return {"first": first, "second": second}


def test_honest_run_after_the_hostile_ones_trains_with_dp(
        honest: dict[str, dict[str, Any]], hostile: dict[str, tuple[dict[str, Any], Path]],
        federation: Deployment) -> None:
    report = honest["first"]
    assert report["status"] == "completed"
    assert report["preflight"]["accepted"] == sorted(SITES)
    for site in SITES:
        row = report["sites"][site]
        assert row["rounds-trained"] == 1
        assert 0 < row["epsilon-run"] <= 1.0 + 1e-6
        assert row["epsilon-lifetime"] == pytest.approx(row["epsilon-run"])
    for _, marker in hostile.values():
        assert not marker.exists()


def test_site_without_enough_lifetime_budget_refuses_in_preflight(
        honest: dict[str, dict[str, Any]], federation: Deployment) -> None:
    report = honest["second"]
    beta = report["preflight"]["sites"]["beta"]
    assert beta["accepted"] is False
    assert any(r.startswith("budget: this run needs eps 1.00 (this run") and
               "above its budget 1.20 (0.20 left)" in r for r in beta["reasons"]), beta["reasons"]
    assert report["preflight"]["accepted"] == ["alpha"]
    assert sorted(report["sites"]) == ["alpha"]
    alpha = report["sites"]["alpha"]
    assert alpha["runs-at-site"] == 2
    assert alpha["epsilon-lifetime"] > alpha["epsilon-run"]
    assert _ledger_entries(federation, "beta") == 1  # the first honest run only
    assert _ledger_entries(federation, "alpha") == 2
    print("pre-flight of honest-2:")
    for site, answer in sorted(report["preflight"]["sites"].items()):
        print(f"  {site}: accepted={answer['accepted']} reasons={answer['reasons']}")



@pytest.fixture(scope="module")
def tampered(honest: dict[str, dict[str, Any]], federation: Deployment) -> dict[str, Any]:
    """After the honest runs: alpha's ledger file is deleted (the site must notice), beta's
    whole state dir is wiped (only the server can notice); then alpha's admin resets its
    budget the documented way, and the consortium opts in to reset sites."""
    sites = federation.root / "sites"
    (sites / "alpha" / "privacy-ledger.json").unlink()
    shutil.rmtree(sites / "beta")
    third = _run(federation, "tampered-3", min_sites=1)
    reset = subprocess.run(
        [str(BIN / "fedcare"), "ledger", "reset", "--state-dir", str(sites / "alpha"),
         "--reason", "ledger file lost in a disk failure; restored by hospital IT"],
        env=federation.env, capture_output=True, text=True, timeout=300, check=False)
    fourth = _run(federation, "reset-4", min_sites=1, extra=" accept-site-resets=true")
    return {"third": third, "reset": reset, "fourth": fourth}


def test_a_deleted_ledger_or_a_wiped_state_dir_keeps_a_site_out(
        tampered: dict[str, Any]) -> None:
    report = tampered["third"]
    assert report["status"] == "refused"
    alpha = report["preflight"]["sites"]["alpha"]
    assert alpha["accepted"] is False
    assert any("privacy-ledger.json" in r and "(deleted?)" in r for r in alpha["reasons"]), \
        alpha["reasons"]
    beta = report["preflight"]["sites"]["beta"]
    assert beta["accepted"] is True  # a wiped site looks new to itself ...
    assert any("must not go down" in flag for flag in beta["excluded"]), beta  # ... not to us
    assert report["preflight"]["accepted"] == []


def test_a_documented_reset_is_admitted_only_when_the_consortium_opts_in(
        tampered: dict[str, Any]) -> None:
    assert tampered["reset"].returncode == 0, tampered["reset"].stdout + tampered["reset"].stderr
    report = tampered["fourth"]
    assert report["status"] == "completed"
    assert report["preflight"]["accepted"] == ["alpha", "beta"]
    alpha = report["preflight"]["sites"]["alpha"]
    assert alpha["history.last-reset-reason"] == ("ledger file lost in a disk failure; "
                                                  "restored by hospital IT")
    assert alpha["excluded"] == []
    assert sorted(report["sites"]) == ["alpha", "beta"]
