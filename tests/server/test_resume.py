"""Crash and resume: state written atomically, a damaged state never loaded."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedcare.common.config import RunConfig
from fedcare.common.errors import CheckpointCorrupted, ConfigError
from fedcare.common.runid import attempt_run_id, run_of
from fedcare.server.report import RunRecorder
from fedcare.server.resume import (
    RESUME_FILENAME,
    check_same_run,
    load_state,
    next_attempt,
    restore_strategy,
    save_state,
)
from fedcare.server.strategies import RecordingStrategy, make_strategy

WEIGHTS = [np.arange(4, dtype=np.float32).reshape(2, 2), np.ones(2, np.float32)]


def _adam_with_moments() -> object:
    strategy = make_strategy(RunConfig(strategy="fedadam"))
    strategy.m_t = {"0": np.full((2, 2), 0.25, np.float32), "1": np.full(2, -1.0, np.float32)}
    strategy.v_t = {"0": np.full((2, 2), 0.5, np.float32), "1": np.full(2, 2.0, np.float32)}
    return strategy


def _recorder() -> RunRecorder:
    recorder = RunRecorder(run_name="r", run_config={})
    recorder.start_round(1)
    recorder.rounds[1].train["site-0"] = {"num-examples": 10, "epsilon": 0.3}
    recorder.rounds[1].failures.append({"node": 7, "phase": "train", "code": 100,
                                        "reason": "budget"})
    recorder.site_of_node[7] = "site-1"
    recorder.end_round(1)
    return recorder


def _save(run_dir: Path, strategy: object, server_round: int = 3) -> Path:
    return save_state(run_dir, server_round=server_round, weights=WEIGHTS,
                      strategy=strategy, report=_recorder().state(),  # type: ignore[arg-type]
                      validation={"registered": {"site-0": 10}}, config={"seed": 0})


def test_state_round_trips_weights_moments_report_and_counts(tmp_path: Path) -> None:
    _save(tmp_path, _adam_with_moments())
    fresh = make_strategy(RunConfig(strategy="fedadam"))

    state = load_state(tmp_path)
    assert state is not None
    restore_strategy(fresh, state.strategy_arrays, state.strategy)
    recorder = RunRecorder(run_name="r", run_config={})
    recorder.restore(state.report)

    assert state.server_round == 3
    for got, want in zip(state.weights, WEIGHTS):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(fresh.m_t["1"], [-1.0, -1.0])  # type: ignore[attr-defined]
    np.testing.assert_array_equal(fresh.v_t["0"], np.full((2, 2), 0.5))  # type: ignore[attr-defined]
    report = recorder.to_dict(final={})
    assert report["rounds"][0]["train"]["site-0"]["epsilon"] == 0.3
    assert report["rounds"][0]["failures"][0]["site"] == "site-1"  # named, not node 7
    assert state.validation == {"registered": {"site-0": 10}}


def test_no_state_means_no_completed_round(tmp_path: Path) -> None:
    assert load_state(tmp_path) is None


def test_a_truncated_state_file_is_refused_not_loaded(tmp_path: Path) -> None:
    path = _save(tmp_path, _adam_with_moments())
    text = path.read_text()
    path.write_text(text[: len(text) // 2])

    with pytest.raises(CheckpointCorrupted, match="complete JSON"):
        load_state(tmp_path)


def test_a_half_written_temporary_file_is_ignored(tmp_path: Path) -> None:
    _save(tmp_path, _adam_with_moments(), server_round=2)
    # A crash while writing round 3 leaves only temporary files behind.
    (tmp_path / (RESUME_FILENAME + ".tmp")).write_text('{"format": "fedcare-resu')
    (tmp_path / "checkpoints" / ".state-round-0003.npz.tmp").write_bytes(b"PK\x03")

    state = load_state(tmp_path)

    assert state is not None and state.server_round == 2


def test_changed_arrays_are_refused_by_their_digest(tmp_path: Path) -> None:
    _save(tmp_path, _adam_with_moments())
    arrays = next((tmp_path / "checkpoints").glob("state-round-*.npz"))
    data = bytearray(arrays.read_bytes())
    data[-10] ^= 0xFF
    arrays.write_bytes(bytes(data))

    with pytest.raises(CheckpointCorrupted, match="SHA-256"):
        load_state(tmp_path)


def test_a_state_naming_a_file_outside_the_run_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path, _adam_with_moments())
    data = json.loads(path.read_text())
    data["arrays"] = "../../etc/passwd"
    path.write_text(json.dumps(data))

    with pytest.raises(CheckpointCorrupted, match="must name an arrays file"):
        load_state(tmp_path)


def test_only_the_latest_arrays_file_is_kept(tmp_path: Path) -> None:
    for server_round in (1, 2, 3):
        _save(tmp_path, _adam_with_moments(), server_round=server_round)

    assert [p.name for p in (tmp_path / "checkpoints").glob("state-round-*.npz")] == [
        "state-round-0003.npz"]


def test_resuming_with_other_settings_is_refused() -> None:
    stored = RunConfig(run_name="r").to_run_config()

    check_same_run(stored, RunConfig(run_name="r", resume=True, round_timeout=5.0)
                   .to_run_config())
    with pytest.raises(ConfigError, match="strategy must be 'fedavg'"):
        check_same_run(stored, RunConfig(run_name="r", strategy="fedmedian", resume=True)
                       .to_run_config())


def test_resuming_into_another_strategy_class_is_refused(tmp_path: Path) -> None:
    _save(tmp_path, _adam_with_moments())
    state = load_state(tmp_path)
    assert state is not None

    with pytest.raises(ConfigError, match="strategy must be 'FedAdam'"):
        restore_strategy(make_strategy(RunConfig()), state.strategy_arrays, state.strategy)


def test_every_start_of_a_run_is_a_new_attempt(tmp_path: Path) -> None:
    assert [next_attempt(tmp_path) for _ in range(3)] == [0, 1, 2]
    (tmp_path / "attempts.json").write_text("{")
    with pytest.raises(CheckpointCorrupted):
        next_attempt(tmp_path)


def test_attempt_ids_belong_to_their_run() -> None:
    assert attempt_run_id("r", 0) == "r"
    assert attempt_run_id("r", 2) == "r/attempt-2"
    assert run_of("r/attempt-2") == "r"
    assert run_of("r") == "r"
    assert run_of("r/attempt-x") == "r/attempt-x"


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [1, 2]


def test_a_resumed_run_numbers_its_rounds_after_the_checkpoint() -> None:
    inner = make_strategy(RunConfig(strategy="fedadam"))
    strategy = RecordingStrategy(inner, RunRecorder(run_name="r", run_config={}),
                                 on_new_global=lambda r, a: None, round_offset=3)
    arrays = ArrayRecord(OrderedDict((str(i), Array(w)) for i, w in enumerate(WEIGHTS)))

    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), _Grid()))

    assert {m.content["config"]["server-round"] for m in messages} == {4}
    assert 4 in strategy.recorder.rounds


def test_a_checkpointed_run_is_not_restarted_without_resume(tmp_path: Path) -> None:
    from fedcare.server.federation import run_federation

    run_dir = tmp_path / "study"
    _save(run_dir, _adam_with_moments())
    config = RunConfig(output_dir=str(tmp_path), run_name="study", hidden_units="4")

    with pytest.raises(ConfigError, match="must be new unless resume = true"):
        run_federation(None, config)  # type: ignore[arg-type]  # refused before any round
