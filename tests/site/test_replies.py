"""The site's reply helpers: what leaves the site, and under which run id it is charged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedcare.common.config import RunConfig
from fedcare.common.errors import LedgerCorrupted, PrivacyBudgetExceeded, RoundAlreadyRecorded
from fedcare.server.personalisation import run_finetune
from fedcare.server.report import RunRecorder
from fedcare.site.replies import (
    LEDGER_UNUSABLE,
    PRIVACY_BUDGET_EXHAUSTED,
    ROUND_ALREADY_SPENT,
    UNNAMED_RUN,
    finetune_content,
    ledger_run_id,
    refusal,
    train_content,
)
from fedcare.site.site import SiteSpec, TrainOutcome
from fedcare.site.training import EvalResult


def _outcome() -> TrainOutcome:
    return TrainOutcome(weights=[np.ones((2, 1), np.float32), np.zeros(1, np.float32)],
                        num_examples=7, steps=1, seconds=0.1, statement=None, epsilon_run=0.0,
                        audit=None)


def _site() -> SiteSpec:
    return SiteSpec(name="alpha", state_dir=Path("unused"), epsilon_budget=1.0)


@pytest.mark.parametrize(("config", "expected"), [
    ({"run-name": "r", "ledger-run-id": "r/attempt-2"}, "r/attempt-2"),
    ({"run-name": "r"}, "r"),
    ({}, UNNAMED_RUN),
])
def test_ledger_run_id_prefers_the_attempt_id_the_server_sent(config: dict,
                                                              expected: str) -> None:
    assert ledger_run_id(config) == expected


@pytest.mark.parametrize(("error", "code"), [
    (PrivacyBudgetExceeded("over"), PRIVACY_BUDGET_EXHAUSTED),
    (LedgerCorrupted("bad"), LEDGER_UNUSABLE),
    (RoundAlreadyRecorded("again"), ROUND_ALREADY_SPENT),
])
def test_each_refusal_replies_with_its_own_error_code(error: Exception, code: int) -> None:
    request = Message(content=RecordDict(), dst_node_id=1, message_type="train")

    reply = refusal(error, request)

    assert reply.has_error()
    assert reply.error.code == code
    assert str(error) in reply.error.reason


def test_finetune_reply_carries_scores_and_no_arrays() -> None:
    site = _site()
    personal = EvalResult(num_examples=5, loss=0.3, accuracy=0.8, auc=0.9, positives=2)

    content = finetune_content(site, _outcome(), personal)

    assert len(content.array_records) == 0
    assert content["metrics"]["personal-accuracy"] == pytest.approx(0.8)
    assert content["site"]["name"] == "alpha"


def test_train_reply_carries_exactly_the_arrays_given() -> None:
    site = _site()
    sent = [np.full((2, 1), 3.0, np.float32), np.ones(1, np.float32)]

    content = train_content(site, _outcome(), sent)

    got = content["arrays"].to_numpy_ndarrays()
    assert len(got) == 2 and np.array_equal(got[0], sent[0])


class _RecordingGrid:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return [1, 2]

    def send_and_receive(self, messages: list[Message], timeout: float) -> list[Message]:
        self.sent = list(messages)
        return []


def test_finetune_is_charged_under_the_attempt_run_id_after_a_resume() -> None:
    grid = _RecordingGrid()
    config = RunConfig(personalisation="offset", finetune_epochs=1, num_rounds=3)

    run_finetune(grid, config, run_name="r", arrays=ArrayRecord([np.zeros(1, np.float32)]),
                 recorder=RunRecorder(run_name="r", run_config={}), timeout=1.0,
                 ledger_run_id="r/attempt-1")

    sent = [m.content["config"] for m in grid.sent]
    assert [c["ledger-run-id"] for c in sent] == ["r/attempt-1", "r/attempt-1"]
    assert {c["server-round"] for c in sent} == {4}
    assert isinstance(sent[0], ConfigRecord)
