"""A ledger you cannot quietly reset: the tamper matrix and the legitimate cases.

Each site here goes through what ``fedcare.site.site._train`` does: check the state
dir, record the ledger entry, record its spend in the audit log, (train), append the
round record. Then a file is tampered with and the next check must refuse, naming the
file and what is inconsistent.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedcare.common.errors import ConfigError, LedgerCorrupted, SiteStateInconsistent
from fedcare.privacy import (
    LEDGER_FILENAME,
    LedgerEntry,
    PrivacyLedger,
    RoundSpend,
    compose_epsilon,
)
from fedcare.privacy.statement import format_epsilon
from fedcare.site.audit import (
    AUDIT_FILENAME,
    GENESIS_HASH,
    AuditRecord,
    ResetRecord,
    SiteAuditLog,
    SpendRecord,
)
from fedcare.site.site_marker import MARKER_FILENAME, read_marker
from fedcare.site.site_state import (
    audit_extends,
    check_site_state,
    history_for_server,
    record_spend,
    reset_site_state,
)

SITE = "hospital-a"
DELTA = 1e-5
ACCOUNTANT = "rdp"
SPEND = RoundSpend(sampling_rate=0.1, noise_multiplier=1.1, steps=10)
LEGACY_DIR = Path(__file__).parent / "data" / "legacy-state"
LEGACY_SITE = "legacy-site"
SENT = [np.full((2, 2), 0.5, np.float32)]
RECEIVED = [np.zeros((2, 2), np.float32)]


def train(state_dir: Path, run_id: str, server_round: int, *, phase: str = "round") -> None:
    """What the training path does, minus the training."""
    check_site_state(state_dir, site=SITE, delta=DELTA, accountant=ACCOUNTANT)
    ledger = PrivacyLedger(state_dir, site=SITE)
    entry = LedgerEntry.now(run_id=run_id, server_round=server_round, spend=SPEND,
                            clip_norm=1.0, num_examples=200)
    total = ledger.record(entry, delta=DELTA, budget=100.0, accountant=ACCOUNTANT)
    record_spend(state_dir, site=SITE, entry=entry, phase=phase, delta=DELTA,
                 accountant=ACCOUNTANT)
    if phase == "round":
        SiteAuditLog(state_dir, site=SITE).append(
            run_id=run_id, server_round=server_round, server="test", sent=SENT,
            received=RECEIVED, epsilon_round=0.1, epsilon_total=total, delta=DELTA,
            accountant=ACCOUNTANT, train_rows=200)


def site_with_history(state_dir: Path) -> Path:
    """Two runs of two rounds, plus a fine-tuning spend after each: 6 entries."""
    for run in ("run-1", "run-2"):
        train(state_dir, run, 1)
        train(state_dir, run, 2)
        train(state_dir, run, 3, phase="finetune")
    return state_dir


def lifetime(entries: int) -> float:
    return compose_epsilon([SPEND] * entries, delta=DELTA, accountant=ACCOUNTANT)


def ledger_doc(state_dir: Path) -> dict:
    return json.loads((state_dir / LEDGER_FILENAME).read_text())


def write_ledger_doc(state_dir: Path, doc: dict) -> None:
    (state_dir / LEDGER_FILENAME).write_text(json.dumps(doc, indent=2))


def audit_lines(state_dir: Path) -> list[str]:
    return (state_dir / AUDIT_FILENAME).read_text().splitlines(keepends=True)


def refusal(state_dir: Path) -> str:
    with pytest.raises(SiteStateInconsistent) as caught:
        check_site_state(state_dir, site=SITE, delta=DELTA, accountant=ACCOUNTANT)
    return str(caught.value)


# ------------------------------------------------------------------ tampering


def delete_ledger(d: Path) -> None:
    (d / LEDGER_FILENAME).unlink()


def empty_entries(d: Path) -> None:
    write_ledger_doc(d, {**ledger_doc(d), "entries": []})


def remove_first_entry(d: Path) -> None:
    doc = ledger_doc(d)
    write_ledger_doc(d, {**doc, "entries": doc["entries"][1:]})


def remove_last_two_entries(d: Path) -> None:
    doc = ledger_doc(d)
    write_ledger_doc(d, {**doc, "entries": doc["entries"][:-2]})


def remove_last_entry(d: Path) -> None:
    doc = ledger_doc(d)
    write_ledger_doc(d, {**doc, "entries": doc["entries"][:-1]})


def noise_times_100(d: Path) -> None:
    doc = ledger_doc(d)
    doc["entries"][1]["spend"]["noise_multiplier"] *= 100
    write_ledger_doc(d, doc)


def last_noise_times_100(d: Path) -> None:
    doc = ledger_doc(d)
    doc["entries"][-1]["spend"]["noise_multiplier"] *= 100
    write_ledger_doc(d, doc)


def change_num_examples(d: Path) -> None:
    doc = ledger_doc(d)
    doc["entries"][2]["num_examples"] += 1
    write_ledger_doc(d, doc)


def delete_audit(d: Path) -> None:
    (d / AUDIT_FILENAME).unlink()


def empty_audit(d: Path) -> None:
    (d / AUDIT_FILENAME).write_text("")


def truncate_audit(d: Path) -> None:
    (d / AUDIT_FILENAME).write_text("".join(audit_lines(d)[:-1]))


def train_then_cut_the_round_record(d: Path) -> None:
    train(d, "run-3", 1)  # the log now ends with a round record (after its spend record)
    truncate_audit(d)


def truncate_audit_to_before_last_spend(d: Path) -> None:
    lines = audit_lines(d)
    last_spend = max(i for i, line in enumerate(lines) if '"kind":"spend"' in line)
    (d / AUDIT_FILENAME).write_text("".join(lines[:last_spend]))


def edit_audit_line(d: Path) -> None:
    lines = audit_lines(d)
    record = json.loads(lines[1])
    record["epsilon_total"] = record["epsilon_total"] / 2
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    (d / AUDIT_FILENAME).write_text("".join(lines))


def delete_both(d: Path) -> None:
    delete_ledger(d)
    delete_audit(d)


def marker_fewer_entries(d: Path) -> None:
    path = d / MARKER_FILENAME
    marker = json.loads(path.read_text())
    marker["entries"] -= 1
    path.write_text(json.dumps(marker))


def delete_marker(d: Path) -> None:
    (d / MARKER_FILENAME).unlink()


TAMPER_MATRIX: list[tuple[str, Callable[[Path], None], list[str]]] = [
    ("ledger deleted", delete_ledger,
     [LEDGER_FILENAME, "must hold at least the 6 entries that site-state.json recorded; got no "
      "file (deleted?)"]),
    ("entries emptied", empty_entries,
     [LEDGER_FILENAME, "must hold at least the 6 entries", "got no entries (emptied?)"]),
    ("first entry removed", remove_first_entry,
     [LEDGER_FILENAME, "got 5 entries (truncated?)",
      "entry 0 (run 'run-1' round 2) must match the spend record on line 1",
      "entry edited, removed or moved?"]),
    ("last two entries removed", remove_last_two_entries,
     [LEDGER_FILENAME, "must hold at least the 6 entries", "got 4 entries (truncated?)",
      "must hold the 6 spends recorded in"]),
    ("last entry removed", remove_last_entry,
     [LEDGER_FILENAME, "got 5 entries (truncated?)", "must hold the 6 spends"]),
    ("an entry's noise_multiplier x100", noise_times_100,
     [LEDGER_FILENAME, "entry 1 (run 'run-1' round 2) must match the spend record on line 3",
      "(entry edited, removed or moved?)"]),
    ("the last entry's noise_multiplier x100", last_noise_times_100,
     [LEDGER_FILENAME, "entry 5 must have the hash", "that site-state.json recorded", "(edited?)"]),
    ("an entry's num_examples changed", change_num_examples,
     [LEDGER_FILENAME, "entry 2 (run 'run-1' round 3) must match the spend record"]),
    ("audit log deleted", delete_audit,
     [AUDIT_FILENAME, "must hold at least the 10 record(s) that site-state.json recorded (head",
      "got no file (deleted?)"]),
    ("audit log emptied", empty_audit,
     [AUDIT_FILENAME, "got an empty log (emptied?)"]),
    ("audit log truncated by its last line", truncate_audit,
     [AUDIT_FILENAME, "must hold at least the 10 record(s)", "got 9 record(s) (truncated?)"]),
    ("audit log's last round record cut", train_then_cut_the_round_record,
     [AUDIT_FILENAME, "must hold at least the 12 record(s)", "got 11 record(s) (truncated?)"]),
    ("audit log cut before its last spend", truncate_audit_to_before_last_spend,
     [AUDIT_FILENAME, "got 9 record(s) (truncated?)",
      "must hold a spend record for each of the ledger's 6 entries (only the last may be "
      "missing, after a crash); got 5"]),
    ("an audit line edited", edit_audit_line,
     [AUDIT_FILENAME, "line 2 (entry 1): hash must match the entry's content",
      "(entry edited?)"]),
    ("ledger and audit log both deleted, marker present", delete_both,
     [LEDGER_FILENAME, AUDIT_FILENAME, "got no file (deleted?)"]),
    ("marker edited to fewer entries", marker_fewer_entries,
     [MARKER_FILENAME, "entries must be 6 (the spend records among the first 10 audit records "
      "it names); got 5 (edited?)", "entry 4 must have the hash"]),
    ("marker deleted", delete_marker,
     [MARKER_FILENAME, "must exist (fedcare writes it after every spend); got no file while "
      "the audit log holds 6 spend record(s) and the ledger 6 entries (deleted?)"]),
]


@pytest.mark.parametrize(("case", "tamper", "fragments"), TAMPER_MATRIX,
                         ids=[case for case, _, _ in TAMPER_MATRIX])
def test_tampered_state_dir_is_refused_naming_what_disagrees(
        tmp_path: Path, case: str, tamper: Callable[[Path], None], fragments: list[str]) -> None:
    state_dir = site_with_history(tmp_path / SITE)
    tamper(state_dir)

    message = refusal(state_dir)

    assert f"site {SITE}: state dir {state_dir} must hold a ledger, audit log and marker that " \
           "agree" in message
    for fragment in fragments:
        assert fragment in message, (case, message)
    assert "fedcare ledger reset" in message


@pytest.mark.parametrize(("case", "tamper", "fragments"), TAMPER_MATRIX,
                         ids=[case for case, _, _ in TAMPER_MATRIX])
def test_a_refused_site_cannot_record_a_spend_either(
        tmp_path: Path, case: str, tamper: Callable[[Path], None], fragments: list[str]) -> None:
    state_dir = site_with_history(tmp_path / SITE)
    tamper(state_dir)

    with pytest.raises(LedgerCorrupted):  # SiteStateInconsistent is a LedgerCorrupted
        train(state_dir, "run-9", 1)

    assert not (state_dir / LEDGER_FILENAME).exists() or "run-9" not in (
        state_dir / LEDGER_FILENAME).read_text()


def test_refusal_is_a_ledger_corrupted_and_lists_every_problem(tmp_path: Path) -> None:
    state_dir = site_with_history(tmp_path / SITE)
    delete_both(state_dir)

    message = refusal(state_dir)

    assert "got 2 problem(s)" in message
    assert issubclass(SiteStateInconsistent, LedgerCorrupted)


def test_a_rewritten_audit_chain_is_refused_by_the_marker(tmp_path: Path) -> None:
    # Re-chain a log whose 3rd line is dropped: every hash is valid again.
    state_dir = site_with_history(tmp_path / SITE)
    kept = audit_lines(state_dir)[:2] + audit_lines(state_dir)[3:]
    rechained = rechain([json.loads(line) for line in kept])
    (state_dir / AUDIT_FILENAME).write_text(rechained)

    message = refusal(state_dir)

    assert "record 9 must have the hash" in message or "record(s) (truncated?)" in message


def rechain(records: list[dict]) -> str:
    from fedcare.site.audit import record_hash

    out, prev = [], GENESIS_HASH
    for index, record in enumerate(records):
        record = {**record, "index": index, "prev_hash": prev}
        record["hash"] = record_hash(record)
        prev = record["hash"]
        out.append(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
    return "".join(out)


def test_a_forged_lifetime_total_is_refused(tmp_path: Path) -> None:
    # Marker deleted too, so only the spend records' own total can disagree with the ledger.
    state_dir = site_with_history(tmp_path / SITE)
    records = [json.loads(line) for line in audit_lines(state_dir)]
    last_spend = max(i for i, r in enumerate(records) if r.get("kind") == "spend")
    records[last_spend]["epsilon_total"] = 0.5
    (state_dir / AUDIT_FILENAME).write_text(rechain(records))
    marker = json.loads((state_dir / MARKER_FILENAME).read_text())
    marker["audit_head"] = json.loads(rechain(records).splitlines()[-1])["hash"]
    (state_dir / MARKER_FILENAME).write_text(json.dumps(marker))

    message = refusal(state_dir)

    assert (f"line {last_spend + 1}: epsilon_total must equal the lifetime eps "
            f"{lifetime(6):.6g} recomputed from the ledger's first 6 entries at "
            f"delta=1e-05 (rdp); got 0.5") in message


# ------------------------------------------------------------------ legitimate cases


def test_fresh_dir_is_accepted_and_gets_a_marker(tmp_path: Path) -> None:
    state_dir = tmp_path / SITE

    history = check_site_state(state_dir, site=SITE)

    assert (history.entries, history.runs, history.audit_length, history.resets) == (0, 0, 0, ())
    assert history.lifetime_epsilon(delta=DELTA, accountant=ACCOUNTANT) == 0.0
    marker = read_marker(state_dir)
    assert marker is not None
    assert (marker.entries, marker.audit_length, marker.resets) == (0, 0, 0)


def test_each_spend_is_in_the_audit_log_with_entry_hash_and_lifetime_total(
        tmp_path: Path) -> None:
    state_dir = site_with_history(tmp_path / SITE)

    records = SiteAuditLog(state_dir, site=SITE).records()
    entries = PrivacyLedger(state_dir, site=SITE).entries

    spends = [r for r in records if isinstance(r, SpendRecord)]
    rounds = [r for r in records if isinstance(r, AuditRecord)]
    assert len(spends) == 6 and len(rounds) == 4  # fine-tuning spends appear, send nothing
    assert [s.entry_hash for s in spends] == [e.content_hash() for e in entries]
    assert [s.phase for s in spends] == ["round", "round", "finetune"] * 2
    assert [s.epsilon_total for s in spends] == [lifetime(n) for n in range(1, 7)]
    assert {(s.delta, s.accountant, s.origin) for s in spends} == {(DELTA, ACCOUNTANT,
                                                                    "recorded")}
    history = check_site_state(state_dir, site=SITE)
    assert (history.entries, history.runs, history.audit_length) == (6, 2, 10)
    assert history.audit_head == records[-1].hash
    assert history.lifetime_epsilon(delta=DELTA, accountant=ACCOUNTANT) == lifetime(6)


def test_crash_between_ledger_and_audit_is_repaired_as_recovered(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state_dir = site_with_history(tmp_path / SITE)
    entry = LedgerEntry.now(run_id="run-3", server_round=1, spend=SPEND, clip_norm=1.0,
                            num_examples=200)
    PrivacyLedger(state_dir, site=SITE).record(entry, delta=DELTA, budget=100.0)
    # ... crash: no spend record, no marker update

    history = check_site_state(state_dir, site=SITE, delta=DELTA, accountant=ACCOUNTANT)

    last = SiteAuditLog(state_dir, site=SITE).records()[-1]
    assert isinstance(last, SpendRecord)
    assert (last.origin, last.ledger_index, last.entry_hash) == ("recovered", 6,
                                                                  entry.content_hash())
    assert last.epsilon_total == lifetime(7)
    assert history.entries == 7 and history.audit_length == 11
    assert "added it as recovered" in caplog.text
    check_site_state(state_dir, site=SITE)  # and it stays consistent
    train(state_dir, "run-3", 2)


def test_crash_between_spend_record_and_marker_is_accepted(tmp_path: Path) -> None:
    state_dir = site_with_history(tmp_path / SITE)
    marker_before = (state_dir / MARKER_FILENAME).read_text()
    train(state_dir, "run-3", 1, phase="finetune")
    (state_dir / MARKER_FILENAME).write_text(marker_before)  # the marker write was lost

    history = check_site_state(state_dir, site=SITE)

    assert history.entries == 7
    marker = read_marker(state_dir)
    assert marker is not None and marker.entries == 7  # caught up


def test_reset_then_training_again(tmp_path: Path) -> None:
    state_dir = site_with_history(tmp_path / SITE)
    old_head = SiteAuditLog(state_dir, site=SITE).records()[-1].hash

    reset = reset_site_state(state_dir, reason="new ethics approval 2027", delta=DELTA,
                             accountant=ACCOUNTANT)
    train(state_dir, "run-4", 1)

    history = check_site_state(state_dir, site=SITE)
    assert (reset.reason, reset.archived_entries, reset.archived_audit_length) == (
        "new ethics approval 2027", 6, 10)
    assert reset.archived_epsilon == lifetime(6)
    assert reset.archived_audit_head == old_head
    assert history.entries == 1 and history.resets == (reset,)
    assert history.lifetime_epsilon(delta=DELTA, accountant=ACCOUNTANT) == lifetime(1)
    archive = state_dir / reset.archive
    assert sorted(p.name for p in archive.iterdir()) == [AUDIT_FILENAME, LEDGER_FILENAME,
                                                         MARKER_FILENAME]
    first = SiteAuditLog(state_dir, site=SITE).records()[0]
    assert isinstance(first, ResetRecord) and first.entry == reset
    assert f"budget reset on {reset.reset_at[:10]}: new ethics approval 2027" in \
        history.describe(delta=DELTA, accountant=ACCOUNTANT)


def test_second_reset_keeps_the_first_in_the_ledger(tmp_path: Path) -> None:
    state_dir = site_with_history(tmp_path / SITE)
    first = reset_site_state(state_dir, reason="first")
    train(state_dir, "run-4", 1)

    second = reset_site_state(state_dir, reason="second")

    assert PrivacyLedger(state_dir, site=SITE).resets == (first, second)
    assert check_site_state(state_dir, site=SITE).resets == (first, second)


def test_a_reset_dir_with_its_ledger_deleted_is_refused(tmp_path: Path) -> None:
    state_dir = site_with_history(tmp_path / SITE)
    reset_site_state(state_dir, reason="new budget year")
    delete_ledger(state_dir)

    message = refusal(state_dir)

    assert "must list the 1 budget reset(s) that site-state.json recorded; got 0" in message


@pytest.mark.parametrize("reason", ["", "   "])
def test_reset_needs_a_reason(tmp_path: Path, reason: str) -> None:
    state_dir = site_with_history(tmp_path / SITE)

    with pytest.raises(ConfigError, match="--reason must be a non-empty text"):
        reset_site_state(state_dir, reason=reason)

    assert not (state_dir / "archive").exists()
    check_site_state(state_dir, site=SITE)


def test_reset_refuses_a_missing_state_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be an existing site state directory"):
        reset_site_state(tmp_path / "nope", reason="x")

    assert not (tmp_path / "nope").exists()


def test_reset_works_on_a_tampered_dir_and_archives_it(tmp_path: Path) -> None:
    state_dir = site_with_history(tmp_path / SITE)
    delete_audit(state_dir)

    reset = reset_site_state(state_dir, reason="audit log lost in a disk failure",
                             delta=DELTA, accountant=ACCOUNTANT)

    assert reset.archived_epsilon == lifetime(6)  # still stated from the ledger
    assert reset.archived_audit_length == 0
    check_site_state(state_dir, site=SITE)


def test_old_format_files_are_read_checked_and_migrated(tmp_path: Path) -> None:
    # Written by fedcare main 08602c7's own PrivacyLedger and SiteAuditLog (no marker, no
    # spend records, ledger version 1): 2 runs x 2 rounds + a fine-tuning entry each.
    state_dir = tmp_path / LEGACY_SITE
    shutil.copytree(LEGACY_DIR, state_dir)
    assert ledger_doc(state_dir)["version"] == 1

    history = check_site_state(state_dir, site=LEGACY_SITE)

    entries = PrivacyLedger(state_dir, site=LEGACY_SITE).entries
    spends = [r for r in SiteAuditLog(state_dir, site=LEGACY_SITE).records()
              if isinstance(r, SpendRecord)]
    assert (history.entries, history.runs, history.audit_length) == (6, 2, 10)
    assert [s.origin for s in spends] == ["migrated"] * 6
    assert [s.entry_hash for s in spends] == [e.content_hash() for e in entries]
    assert [s.phase for s in spends] == ["round", "round", "unknown"] * 2
    assert (spends[-1].delta, spends[-1].accountant) == (1e-5, "rdp")  # the last recorded
    assert read_marker(state_dir) is not None
    check_site_state(state_dir, site=LEGACY_SITE)  # now a current-format state dir


def test_old_format_ledger_with_an_edited_entry_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / LEGACY_SITE
    shutil.copytree(LEGACY_DIR, state_dir)
    doc = ledger_doc(state_dir)
    doc["entries"][0]["spend"]["noise_multiplier"] *= 100
    write_ledger_doc(state_dir, doc)

    with pytest.raises(SiteStateInconsistent) as caught:
        check_site_state(state_dir, site=LEGACY_SITE)

    assert "line 1: epsilon_total must equal the lifetime eps" in str(caught.value)
    assert not (state_dir / MARKER_FILENAME).exists()  # nothing migrated


@pytest.mark.parametrize(("tamper", "fragment"), [
    (delete_audit, "must record the rounds behind the ledger's 6 entries; got no file"),
    (delete_ledger, "must hold the spends of the 4 round(s) with DP in the audit log; got no "
                    "file"),
    (remove_first_entry, "(run 'run-a' round 1) must have its spend in privacy ledger"),
])
def test_old_format_dir_with_a_file_missing_is_refused(
        tmp_path: Path, tamper: Callable[[Path], None], fragment: str) -> None:
    state_dir = tmp_path / LEGACY_SITE
    shutil.copytree(LEGACY_DIR, state_dir)
    tamper(state_dir)

    with pytest.raises(SiteStateInconsistent) as caught:
        check_site_state(state_dir, site=LEGACY_SITE)

    assert fragment in str(caught.value)


# ------------------------------------------------------------------ history for the server


def test_history_record_is_flat_and_carries_the_lifetime_epsilon(tmp_path: Path) -> None:
    state_dir = site_with_history(tmp_path / SITE)
    history = check_site_state(state_dir, site=SITE)

    record = history.to_record(delta=DELTA, accountant=ACCOUNTANT, extends=True)

    assert all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
               for v in record.values())
    assert record["lifetime-epsilon"] == lifetime(6)
    assert (record["runs"], record["entries"], record["audit-length"], record["resets"],
            record["audit-extends"]) == (2, 6, 10, 0, 1)


def test_audit_extends_a_known_prefix_and_not_a_foreign_head(tmp_path: Path) -> None:
    state_dir = tmp_path / SITE
    train(state_dir, "run-1", 1)
    known = SiteAuditLog(state_dir, site=SITE).records()
    train(state_dir, "run-1", 2)

    assert audit_extends(state_dir, site=SITE, known_length=len(known), known_head=known[-1].hash)
    assert audit_extends(state_dir, site=SITE, known_length=0, known_head=GENESIS_HASH)
    assert not audit_extends(state_dir, site=SITE, known_length=len(known),
                             known_head="a" * 64)
    assert not audit_extends(state_dir, site=SITE, known_length=99, known_head=known[-1].hash)


def test_audit_extends_through_a_recorded_reset(tmp_path: Path) -> None:
    state_dir = tmp_path / SITE
    train(state_dir, "run-1", 1)
    known = SiteAuditLog(state_dir, site=SITE).records()
    train(state_dir, "run-1", 2)  # the server saw only the first round's chain
    reset_site_state(state_dir, reason="new budget year")

    assert audit_extends(state_dir, site=SITE, known_length=len(known), known_head=known[-1].hash)
    assert not audit_extends(state_dir, site=SITE, known_length=len(known),
                             known_head="b" * 64)


# ------------------------------------------------------------------ the command


def test_old_ledger_command_form_still_works(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from fedcare.cli import main

    state_dir = site_with_history(tmp_path / SITE)

    code = main(["ledger", str(state_dir), "--site", SITE, "--delta", "1e-5"])

    out = capsys.readouterr().out
    assert code == 0
    pld = compose_epsilon([SPEND] * 6, delta=DELTA, accountant="pld")  # the default
    assert (f"{SITE}: 6 rounds recorded; epsilon = {pld:.4f} at delta = 1e-05 (PLD, "
            "lifetime at this site (2 runs))") in out
    assert f"RDP upper bound eps={format_epsilon(lifetime(6))})" in out


def test_ledger_reset_command_archives_and_show_reports_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedcare.cli import main

    state_dir = site_with_history(tmp_path / SITE)

    code = main(["ledger", "reset", "--state-dir", str(state_dir), "--reason",
                 "new ethics approval"])
    shown = main(["ledger", "show", str(state_dir)])

    out = capsys.readouterr().out
    assert (code, shown) == (0, 0)
    assert out.count("budget reset on ") == 2 and "new ethics approval" in out
    assert f"{SITE}: 0 rounds recorded; epsilon = 0.0000" in out
    assert "since the last budget reset" in out
    assert len(list((state_dir / "archive").iterdir())) == 1


@pytest.mark.parametrize(("argv", "fragment"), [
    (["ledger", "reset", "--state-dir", "{dir}"], "--reason must be a non-empty text"),
    (["ledger", "reset", "--state-dir", "{dir}/missing", "--reason", "x"],
     "--state-dir must be an existing site state directory"),
    (["ledger", "reset", "--reason", "x"], "a state dir must be given"),
])
def test_ledger_reset_command_refuses_bad_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
        fragment: str) -> None:
    from fedcare.cli import main

    state_dir = site_with_history(tmp_path / SITE)

    code = main([arg.replace("{dir}", str(state_dir)) for arg in argv])

    assert code == 2
    assert fragment in capsys.readouterr().err
    assert not (state_dir / "archive").exists()


# ------------------------------------------------------------------ site and server together


def report_for(state_dir: Path,
               known: tuple[int, str] | None) -> dict[str, str | int | float]:
    """What a site answers the server's pre-flight (the lead wires this into the reply)."""
    return history_for_server(state_dir, site=SITE, delta=DELTA, accountant=ACCOUNTANT,
                              known=known)


