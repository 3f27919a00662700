"""The server's memory of each site's history: going back is flagged, opt-in admits resets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedcare.common.errors import SiteRegistryCorrupted
from fedcare.common.site_report import SiteReport
from fedcare.server.site_registry import REGISTRY_FILENAME, SiteRegistry

SITE = "hospital-a"
HEAD_1 = "1" * 64
HEAD_2 = "2" * 64


def report(**overrides: Any) -> dict[str, str | int | float]:
    values: dict[str, Any] = dict(site=SITE, lifetime_epsilon=1.5, delta=1e-5,
                                  accountant="rdp", runs=2, entries=6, audit_length=10,
                                  audit_head=HEAD_1, resets=0, audit_extends=1)
    values.update(overrides)
    return SiteReport(**values).to_record()


def registry_after_one_run(tmp_path: Path) -> SiteRegistry:
    registry = SiteRegistry.in_output_dir(tmp_path)
    registry.update(SITE, report(), run="run-1")
    return SiteRegistry.in_output_dir(tmp_path)  # as the next run reads it


def test_first_report_is_not_flagged_and_is_persisted(tmp_path: Path) -> None:
    registry = SiteRegistry.in_output_dir(tmp_path)

    flags = registry.check(SITE, report(audit_extends=-1))
    registry.update(SITE, report(), run="run-1")

    assert flags == []
    saved = json.loads((tmp_path / REGISTRY_FILENAME).read_text())
    assert saved["sites"][SITE]["lifetime_epsilon"] == 1.5
    assert saved["sites"][SITE]["audit_head"] == HEAD_1
    assert SiteRegistry.in_output_dir(tmp_path).known(SITE) == (10, HEAD_1)


def test_a_site_that_went_on_is_not_flagged(tmp_path: Path) -> None:
    registry = registry_after_one_run(tmp_path)

    flags = registry.check(SITE, report(lifetime_epsilon=2.0, audit_length=14,
                                        audit_head=HEAD_2, entries=9, runs=3))

    assert flags == []


def test_lifetime_epsilon_going_down_is_flagged(tmp_path: Path) -> None:
    registry = registry_after_one_run(tmp_path)

    flags = registry.check(SITE, report(lifetime_epsilon=0.7))

    assert flags == [f"site {SITE}: lifetime eps at this site must not go down; got 0.7 after "
                     "1.5 in run run-1 (delta=1e-05, rdp)"]


def test_epsilon_at_another_delta_is_not_compared(tmp_path: Path) -> None:
    registry = registry_after_one_run(tmp_path)

    assert registry.check(SITE, report(lifetime_epsilon=0.7, delta=1e-3)) == []


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"audit_extends": 0, "audit_length": 12, "audit_head": HEAD_2},
     "that the site says does not contain it"),
    ({"audit_extends": -1}, "no answer from the site"),
    ({"audit_length": 4, "audit_head": HEAD_2}, "a shorter chain (4 records)"),
    ({"audit_head": HEAD_2}, "another head at the same length"),
])
def test_a_chain_that_does_not_extend_the_last_head_is_flagged(
        tmp_path: Path, changes: dict[str, Any], fragment: str) -> None:
    registry = registry_after_one_run(tmp_path)

    flags = registry.check(SITE, report(**changes))

    assert len(flags) == 1
    assert flags[0].startswith(f"site {SITE}: audit chain must extend the head last seen "
                               f"({HEAD_1[:12]}... at length 10, run run-1); got ")
    assert fragment in flags[0]


def reset_report() -> dict[str, str | int | float]:
    return report(lifetime_epsilon=0.2, entries=1, runs=1, audit_length=3, audit_head=HEAD_2,
                  resets=1, last_reset_at="2027-01-02T08:00:00+00:00",
                  last_reset_reason="new ethics approval")


def test_a_reset_site_is_flagged_and_excluded_by_default(tmp_path: Path) -> None:
    registry = registry_after_one_run(tmp_path)

    screening = registry.screen(SITE, reset_report(), accept_site_resets=False)

    assert not screening.admitted
    assert any("lifetime eps at this site must not go down; got 0.2 after 1.5" in f
               for f in screening.flags)
    assert (f"site {SITE}: budget reset on 2027-01-02: new ethics approval (resets 0 -> 1 "
            "since run run-1)") in screening.flags
    assert len(screening.flags) == 2  # the chain extends through the recorded reset


def test_a_reset_site_is_admitted_when_the_run_opts_in(tmp_path: Path) -> None:
    registry = registry_after_one_run(tmp_path)

    screening = registry.screen(SITE, reset_report(), accept_site_resets=True)
    registry.update(SITE, reset_report(), run="run-2")

    assert screening.admitted and len(screening.flags) == 2
    after = SiteRegistry.in_output_dir(tmp_path)
    assert after.known(SITE) == (3, HEAD_2)
    assert after.check(SITE, report(lifetime_epsilon=0.4, entries=2, audit_length=5,
                                    resets=1, audit_head="3" * 64)) == []


def test_an_unflagged_site_is_admitted_without_opt_in(tmp_path: Path) -> None:
    registry = registry_after_one_run(tmp_path)

    screening = registry.screen(SITE, report(lifetime_epsilon=1.6, audit_length=11,
                                             audit_head=HEAD_2), accept_site_resets=False)

    assert screening.admitted and screening.flags == ()


def test_an_invalid_report_names_the_key_and_value(tmp_path: Path) -> None:
    registry = registry_after_one_run(tmp_path)
    bad = {**report(), "lifetime-epsilon": -1.0}

    with pytest.raises(ValueError) as caught:
        registry.check(SITE, bad)

    assert "lifetime-epsilon must be a finite number >= 0; got -1.0" in str(caught.value)


def test_a_damaged_registry_file_is_refused(tmp_path: Path) -> None:
    registry_after_one_run(tmp_path)
    (tmp_path / REGISTRY_FILENAME).write_text('{"format": "fedcare-site-registry"')

    with pytest.raises(SiteRegistryCorrupted) as caught:
        SiteRegistry.in_output_dir(tmp_path)

    assert f"{tmp_path / REGISTRY_FILENAME}: is not a valid registry" in str(caught.value)


def test_resets_going_down_is_flagged(tmp_path: Path) -> None:
    registry = SiteRegistry.in_output_dir(tmp_path)
    registry.update(SITE, reset_report(), run="run-2")

    flags = registry.check(SITE, report(lifetime_epsilon=0.3, audit_length=5, resets=0))

    assert f"site {SITE}: resets must not go down; got 0 after 1" in flags
