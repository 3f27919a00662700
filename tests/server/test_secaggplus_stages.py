"""The SecAgg+ workflow's grid: each site that misses a stage is named in the report."""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common import MessageType

from fedcare.flower_compat.legacy import RECORD_KEY_CONFIGS
from fedcare.server.report import RunRecorder
from fedcare.server.secure_aggregation import StageGrid
from tests.server.test_server_preflight import FakeGrid, _gone, _reply


class TimedGrid(FakeGrid):
    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        self.timeout = timeout
        return super().send_and_receive(messages, timeout=timeout)


def _recorder() -> RunRecorder:
    recorder = RunRecorder(run_name="r", run_config={})
    recorder.site_of_node.update({1: "alpha", 2: "beta", 3: "gamma"})
    recorder.start_round(1)
    return recorder


def _stage(stage: str, *nodes: int) -> list[Message]:
    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({"stage": stage})})
    return [Message(content, dst_node_id=n, message_type=MessageType.TRAIN, group_id="1")
            for n in nodes]


def test_sites_missing_a_secaggplus_stage_are_named_with_the_stage_and_reason() -> None:
    # Arrange: alpha replies; the SuperLink reports beta gone; gamma stays silent
    recorder = _recorder()
    inner = TimedGrid([1, 2, 3], {1: lambda m: _reply(m, {}), 2: _gone})
    grid = StageGrid(inner, recorder, timeout=30.0)
    # Act
    replies = list(grid.send_and_receive(_stage("collect_masked_vectors", 1, 2, 3),
                                         timeout=30.0))
    # Assert
    assert len(replies) == 2  # Flower's workflow still sees every reply
    assert recorder.to_dict(final={})["rounds"][0]["failures"] == [
        {"site": "beta", "phase": "train", "code": 5,
         "reason": "SecAgg+ masked update (training): Error: Node Unavailable"},
        {"site": "gamma", "phase": "train", "code": None,
         "reason": "SecAgg+ masked update (training): no reply before the round timeout "
                   "(30 s)"}]


def test_an_evaluation_without_a_timeout_waits_at_most_the_round_timeout() -> None:
    # Arrange: Flower's evaluate step passes no timeout; gamma never answers
    recorder = _recorder()
    inner = TimedGrid([1, 3], {1: lambda m: _reply(m, {})})
    grid = StageGrid(inner, recorder, timeout=30.0)
    evaluate = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.EVALUATE,
                        group_id="1") for n in (1, 3)]
    # Act
    grid.send_and_receive(evaluate)
    # Assert
    assert inner.timeout == 30.0
    [failure] = recorder.to_dict(final={})["rounds"][0]["failures"]
    assert (failure["site"], failure["phase"]) == ("gamma", "evaluate")
