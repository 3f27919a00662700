"""The site audit log: append-only, UTC, hash-chained; verification names the first bad entry."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcare.common.errors import LedgerCorrupted, RoundAlreadyRecorded
from fedcare.site.audit import (
    AUDIT_FILENAME,
    GENESIS_HASH,
    AuditRecord,
    SiteAuditLog,
    update_digest,
    update_norm,
    verify_log,
)

SITE = "hospital-a"
RECEIVED = [np.zeros((2, 2), dtype=np.float32), np.zeros(3, dtype=np.float32)]


# ---------------------------------------------------------------- factories


def sent_for(server_round: int) -> list[np.ndarray]:
    """A distinct update per round, same shapes as RECEIVED."""
    return [np.full((2, 2), 0.1 * server_round, dtype=np.float32),
            np.full(3, -0.2 * server_round, dtype=np.float32)]


def append_round(log: SiteAuditLog, server_round: int, **overrides: Any) -> AuditRecord:
    kwargs: dict[str, Any] = {
        "run_id": "run-1",
        "server_round": server_round,
        "server": "simulation",
        "sent": sent_for(server_round),
        "received": RECEIVED,
        "epsilon_round": 0.3,
        "epsilon_total": 0.3 * server_round,
        "delta": 1e-5,
        "accountant": "rdp",
        "train_rows": 120,
    }
    kwargs.update(overrides)
    return log.append(**kwargs)


def log_with(tmp_path: Path, rounds: int, *, site: str = SITE) -> SiteAuditLog:
    log = SiteAuditLog(tmp_path, site=site)
    for server_round in range(1, rounds + 1):
        append_round(log, server_round)
    return log


def read_lines(log: SiteAuditLog) -> list[str]:
    return log.path.read_text(encoding="utf-8").splitlines(keepends=True)


def write_lines(log: SiteAuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(lines), encoding="utf-8")


def resealed(line: str, **changes: Any) -> str:
    """``line`` with fields changed and its own hash recomputed (a careful forger)."""
    data = json.loads(line)
    data.update(changes)
    data.pop("hash")
    body = json.dumps(data, sort_keys=True, separators=(",", ":"))
    data["hash"] = hashlib.sha256(body.encode()).hexdigest()
    return json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"


# ---------------------------------------------------------------- the chain


def test_a_fresh_log_verifies_with_no_entries(tmp_path: Path) -> None:
    log = SiteAuditLog(tmp_path, site=SITE)

    result = log.verify()

    assert (result.ok, result.entries, result.first_bad_index) == (True, 0, None)
    assert log.path == tmp_path / AUDIT_FILENAME
    assert log.records() == []


def test_three_appends_are_chained_by_index_and_prev_hash(tmp_path: Path) -> None:
    log = SiteAuditLog(tmp_path, site=SITE)

    appended = [append_round(log, server_round) for server_round in (1, 2, 3)]

    assert [r.index for r in appended] == [0, 1, 2]
    assert [r.prev_hash for r in appended] == [GENESIS_HASH, appended[0].hash, appended[1].hash]
    assert all(r.hash == r.content_hash() for r in appended)
    assert len({r.hash for r in appended}) == 3
    assert log.records() == appended
    assert log.verify().ok and log.verify().entries == 3


def test_each_line_is_the_canonical_json_of_its_record(tmp_path: Path) -> None:
    log = log_with(tmp_path, 2)

    lines = read_lines(log)

    assert len(lines) == 2 and all(line.endswith("\n") for line in lines)
    for line, record in zip(lines, log.records()):
        assert line == json.dumps(record.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"


def test_a_record_holds_the_rounds_facts_in_utc(tmp_path: Path) -> None:
    log = SiteAuditLog(tmp_path, site=SITE)

    record = append_round(log, 2, server="superlink.example:9092", train_rows=77)

    assert (record.site, record.run_id, record.server_round, record.server, record.train_rows) \
        == (SITE, "run-1", 2, "superlink.example:9092", 77)
    assert record.update_sha256 == update_digest(sent_for(2))
    assert record.update_norm == pytest.approx(update_norm(sent_for(2), RECEIVED))
    assert (record.epsilon_round, record.epsilon_total, record.delta, record.accountant) \
        == (0.3, 0.6, 1e-5, "rdp")
    assert record.recorded_at.endswith("+00:00")
    assert datetime.fromisoformat(record.recorded_at).utcoffset() == timedelta(0)


def test_dp_off_is_recorded_with_no_epsilon(tmp_path: Path) -> None:
    log = SiteAuditLog(tmp_path, site=SITE)

    record = append_round(log, 1, epsilon_round=None, epsilon_total=None, delta=None,
                          accountant=None)

    assert (record.epsilon_round, record.epsilon_total, record.delta, record.accountant) \
        == (None, None, None, None)
    assert log.verify().ok


def test_a_new_object_on_the_same_directory_continues_the_chain(tmp_path: Path) -> None:
    first = log_with(tmp_path, 2).records()

    record = append_round(SiteAuditLog(tmp_path, site=SITE), 3)

    assert (record.index, record.prev_hash) == (2, first[-1].hash)
    assert SiteAuditLog(tmp_path, site=SITE).records()[:2] == first
    assert verify_log(tmp_path / AUDIT_FILENAME).entries == 3


def test_the_same_round_cannot_be_logged_twice(tmp_path: Path) -> None:
    log = log_with(tmp_path, 1)

    with pytest.raises(RoundAlreadyRecorded, match=r"round must be recorded once.*entry 0"):
        append_round(log, 1)
    assert len(read_lines(log)) == 1


def test_the_same_round_number_of_another_run_is_a_new_entry(tmp_path: Path) -> None:
    log = log_with(tmp_path, 1)

    record = append_round(log, 1, run_id="run-2")

    assert record.index == 1


# ---------------------------------------------------------------- tampering


def edit_field(lines: list[str]) -> list[str]:
    data = json.loads(lines[1])
    data["train_rows"] = 5  # hash left as it was
    lines[1] = json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"
    return lines


def edit_and_reseal(lines: list[str]) -> list[str]:
    lines[1] = resealed(lines[1], train_rows=5)  # entry 1 is self-consistent; entry 2 is not
    return lines


def delete_entry(lines: list[str]) -> list[str]:
    del lines[1]
    return lines


def reorder_entries(lines: list[str]) -> list[str]:
    lines[1], lines[2] = lines[2], lines[1]
    return lines


def insert_copy(lines: list[str]) -> list[str]:
    lines.insert(1, lines[0])
    return lines


def insert_forged(lines: list[str]) -> list[str]:
    previous = json.loads(lines[0])["hash"]
    forged = resealed(lines[0], server_round=9, prev_hash=previous, index=1)
    lines.insert(1, forged)  # fits after entry 0; the old entry 1 no longer fits after it
    return lines


def truncate_last_line(lines: list[str]) -> list[str]:
    lines[2] = lines[2][: len(lines[2]) // 2]
    return lines


def non_json_line(lines: list[str]) -> list[str]:
    lines[1] = "this is not json\n"
    return lines


def wrong_site(lines: list[str]) -> list[str]:
    lines[0] = resealed(lines[0], site="hospital-b")
    return lines


def reformat_line(lines: list[str]) -> list[str]:
    lines[1] = json.dumps(json.loads(lines[1]), indent=1).replace("\n", " ") + "\n"
    return lines


def blank_line(lines: list[str]) -> list[str]:
    lines.insert(2, "\n")
    return lines


Tamper = Callable[[list[str]], list[str]]

TAMPERINGS: list[tuple[Tamper, int, str]] = [
    (edit_field, 1, r"line 2 \(entry 1\): hash must match the entry's content"),
    (edit_and_reseal, 2, r"line 3 \(entry 2\): prev_hash must be the previous entry's hash"),
    (delete_entry, 1, r"line 2 \(entry 1\): index must be 1; got 2"),
    (reorder_entries, 1, r"line 2 \(entry 1\): index must be 1; got 2"),
    (insert_copy, 1, r"line 2 \(entry 1\): .*index must be 1; got 0"),
    (insert_forged, 2, r"line 3 \(entry 2\): index must be 2; got 1.*prev_hash must be"),
    (truncate_last_line, 2, r"line 3 \(entry 2\): is incomplete: \d+ byte\(s\) with no "
                            r"trailing newline"),
    (non_json_line, 1, r"line 2 \(entry 1\): must be one JSON record; got invalid JSON"),
    (wrong_site, 0, r"line 1 \(entry 0\): site must be 'hospital-a'; got 'hospital-b'"),
    (reformat_line, 1, r"line 2 \(entry 1\): must be written in canonical JSON"),
    (blank_line, 2, r"line 3 \(entry 2\): is empty"),
]


@pytest.mark.parametrize(("tamper", "bad_index", "reason"), TAMPERINGS,
                         ids=[t.__name__ for t, _, _ in TAMPERINGS])
def test_verify_names_the_first_tampered_entry(tmp_path: Path, tamper: Tamper, bad_index: int,
                                               reason: str) -> None:
    log = log_with(tmp_path, 3)
    write_lines(log, tamper(read_lines(log)))

    result = log.verify()

    assert (result.ok, result.first_bad_index) == (False, bad_index)
    assert str(log.path) in result.reason
    assert re.search(reason, result.reason), result.reason


@pytest.mark.parametrize("tamper", [edit_field, delete_entry, truncate_last_line, wrong_site],
                         ids=lambda t: t.__name__)
def test_append_refuses_to_extend_a_tampered_log(tmp_path: Path, tamper: Tamper) -> None:
    log = log_with(tmp_path, 3)
    write_lines(log, tamper(read_lines(log)))
    before = log.path.read_bytes()

    with pytest.raises(LedgerCorrupted, match=r"audit-log\.jsonl: line \d+ .*refusing to extend"):
        append_round(log, 4)
    assert log.path.read_bytes() == before


def test_records_refuses_a_tampered_log(tmp_path: Path) -> None:
    log = log_with(tmp_path, 3)
    write_lines(log, edit_field(read_lines(log)))

    with pytest.raises(LedgerCorrupted, match=r"line 2 \(entry 1\): hash must match"):
        log.records()


def test_a_whole_log_of_another_site_is_refused(tmp_path: Path) -> None:
    log_with(tmp_path, 1, site="hospital-b")

    result = SiteAuditLog(tmp_path, site=SITE).verify()

    assert (result.ok, result.first_bad_index) == (False, 0)
    assert "site must be 'hospital-a'" in result.reason


@pytest.mark.parametrize(("payload", "problem"), [
    ('{"a":NaN}', "non-finite number NaN"),
    ('{"a":1,"a":2}', "duplicate key 'a'"),
    ("[1,2]", "record must be a JSON object"),
    ('{"a":1}', "record keys must be exactly"),
])
def test_lines_are_parsed_strictly(tmp_path: Path, payload: str, problem: str) -> None:
    log = log_with(tmp_path, 1)
    write_lines(log, [*read_lines(log), payload + "\n"])

    result = log.verify()

    assert (result.ok, result.first_bad_index) == (False, 1)
    assert problem in result.reason


# ---------------------------------------------------------------- verify_log (CLI)


def test_verify_log_accepts_a_file_or_a_state_directory(tmp_path: Path) -> None:
    log_with(tmp_path, 2)

    by_file = verify_log(tmp_path / AUDIT_FILENAME)
    by_dir = verify_log(tmp_path)

    assert by_file == by_dir
    assert (by_file.ok, by_file.entries) == (True, 2)


def test_verify_log_reports_a_missing_file(tmp_path: Path) -> None:
    result = verify_log(tmp_path / "nope.jsonl")

    assert (result.ok, result.entries, result.first_bad_index) == (False, 0, None)
    assert "nope.jsonl: must exist" in result.reason


def test_verify_log_requires_one_site_throughout(tmp_path: Path) -> None:
    log = log_with(tmp_path, 3)
    lines = read_lines(log)
    lines[2] = resealed(lines[2], site="hospital-b")
    write_lines(log, lines)

    result = verify_log(log.path)

    assert (result.ok, result.first_bad_index) == (False, 2)


# ---------------------------------------------------------------- inputs


@pytest.mark.parametrize(("overrides", "message"), [
    ({"server_round": 0}, "server_round must be an integer >= 1; got 0"),
    ({"server_round": True}, "server_round must be an integer >= 1; got True"),
    ({"train_rows": -1}, "train_rows must be an integer >= 0; got -1"),
    ({"run_id": ""}, "run_id must be a non-empty string; got ''"),
    ({"server": "  "}, "server must be a non-empty string; got '  '"),
    ({"epsilon_round": float("nan")}, "epsilon_round must be a finite number >= 0; got nan"),
    ({"epsilon_total": float("inf")}, "epsilon_total must be a finite number >= 0; got inf"),
    ({"epsilon_total": -0.1}, "epsilon_total must be a finite number >= 0; got -0.1"),
    ({"delta": 1.0}, "delta must be a number in (0, 1); got 1.0"),
    ({"accountant": None}, "must be all set (DP on) or all None (DP off)"),
    ({"epsilon_round": None, "epsilon_total": None}, "epsilon_round=nothing"),
    ({"sent": [np.full((2, 2), np.nan), np.zeros(3)]}, "update_norm must be a finite number"),
])
def test_bad_inputs_are_refused_naming_field_and_value(tmp_path: Path, overrides: dict[str, Any],
                                                       message: str) -> None:
    log = SiteAuditLog(tmp_path, site=SITE)

    with pytest.raises(ValueError, match=r"SiteAuditLog\.append: ") as caught:
        append_round(log, **{"server_round": 1, **overrides})
    assert message in str(caught.value)
    assert not log.path.exists()


def test_mismatched_shapes_are_refused(tmp_path: Path) -> None:
    log = SiteAuditLog(tmp_path, site=SITE)

    with pytest.raises(ValueError, match=r"sent\[1\] must have the shape of received\[1\]"):
        append_round(log, 1, sent=[np.zeros((2, 2)), np.zeros(4)])
    assert not log.path.exists()


def test_a_record_refuses_a_local_time(tmp_path: Path) -> None:
    record = append_round(SiteAuditLog(tmp_path, site=SITE), 1).to_dict()
    record["recorded_at"] = "2026-01-02T03:04:05+02:00"

    with pytest.raises(ValueError, match=r"recorded_at must be a UTC ISO 8601 .*\+02:00"):
        AuditRecord(**record)


# ---------------------------------------------------------------- update facts


def test_update_digest_is_equal_for_equal_arrays_in_any_memory_order() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)

    assert update_digest([a, np.ones(2)]) == update_digest([a.copy(), np.ones(2)])
    assert update_digest([a]) == update_digest([np.asfortranarray(a)])


@pytest.mark.parametrize(("changed", "what"), [
    ([np.array([1.0, 2.0, 3.5], dtype=np.float32)], "value"),
    ([np.array([1.0, 2.0, 3.0], dtype=np.float64)], "dtype"),
    ([np.array([[1.0, 2.0, 3.0]], dtype=np.float32)], "shape"),
    ([np.array([1.0], dtype=np.float32), np.array([2.0, 3.0], dtype=np.float32)], "split"),
    ([np.array([1.0, 2.0, 3.0], dtype=np.float32), np.array([], dtype=np.float32)], "count"),
])
def test_update_digest_changes_with_value_dtype_shape_or_split(changed: list[np.ndarray],
                                                               what: str) -> None:
    base = [np.array([1.0, 2.0, 3.0], dtype=np.float32)]

    assert update_digest(changed) != update_digest(base), what


def test_update_digest_follows_its_documented_framing() -> None:
    array = np.array([[1, 2]], dtype="<i4")
    expected = hashlib.sha256(
        b"fedcare-update-digest-v1\x00" + (1).to_bytes(8, "little")
        + (3).to_bytes(8, "little") + b"<i4" + (2).to_bytes(8, "little")
        + (1).to_bytes(8, "little") + (2).to_bytes(8, "little")
        + (8).to_bytes(8, "little") + b"\x01\x00\x00\x00\x02\x00\x00\x00").hexdigest()

    assert update_digest([array]) == expected


def test_update_digest_refuses_object_arrays() -> None:
    with pytest.raises(ValueError, match=r"arrays\[0\] must have a numeric dtype; got object"):
        update_digest([np.array([1, "a"], dtype=object)])


def test_update_norm_is_the_l2_norm_over_all_arrays() -> None:
    sent = [np.array([[4.0, 1.0]], dtype=np.float32), np.array([2.0])]
    received = [np.array([[1.0, 1.0]], dtype=np.float32), np.array([6.0])]

    norm = update_norm(sent, received)  # differences 3, 0, -4 -> sqrt(9 + 16) = 5

    assert norm == pytest.approx(5.0, abs=1e-12)


def test_update_norm_of_an_unchanged_model_is_zero() -> None:
    assert update_norm(RECEIVED, RECEIVED) == 0.0


def test_update_norm_does_not_overflow_for_huge_values() -> None:
    norm = update_norm([np.array([3e200, 4e200])], [np.zeros(2)])

    assert norm == pytest.approx(5e200)


@pytest.mark.parametrize(("sent", "message"), [
    ([np.zeros((2, 2)), np.zeros(4)], r"sent\[1\] must have the shape of received\[1\] \(3,\)"),
    ([np.zeros((2, 2))], r"sent must have as many arrays as received \(2\); got 1"),
])
def test_update_norm_refuses_mismatched_updates(sent: list[np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        update_norm(sent, RECEIVED)


# ---------------------------------------------------------------- hash stability


FIXED_FIELDS: dict[str, Any] = {
    "index": 0,
    "recorded_at": "2026-01-02T03:04:05+00:00",
    "site": "hospital-a",
    "run_id": "run-1",
    "server_round": 1,
    "server": "simulation",
    "update_sha256": "ab" * 32,
    "update_norm": 0.5,
    "epsilon_round": 0.25,
    "epsilon_total": 0.75,
    "delta": 1e-5,
    "accountant": "rdp",
    "train_rows": 120,
    "prev_hash": GENESIS_HASH,
}
FIXED_CANONICAL = (
    '{"accountant":"rdp","delta":1e-05,"epsilon_round":0.25,"epsilon_total":0.75,"index":0,'
    f'"prev_hash":"{"0" * 64}","recorded_at":"2026-01-02T03:04:05+00:00","run_id":"run-1",'
    '"server":"simulation","server_round":1,"site":"hospital-a","train_rows":120,'
    f'"update_norm":0.5,"update_sha256":"{"ab" * 32}"}}'
)
FIXED_HASH = "541ef6a4e9d122aa7936cbb3dedc74606d1d7b66030a58ff069b66c2fe75121b"


def test_the_record_hash_is_sha256_of_a_fixed_canonical_json() -> None:
    record = AuditRecord(**FIXED_FIELDS, hash=FIXED_HASH)
    without_hash = {k: v for k, v in record.to_dict().items() if k != "hash"}

    canonical = json.dumps(without_hash, sort_keys=True, separators=(",", ":"), allow_nan=False)

    assert canonical == FIXED_CANONICAL
    assert hashlib.sha256(FIXED_CANONICAL.encode("ascii")).hexdigest() == FIXED_HASH
    assert record.content_hash() == FIXED_HASH


def test_integral_numbers_hash_like_floats() -> None:
    as_ints = AuditRecord(**{**FIXED_FIELDS, "update_norm": 1, "epsilon_total": 2},
                          hash=FIXED_HASH)
    as_floats = AuditRecord(**{**FIXED_FIELDS, "update_norm": 1.0, "epsilon_total": 2.0},
                            hash=FIXED_HASH)

    assert as_ints.content_hash() == as_floats.content_hash()