def test_wiping_the_whole_state_dir_is_caught_by_the_server(tmp_path: Path) -> None:
    from fedcare.server.site_registry import SiteRegistry

    state_dir = site_with_history(tmp_path / SITE)
    registry = SiteRegistry.in_output_dir(tmp_path / "runs")
    registry.update(SITE, report_for(state_dir, registry.known(SITE)), run="run-2")
    shutil.rmtree(state_dir)  # ledger, audit log and marker: locally a fresh site

    flags = registry.check(SITE, report_for(state_dir, registry.known(SITE)))

    assert any("lifetime eps at this site must not go down; got 0 after" in f for f in flags)
    assert any("that the site says does not contain it" in f for f in flags)


def test_a_recorded_reset_reaches_the_server_as_a_reset(tmp_path: Path) -> None:
    from fedcare.server.site_registry import SiteRegistry

    state_dir = site_with_history(tmp_path / SITE)
    registry = SiteRegistry.in_output_dir(tmp_path / "runs")
    registry.update(SITE, report_for(state_dir, registry.known(SITE)), run="run-2")
    reset_site_state(state_dir, reason="new ethics approval")
    train(state_dir, "run-3", 1)

    screening = registry.screen(SITE, report_for(state_dir, registry.known(SITE)),
                                accept_site_resets=True)

    assert screening.admitted
    assert any(": new ethics approval (resets 0 -> 1 since run run-2)" in f
               for f in screening.flags)
    assert not any("audit chain" in f for f in screening.flags)  # extends through the reset


