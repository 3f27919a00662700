"""The server's side of pre-flight: who answered, who accepted, and a grid restricted to them."""

from __future__ import annotations

from typing import Any

import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict

from fedcare.common.config import RunConfig
from fedcare.common.preflight import ANSWER_RECORD, PREFLIGHT_MESSAGE, PreflightAnswer
from fedcare.server import preflight as server_preflight
from fedcare.server.preflight import RunRefused, SiteGrid, run_preflight


def _reply(to: Message, record: dict[str, Any] | None = None,
           error: str | None = None) -> Message:
    if error is not None:
        reply = Message(Error(code=103, reason=error), reply_to=to)
    else:
        reply = Message(RecordDict({ANSWER_RECORD: ConfigRecord(record or {})}), reply_to=to)
    return reply  # from the node the request went to


class FakeGrid:
    """Nodes 1..n; ``answers`` maps node -> reply builder (missing: silent)."""

    def __init__(self, nodes: list[int], answers: dict[int, Any]) -> None:
        self.nodes = nodes
        self.answers = answers
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        self.sent = list(messages)
        return [self.answers[m.metadata.dst_node_id](m) for m in self.sent
                if m.metadata.dst_node_id in self.answers]

    def push_messages(self, messages: Any) -> list[str]:
        return ["id" for _ in messages]


def _accept(site: str) -> Any:
    return lambda m: _reply(m, PreflightAnswer(site=site, accepted=True).to_record())


CONFIG = RunConfig.from_mapping({"min-sites": 1, "round-timeout": 5.0})


class GrowingGrid(FakeGrid):
    """Nodes still being registered: each read of the node list shows the next of
    ``steps`` (the last one stays)."""

    def __init__(self, steps: list[list[int]]) -> None:
        super().__init__(steps[0], {n: _accept(f"site-{n}") for n in steps[-1]})
        self.steps = steps

    def get_node_ids(self) -> list[int]:
        nodes = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        return list(nodes)


def test_preflight_waits_until_the_node_list_stops_growing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange: min-sites 1 is met at the first read, while nodes 3..5 still register
    monkeypatch.setattr(server_preflight, "NODE_SETTLE_SECONDS", 0.0)
    grid = GrowingGrid([[1, 2], [1, 2, 3], [1, 2, 3, 4, 5]])
    # Act
    result = run_preflight(grid, CONFIG, run_name="r", ledger_run_id="r", rounds=1)
    # Assert: every node got the question and answered
    assert sorted(m.metadata.dst_node_id for m in grid.sent) == [1, 2, 3, 4, 5]
    assert sorted(result.answers) == [1, 2, 3, 4, 5] and result.silent == []


def test_accepting_refusing_erring_and_silent_sites_are_told_apart() -> None:
    grid = FakeGrid([1, 2, 3, 4], {
        1: _accept("alpha"),
        2: lambda m: _reply(m, PreflightAnswer(site="beta", accepted=False,
                                               reasons=("budget: no",)).to_record()),
        3: lambda m: _reply(m, error="site refuses: policy: x"),
    })
    result = run_preflight(grid, CONFIG, run_name="r", ledger_run_id="r/attempt-1", rounds=3)
    assert result.accepted_nodes == [1] and result.sites() == ["alpha"]
    assert result.silent == [4]
    assert not result.answers[3].accepted
    assert result.answers[3].reasons == ("error reply 103: site refuses: policy: x",)
    assert {m.metadata.message_type for m in grid.sent} == {PREFLIGHT_MESSAGE}
    request = grid.sent[0].content.config_records["config"]
    assert dict(request) == {"run-name": "r", "ledger-run-id": "r/attempt-1",
                             "rounds-planned": 3}
    assert result.lines()[-1] == ("node 4: no pre-flight answer before the timeout "
                                  "(round-timeout=5 s; a site calibrating its noise on a busy "
                                  "host may need longer: raise round-timeout)")
    report = result.to_report()
    assert report["accepted"] == ["alpha"] and report["silent-nodes"] == [4]
    assert report["sites"]["beta"]["reasons"] == ["budget: no"]


