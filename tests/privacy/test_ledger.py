"""The site privacy ledger (spend is data, refuse before spending, atomic, never reset)
and the privacy statement built from it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fedcare.common.errors import LedgerCorrupted, PrivacyBudgetExceeded
from fedcare.privacy import (
    LEDGER_FILENAME,
    LedgerEntry,
    PrivacyLedger,
    PrivacyStatement,
    RoundSpend,
    compose_epsilon,
    statement_from_entries,
)
from fedcare.privacy import ledger as ledger_module
from fedcare.privacy.statement import format_epsilon

SITE = "hospital-a"
DELTA = 1e-5


def make_spend(**overrides: Any) -> RoundSpend:
    kwargs: dict[str, Any] = {"sampling_rate": 0.1, "noise_multiplier": 1.5, "steps": 10}
    kwargs.update(overrides)
    return RoundSpend(**kwargs)


def make_entry(**overrides: Any) -> LedgerEntry:
    kwargs: dict[str, Any] = {
        "run_id": "run-1",
        "server_round": 1,
        "recorded_at": "2026-11-24T09:30:00+00:00",
        "spend": make_spend(),
        "clip_norm": 1.0,
        "num_examples": 100,
    }
    kwargs.update(overrides)
    return LedgerEntry(**kwargs)


def record_rounds(ledger: PrivacyLedger, rounds: int, *, run_id: str = "run-1",
                  budget: float = 100.0) -> float:
    total = 0.0
    for server_round in range(1, rounds + 1):
        total = ledger.record(make_entry(run_id=run_id, server_round=server_round),
                              delta=DELTA, budget=budget)
    return total


def ledger_file(state_dir: Path) -> Path:
    return state_dir / LEDGER_FILENAME


def valid_document(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "format": "fedcare-privacy-ledger",
        "version": 1,
        "site": SITE,
        "entries": [make_entry().to_dict()],
    }
    document.update(overrides)
    return document


# ------------------------------------------------------------------- basic use


def test_new_ledger_creates_state_dir_and_is_empty(tmp_path: Path) -> None:
    state_dir = tmp_path / "state" / SITE

    ledger = PrivacyLedger(state_dir, site=SITE)

    assert state_dir.is_dir()
    assert ledger.entries == ()
    assert ledger.epsilon(delta=DELTA) == 0.0
    assert not ledger_file(state_dir).exists()


def test_record_returns_total_and_epsilon_equals_composition_of_spends(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path, site=SITE)
    ledger.record(make_entry(server_round=1), delta=DELTA, budget=50.0)
    entry = make_entry(server_round=2, spend=make_spend(sampling_rate=0.2, steps=5))

    total = ledger.record(entry, delta=DELTA, budget=50.0)

    expected = compose_epsilon([make_spend(), make_spend(sampling_rate=0.2, steps=5)],
                               delta=DELTA)
    assert total == expected
    assert ledger.epsilon(delta=DELTA) == expected


def test_pld_ledger_refuses_and_records_by_pld_epsilon(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path, site=SITE)
    spend = make_spend(sampling_rate=1.0, noise_multiplier=3.0, steps=4)
    pld = compose_epsilon([spend], delta=DELTA, accountant="pld")
    rdp = compose_epsilon([spend], delta=DELTA, accountant="rdp")
    budget = (pld + rdp) / 2  # enough by PLD, not by RDP

    with pytest.raises(PrivacyBudgetExceeded):
        ledger.check(spend, delta=DELTA, budget=budget, accountant="rdp")
    total = ledger.record(make_entry(spend=spend), delta=DELTA, budget=budget,
                          accountant="pld")

    assert total == pld == ledger.epsilon(delta=DELTA, accountant="pld")


def test_file_holds_spends_not_a_running_epsilon(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path, site=SITE)
    ledger.record(make_entry(), delta=DELTA, budget=50.0)

    document = json.loads(ledger_file(tmp_path).read_text())

    assert document == {
        "format": "fedcare-privacy-ledger",
        "version": 2,
        "site": SITE,
        "resets": [],
        "entries": [{
            "run_id": "run-1",
            "server_round": 1,
            "recorded_at": "2026-11-24T09:30:00+00:00",
            "clip_norm": 1.0,
            "num_examples": 100,
            "spend": {"mechanism": "poisson-gaussian", "sampling_rate": 0.1,
                      "noise_multiplier": 1.5, "steps": 10},
        }],
    }


def test_ledger_survives_restart(tmp_path: Path) -> None:
    before = PrivacyLedger(tmp_path, site=SITE)
    total = record_rounds(before, 3)

    after = PrivacyLedger(tmp_path, site=SITE)

    assert after.entries == before.entries
    assert after.epsilon(delta=DELTA) == total


def test_new_run_appends_and_never_resets(tmp_path: Path) -> None:
    first_run_total = record_rounds(PrivacyLedger(tmp_path, site=SITE), 3, run_id="run-1")

    second_run = PrivacyLedger(tmp_path, site=SITE)
    total = record_rounds(second_run, 3, run_id="run-2")

    assert len(second_run.entries) == 6
    assert total == compose_epsilon([make_spend()] * 6, delta=DELTA)
    assert total > first_run_total


def test_entry_now_is_stamped_in_utc(tmp_path: Path) -> None:
    entry = LedgerEntry.now(run_id="r", server_round=1, spend=make_spend(), clip_norm=1,
                            num_examples=10)

    assert entry.recorded_at.endswith("+00:00")
    assert entry.clip_norm == 1.0


# ------------------------------------------------------------ refuse before spending


def test_check_returns_epsilon_after_planned_spend_without_writing(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path, site=SITE)

    after = ledger.check(make_spend(), delta=DELTA, budget=50.0)

    assert after == compose_epsilon([make_spend()], delta=DELTA)
    assert ledger.entries == ()
    assert not ledger_file(tmp_path).exists()


def test_round_past_budget_is_refused_and_nothing_written(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path, site=SITE)
    spent = record_rounds(ledger, 2)
    would_be = compose_epsilon([make_spend()] * 3, delta=DELTA)
    budget = (spent + would_be) / 2  # the third round would pass it
    before = ledger_file(tmp_path).read_bytes()

    with pytest.raises(PrivacyBudgetExceeded) as caught:
        ledger.record(make_entry(server_round=3), delta=DELTA, budget=budget)

    message = str(caught.value)
    assert SITE in message
    assert f"eps={would_be:.4g}" in message
    assert f"spent so far eps={spent:.4g}" in message
    assert f"budget eps={budget:g}" in message
    assert f"delta={DELTA:g}" in message
    assert ledger_file(tmp_path).read_bytes() == before
    assert len(PrivacyLedger(tmp_path, site=SITE).entries) == 2


def test_check_refuses_the_same_way_as_record(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path, site=SITE)
    one_round = compose_epsilon([make_spend()], delta=DELTA)

    with pytest.raises(PrivacyBudgetExceeded):
        ledger.check(make_spend(), delta=DELTA, budget=one_round * 0.99)
    assert ledger.check(make_spend(), delta=DELTA, budget=one_round) == one_round


def test_same_round_cannot_be_recorded_twice(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path, site=SITE)
    ledger.record(make_entry(run_id="run-1", server_round=4), delta=DELTA, budget=50.0)
    before = ledger_file(tmp_path).read_bytes()

    with pytest.raises(ValueError, match="round must be recorded once"):
        ledger.record(make_entry(run_id="run-1", server_round=4), delta=DELTA, budget=50.0)

    assert ledger_file(tmp_path).read_bytes() == before
    assert ledger.has_round("run-1", 4)
    assert not ledger.has_round("run-2", 4)
    ledger.record(make_entry(run_id="run-2", server_round=4), delta=DELTA, budget=50.0)
    assert len(ledger.entries) == 2


def test_two_ledger_objects_on_one_dir_do_not_lose_entries(tmp_path: Path) -> None:
    first = PrivacyLedger(tmp_path, site=SITE)
    stale = PrivacyLedger(tmp_path, site=SITE)
    first.record(make_entry(server_round=1), delta=DELTA, budget=50.0)

    total = stale.record(make_entry(server_round=2), delta=DELTA, budget=50.0)

    assert [e.server_round for e in PrivacyLedger(tmp_path, site=SITE).entries] == [1, 2]
    assert total == compose_epsilon([make_spend()] * 2, delta=DELTA)


# ------------------------------------------------------------------ crash safety


def test_leftover_temp_file_from_a_crash_is_ignored(tmp_path: Path) -> None:
    record_rounds(PrivacyLedger(tmp_path, site=SITE), 2)
    (tmp_path / f".{LEDGER_FILENAME}.k3j2h1.tmp").write_text('{"format": "fedcare-pri')

    ledger = PrivacyLedger(tmp_path, site=SITE)

    assert len(ledger.entries) == 2


def test_crash_before_rename_keeps_old_ledger_and_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = PrivacyLedger(tmp_path, site=SITE)
    record_rounds(ledger, 1)
    before = ledger_file(tmp_path).read_bytes()

    def power_cut(src: Any, dst: Any) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(ledger_module.os, "replace", power_cut)
    with pytest.raises(OSError, match="simulated crash"):
        ledger.record(make_entry(server_round=2), delta=DELTA, budget=50.0)
    monkeypatch.undo()

    assert ledger_file(tmp_path).read_bytes() == before
    assert len(ledger.entries) == 1
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
    assert len(PrivacyLedger(tmp_path, site=SITE).entries) == 1


def test_truncated_ledger_raises_ledger_corrupted_naming_the_file(tmp_path: Path) -> None:
    record_rounds(PrivacyLedger(tmp_path, site=SITE), 2)
    path = ledger_file(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(LedgerCorrupted) as caught:
        PrivacyLedger(tmp_path, site=SITE)

    assert str(path) in str(caught.value)
    assert "not valid JSON" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


CORRUPTIONS: list[tuple[str, str, str]] = [
    ("empty file", "", "not valid JSON"),
    ("not json", "pickle?\x80\x04", "not valid JSON"),
    ("top level list", "[]", "top level must be a JSON object; got list"),
    ("wrong format", json.dumps(valid_document(format="other")), "format must be"),
    ("newer version", json.dumps(valid_document(version=3)), "version must be one of 1, 2; got 3"),
    ("bool version", json.dumps(valid_document(version=True)),
     "version must be one of 1, 2; got True"),
    ("version 2 without resets", json.dumps(valid_document(version=2)), "missing ['resets']"),
    ("version 1 with resets", json.dumps(valid_document(resets=[])), "unknown ['resets']"),
    ("unknown key", json.dumps(valid_document(epsilon=0.5)), "unknown ['epsilon']"),
    ("entries not list", json.dumps(valid_document(entries={})), "entries must be a list"),
    ("negative steps", json.dumps(valid_document(entries=[
        {**make_entry().to_dict(), "spend": {**make_spend().to_dict(), "steps": -1}}])),
     "entry 0 is invalid: RoundSpend: steps must be an integer >= 1; got -1"),
    ("unknown mechanism", json.dumps(valid_document(entries=[
        {**make_entry().to_dict(), "spend": {**make_spend().to_dict(), "mechanism": "x"}}])),
     "mechanism must be one of 'poisson-gaussian', 'shuffled-gaussian-no-amplification'; got 'x'"),
    ("zero noise", json.dumps(valid_document(entries=[
        {**make_entry().to_dict(),
         "spend": {**make_spend().to_dict(), "noise_multiplier": 0.0}}])),
     "noise_multiplier must be a finite number > 0; got 0.0"),
    ("bool round", json.dumps(valid_document(entries=[
        {**make_entry().to_dict(), "server_round": True}])),
     "server_round must be an integer >= 1; got True"),
    ("local time", json.dumps(valid_document(entries=[
        {**make_entry().to_dict(), "recorded_at": "2026-11-24T10:30:00+01:00"}])),
     "recorded_at must be in UTC"),
    ("NaN literal", json.dumps(valid_document()).replace('"clip_norm": 1.0', '"clip_norm": NaN'),
     "not valid JSON"),
    ("duplicate key", json.dumps(valid_document())[:-1] + ', "site": "hospital-b"}',
     "duplicate key 'site'"),
    ("duplicate round", json.dumps(valid_document(entries=[make_entry().to_dict()] * 2)),
     "entry 1 must be the only one for run_id='run-1' server_round=1"),
]


@pytest.mark.parametrize(("content", "fragment"), [c[1:] for c in CORRUPTIONS],
                         ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_ledger_raises_ledger_corrupted(tmp_path: Path, content: str,
                                                fragment: str) -> None:
    ledger_file(tmp_path).write_text(content, encoding="utf-8", errors="surrogateescape")

    with pytest.raises(LedgerCorrupted) as caught:
        PrivacyLedger(tmp_path, site=SITE)

    message = str(caught.value)
    assert message.startswith(f"privacy ledger {ledger_file(tmp_path)}: ")
    assert fragment in message


def test_ledger_of_another_site_is_refused(tmp_path: Path) -> None:
    record_rounds(PrivacyLedger(tmp_path, site="hospital-b"), 1)

    with pytest.raises(LedgerCorrupted) as caught:
        PrivacyLedger(tmp_path, site=SITE)

    assert "site must be 'hospital-a' (this site); got 'hospital-b'" in str(caught.value)


def test_unreadable_ledger_path_raises_ledger_corrupted(tmp_path: Path) -> None:
    ledger_file(tmp_path).mkdir()  # a directory where the file should be

    with pytest.raises(LedgerCorrupted, match="cannot be read"):
        PrivacyLedger(tmp_path, site=SITE)


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"run_id": ""}, "run_id must be a non-empty string"),
    ({"server_round": 0}, "server_round must be an integer >= 1; got 0"),
    ({"recorded_at": "yesterday"}, "recorded_at must be a UTC ISO 8601 string"),
    ({"recorded_at": "2026-11-24T09:30:00"}, "recorded_at must be in UTC"),
    ({"clip_norm": 0.0}, "clip_norm must be a finite number > 0; got 0.0"),
    ({"num_examples": 0}, "num_examples must be an integer >= 1; got 0"),
    ({"spend": {"steps": 1}}, "spend must be a RoundSpend; got dict"),
])
def test_bad_ledger_entry_is_rejected(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        make_entry(**overrides)

    assert fragment in str(caught.value)


def test_site_name_must_be_given(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="site must be a non-empty name"):
        PrivacyLedger(tmp_path, site=" ")


def test_ledger_file_write_is_durable_via_temp_and_replace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        calls.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(ledger_module.os, "replace", spy)
    record_rounds(PrivacyLedger(tmp_path, site=SITE), 1)

    assert len(calls) == 1
    source, target = calls[0]
    assert source.startswith(f".{LEDGER_FILENAME}.") and source.endswith(".tmp")
    assert target == LEDGER_FILENAME


# --------------------------------------------------------------------- statement


def make_statement(**overrides: Any) -> PrivacyStatement:
    kwargs: dict[str, Any] = {
        "epsilon": 0.9731, "delta": 1e-3, "accountant": "rdp", "rounds": 10, "steps": 40,
        "noise_multiplier": 1.1, "sampling_rate": 0.25, "clip_norm": 1.0, "num_examples": 400,
    }
    kwargs.update(overrides)
    return PrivacyStatement(**kwargs)


def test_short_statement_names_scope_accountant_adjacency_and_sampling() -> None:
    statement = make_statement()

    assert statement.short() == (
        "eps=0.98 at delta=1e-03 (lifetime at this site (1 run), RDP, add/remove-one, "
        "Poisson sampling q=0.25)")
    assert make_statement(runs=3).short().startswith(
        "eps=0.98 at delta=1e-03 (lifetime at this site (3 runs), RDP")


@pytest.mark.parametrize(("epsilon", "shown"), [
    (0.98, "0.98"), (0.9801, "0.99"), (2.0, "2.00"), (float("inf"), "inf")])
def test_short_statement_rounds_epsilon_up_never_down(epsilon: float, shown: str) -> None:
    assert make_statement(epsilon=epsilon).short().startswith(f"eps={shown} at")


def test_text_statement_says_what_is_and_is_not_protected() -> None:
    text = make_statement(accountant="pld", delta=1e-5).text()

    assert "epsilon = 0.98 at delta = 1e-05" in text
    assert "single patient row" in text and "example-level" in text
    assert "Poisson sampling, as fedcare implements it" in text
    assert "earlier runs" in text and "not a per-round figure" in text
    assert "PLD accountant" in text
    assert "released to the server without differential privacy" in text
    assert "Caution" not in text


def test_text_statement_warns_when_delta_is_not_small() -> None:
    assert "Caution: delta (1e-02)" in make_statement(delta=1e-2, num_examples=400).text()


def test_statement_from_ledger_covers_every_entry(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path, site=SITE)
    record_rounds(ledger, 3, run_id="run-1")
    ledger.record(make_entry(run_id="run-2", server_round=1,
                             spend=make_spend(noise_multiplier=1.2, sampling_rate=0.2)),
                  delta=DELTA, budget=100.0)

    statement = statement_from_entries(ledger.entries, delta=DELTA)

    assert statement.epsilon == ledger.epsilon(delta=DELTA)
    assert (statement.rounds, statement.steps) == (4, 40)
    assert statement.mixed_parameters is True
    assert (statement.noise_multiplier, statement.sampling_rate) == (1.2, 0.2)
    assert "q<=0.2" in statement.short()
    assert statement.to_dict()["short"] == statement.short()
    assert statement.to_dict()["adjacency"] == "add-or-remove-one-example"


def test_pld_statement_reports_the_rdp_figure_beside_it_as_an_upper_bound(
        tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path, site=SITE)
    record_rounds(ledger, 3, run_id="run-1")
    rdp = ledger.epsilon(delta=DELTA, accountant="rdp")

    statement = statement_from_entries(ledger.entries, delta=DELTA)  # the default: PLD

    assert statement.accountant == "pld"
    assert statement.epsilon == ledger.epsilon(delta=DELTA, accountant="pld") < rdp
    assert statement.upper_bound_epsilon == rdp
    assert statement.short().endswith(f"PLD, add/remove-one, Poisson sampling q=0.1; "
                                      f"RDP upper bound eps={format_epsilon(rdp)})")
    assert f"gives epsilon = {format_epsilon(rdp)} for the same spends" in statement.text()
    assert statement.to_dict()["upper_bound_epsilon"] == rdp


def test_rdp_statement_has_no_second_figure(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path, site=SITE)
    record_rounds(ledger, 2, run_id="run-1")

    statement = statement_from_entries(ledger.entries, delta=DELTA, accountant="rdp")

    assert statement.upper_bound_epsilon is None
    assert "upper bound eps" not in statement.short()


def test_statement_needs_at_least_one_entry() -> None:
    with pytest.raises(ValueError, match="entries must not be empty"):
        statement_from_entries([], delta=DELTA)