def test_record_spend_refuses_an_entry_that_is_not_the_ledgers_last(tmp_path: Path) -> None:
    state_dir = site_with_history(tmp_path / SITE)
    stranger = LedgerEntry.now(run_id="run-9", server_round=1, spend=SPEND, clip_norm=1.0,
                               num_examples=200)

    with pytest.raises(SiteStateInconsistent) as caught:
        record_spend(state_dir, site=SITE, entry=stranger, phase="round", delta=DELTA,
                     accountant=ACCOUNTANT)

    assert ("last entry must be the one just recorded (run 'run-9' round 1); got run 'run-2' "
            "round 3") in str(caught.value)
    check_site_state(state_dir, site=SITE)  # nothing written


def test_describe_states_scope_delta_and_accountant(tmp_path: Path) -> None:
    state_dir = site_with_history(tmp_path / SITE)

    text = check_site_state(state_dir, site=SITE).describe(delta=DELTA, accountant=ACCOUNTANT)

    assert text.startswith(f"site {SITE}: 6 ledger entries over 2 run(s); audit log 10 records")
    assert "lifetime at this site (2 runs) at delta=1e-05 (RDP accountant, add/remove-one" in text
    assert "budget reset" not in text


def test_a_site_whose_spends_were_recorded_under_rdp_goes_on_under_the_pld_default(
        tmp_path: Path) -> None:
    """The ledger format did not change with the default accountant: the same events, and
    each audit spend record states its running total at the accountant it names."""
    state_dir = site_with_history(tmp_path / SITE)  # 6 entries, totals recorded at RDP
    ledger = PrivacyLedger(state_dir, site=SITE)
    entry = LedgerEntry.now(run_id="run-3", server_round=1, spend=SPEND, clip_norm=1.0,
                            num_examples=200)
    check_site_state(state_dir, site=SITE, delta=DELTA, accountant="pld")

    total = ledger.record(entry, delta=DELTA, budget=100.0)  # the default: PLD
    record_spend(state_dir, site=SITE, entry=entry, phase="round", delta=DELTA,
                 accountant="pld")
    history = check_site_state(state_dir, site=SITE, delta=DELTA, accountant="pld")

    spends = [r for r in SiteAuditLog(state_dir, site=SITE).records()
              if isinstance(r, SpendRecord)]
    assert [s.accountant for s in spends] == ["rdp"] * 6 + ["pld"]
    assert total == compose_epsilon([SPEND] * 7, delta=DELTA, accountant="pld")
    assert spends[-1].epsilon_total == total < lifetime(7)  # PLD is the tighter bound
    assert history.lifetime_epsilon(delta=DELTA) == total