def test_two_nodes_claiming_one_site_are_both_refused() -> None:
    grid = FakeGrid([1, 2], {1: _accept("alpha"), 2: _accept("alpha")})
    result = run_preflight(grid, CONFIG, run_name="r", ledger_run_id="r", rounds=1)
    assert result.accepted_nodes == []
    assert all("site name must be unique" in a.reasons[0] for a in result.answers.values())


def test_site_grid_waits_for_min_sites_only_up_to_its_limit_then_shows_every_accepted(
        ) -> None:
    # Arrange: sites 1 and 3 accepted; only 1 is online (3 died), min-sites 2
    inner = FakeGrid([1, 2], {})
    now = [0.0]
    grid = SiteGrid(inner, [1, 3], poller=None, min_online=2, wait_limit=30.0,
                    clock=lambda: now[0])
    # Act / Assert: within the limit Flower sees the one online site and keeps waiting
    assert grid.get_node_ids() == [1]
    now[0] = 29.0
    assert grid.get_node_ids() == [1]
    # after it, every accepted site, so the round goes out and the dead one is named
    now[0] = 30.0
    assert grid.get_node_ids() == [1, 3]


def test_site_grid_without_a_limit_shows_only_online_accepted_sites() -> None:
    grid = SiteGrid(FakeGrid([1, 2], {}), [1, 3], poller=None, min_online=2)
    assert grid.get_node_ids() == [1]


def test_site_grid_shows_and_reaches_only_the_sites_that_accepted() -> None:
    inner = FakeGrid([1, 2, 3], {})
    grid = SiteGrid(inner, [1, 3], poller=None)
    assert grid.get_node_ids() == [1, 3]
    to_refused = Message(RecordDict(), dst_node_id=2, message_type="train")
    with pytest.raises(RunRefused, match=r"got node\(s\) \[2\]"):
        grid.push_messages([to_refused])
    to_accepted = Message(RecordDict(), dst_node_id=3, message_type="train")
    assert list(grid.push_messages([to_accepted])) == ["id"]


def _gone(to: Message) -> Message:
    """The SuperLink's answer for a killed site: Flower's NODE_UNAVAILABLE error (5)."""
    return Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=to)


def _to(*nodes: int) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type="train") for n in nodes]


def test_site_grid_stops_waiting_for_a_site_the_superlink_reported_gone() -> None:
    # Arrange: sites 1-3 accepted, min-sites 3; 3 is killed mid-round, so the SuperLink
    # answers for it "node unavailable" and no longer lists it; 2 refuses (another error)
    inner = FakeGrid([1, 2, 3], {1: _accept("alpha"), 2: lambda m: _reply(m, error="no"),
                                 3: _gone})
    grid = SiteGrid(inner, [1, 2, 3], poller=None, min_online=3, wait_limit=600.0,
                    clock=lambda: 0.0)
    grid.send_and_receive(_to(1, 2, 3))
    inner.nodes = [1, 2]
    # Act / Assert: shown at once (its next message fails at once), no 600 s wait
    assert grid.get_node_ids() == [1, 2, 3]
    # Act / Assert: once it reconnects and leaves again without a report, the grid waits
    inner.nodes = [1, 2, 3]
    assert grid.get_node_ids() == [1, 2, 3]
    inner.nodes = [1, 2]
    assert grid.get_node_ids() == [1, 2]


def test_site_grid_still_waits_for_a_site_that_only_refused() -> None:
    inner = FakeGrid([1, 2, 3], {1: _accept("alpha"), 2: lambda m: _reply(m, error="no")})
    grid = SiteGrid(inner, [1, 2, 3], poller=None, min_online=3, wait_limit=600.0,
                    clock=lambda: 0.0)
    grid.send_and_receive(_to(1, 2, 3))
    inner.nodes = [1, 3]
    assert grid.get_node_ids() == [1, 3]
