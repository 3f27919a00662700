"""A node that stays silent in pre-flight is named by the site it answered as before."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fedcare.server import app as server_app
from fedcare.server.node_names import NODE_NAMES_FILENAME, KnownNode, NodeNames
from fedcare.server.preflight import run_preflight
from fedcare.server.summary import SUMMARY_FILENAME
from tests.server.test_refused_run import _context, _refuse
from tests.server.test_server_preflight import CONFIG, FakeGrid, _accept


def test_nodes_are_remembered_and_read_back(tmp_path: Path) -> None:
    NodeNames(tmp_path / "n.json").remember({5: "alpha", 6: "beta"}, run="r1")
    NodeNames(tmp_path / "n.json").remember({6: "gamma"}, run="r2")  # key given to gamma

    assert NodeNames(tmp_path / "n.json").known() == {5: KnownNode("alpha", "r1"),
                                                      6: KnownNode("gamma", "r2")}


@pytest.mark.parametrize("text", ["{not json", '{"format": "other", "version": 1, "nodes": {}}',
                                  '{"format": "fedcare-site-nodes", "version": 1, '
                                  '"nodes": {"x": {"site": "a", "run": "r"}}}'])
def test_a_broken_file_is_ignored_with_a_warning(tmp_path: Path, text: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "n.json").write_text(text)

    with caplog.at_level(logging.WARNING):
        names = NodeNames(tmp_path / "n.json")

    assert names.known() == {}
    assert "ignored" in caplog.text


def test_preflight_labels_a_silent_node_with_its_history_only() -> None:
    grid = FakeGrid([1, 2], {1: _accept("alpha")})

    result = run_preflight(grid, CONFIG, run_name="r", ledger_run_id="r", rounds=1,
                           node_history={1: "answered as alpha in run r0",
                                         2: "answered as beta in run r0"})

    assert result.lines()[-1].startswith(
        "node 2 (answered as beta in run r0): no pre-flight answer before the timeout")
    assert result.to_report()["silent-node-history"] == {"2": "answered as beta in run r0"}
    assert result.deployed_sites_by_node() == {1: "alpha"}


def test_a_site_name_two_nodes_claimed_is_remembered_for_neither() -> None:
    grid = FakeGrid([1, 2, 3], {1: _accept("alpha"), 2: _accept("alpha"), 3: _accept("beta")})

    result = run_preflight(grid, CONFIG, run_name="r", ledger_run_id="r", rounds=1)

    assert result.claimed_twice == {1, 2}
    assert result.deployed_sites_by_node() == {3: "beta"}


def test_the_serverapp_names_a_silent_node_by_the_site_it_answered_as(tmp_path: Path) -> None:
    # Arrange: a first run in which both sites answer (and refuse)
    server_app.main(FakeGrid([5, 6], {5: _refuse("alpha"), 6: _refuse("beta")}),
                    _context(tmp_path))
    saved = json.loads((tmp_path / NODE_NAMES_FILENAME).read_text())
    assert saved["nodes"] == {"5": {"site": "alpha", "run": "refused"},
                              "6": {"site": "beta", "run": "refused"}}
    second = _context(tmp_path)
    second.run_config["run-name"] = "again"

    # Act: node 6 does not answer the next run
    server_app.main(FakeGrid([5, 6], {5: _refuse("alpha")}), second)

    # Assert: the summary names it by its history, and its id
    summary = (tmp_path / "again" / SUMMARY_FILENAME).read_text()
    assert ("\n  node 6 (answered as beta in run refused): no pre-flight answer within "
            "round-timeout=5.0 s\n") in summary
