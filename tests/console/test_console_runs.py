"""The consortium view's reading of a run folder: mid-run, finished, and what it must not do."""

from __future__ import annotations

from pathlib import Path

from fedcare.console.charts import Series, line_chart
from fedcare.console.runs import (
    FINISHED,
    REFUSED,
    RUNNING,
    STARTING,
    UNREADABLE,
    list_runs,
    load_run,
)
from tests.console.factories import BUDGET, round_record, write_finished, write_running


def test_a_run_mid_way_reads_its_rounds_so_far_from_resume_json(tmp_path: Path) -> None:
    write_running(tmp_path, "r1", [round_record(1, {"a": 0.3}), round_record(2, {"a": 0.5})],
                  planned=5)

    view = load_run(tmp_path, "r1")

    assert view is not None
    assert (view.status, view.rounds_done, view.rounds_planned) == (RUNNING, 2, 5)
    assert view.progress_percent == 40.0


def test_each_site_shows_its_own_epsilon_with_scope_and_delta_never_an_average(
        tmp_path: Path) -> None:
    write_running(tmp_path, "r1", [round_record(1, {"a": 0.25, "b": 0.75})], planned=3)

    view = load_run(tmp_path, "r1")

    assert view is not None
    shown = {s.site: (s.epsilon_run.shown, s.epsilon_lifetime.shown) for s in view.sites}
    assert shown == {
        "a": ("ε=0.25 at δ=1e-03 (this run)", "ε=1.25 at δ=1e-03 (lifetime at this site)"),
        "b": ("ε=0.75 at δ=1e-03 (this run)", "ε=1.75 at δ=1e-03 (lifetime at this site)"),
    }
    # the bar is the site's share of its own budget: 0.75 / 5 = 15 %
    assert view.sites[1].epsilon_run.bar_percent == 100 * 0.75 / BUDGET


def test_the_report_keys_epsilon_run_and_lifetime_win_when_present(tmp_path: Path) -> None:
    rounds = [round_record(1, {"a": 0.25})]
    write_finished(tmp_path, "r1", rounds)
    report = tmp_path / "r1" / "report.json"
    report.write_text(report.read_text().replace('"train-rows"',
                                                 '"epsilon-run": 0.4, "epsilon-lifetime": 2.5, '
                                                 '"train-rows"'))

    view = load_run(tmp_path, "r1")

    assert view is not None and view.status == FINISHED
    assert view.sites[0].epsilon_run.value == 0.4
    assert view.sites[0].epsilon_lifetime.value == 2.5


def test_an_epsilon_the_report_lacks_says_so(tmp_path: Path) -> None:
    rnd = round_record(1, {"a": 0.25})
    del rnd["train"]["a"]["epsilon-run"]
    write_running(tmp_path, "r1", [rnd], planned=2)

    view = load_run(tmp_path, "r1")

    assert view is not None
    assert view.sites[0].epsilon_run.shown == "not reported"
    assert view.sites[0].epsilon_run.bar_percent is None


def test_dropped_refused_and_rejected_sites_are_named_with_their_reasons(tmp_path: Path) -> None:
    rnd = round_record(2, {"a": 0.2}, failures=[
        {"site": "b", "phase": "train", "code": None, "reason": "no reply before the timeout"},
        {"site": "c", "phase": "train", "code": 100, "reason": "budget exhausted"},
    ], rejected=[{"site": "a", "node": 1, "phase": "train", "reason": "norm 80 > 50"}])
    write_running(tmp_path, "r1", [rnd], planned=3)

    view = load_run(tmp_path, "r1")

    assert view is not None
    status = {s.site: (s.status, s.reason) for s in view.sites}
    assert status == {"a": ("rejected", "round 2: norm 80 > 50"),
                      "b": ("dropped", "round 2 train: no reply before the timeout"),
                      "c": ("refused", "round 2 train: budget exhausted")}
    assert view.rejections == [{"round": 2, "site": "a", "node": 1, "phase": "train",
                                "reason": "norm 80 > 50"}]


def test_the_preflight_section_names_each_sites_answer_and_its_own_budget(
        tmp_path: Path) -> None:
    write_finished(tmp_path, "r1", [round_record(1, {"a": 0.2})], extra={"preflight": {
        "sites": {"a": {"site": "a", "accepted": True, "reasons": [], "excluded": [],
                        "lifetime-budget": 2.4},
                  "z": {"site": "z", "accepted": False, "excluded": [],
                        "reasons": ["max-rounds 10 < 40 asked"]}},
        "accepted": ["a"], "silent-nodes": []}})

    view = load_run(tmp_path, "r1")

    assert view is not None
    assert {s.site: (s.status, s.preflight) for s in view.sites} == {
        "a": ("replied", "accept"), "z": ("refused", "refuse: max-rounds 10 < 40 asked")}
    # a's lifetime bar is against its own policy budget: 1.2 / 2.4 = 50 %
    assert view.sites[0].epsilon_lifetime.bar_percent == 50.0


def test_a_run_refused_in_preflight_says_so(tmp_path: Path) -> None:
    write_finished(tmp_path, "r1", [round_record(1, {"a": 0.2})], extra={"status": "refused"})

    assert [r.status for r in list_runs(tmp_path)] == [REFUSED]


def test_runs_list_tells_starting_running_finished_and_unreadable_apart(tmp_path: Path) -> None:
    (tmp_path / "starting").mkdir()
    write_running(tmp_path, "running", [round_record(1, {"a": 0.2})], planned=4)
    write_finished(tmp_path, "finished", [round_record(1, {"a": 0.2})])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "report.json").write_text('{"rounds": [')
    (tmp_path / ".hidden").mkdir()

    runs = {r.name: (r.status, r.rounds_done, r.rounds_planned) for r in list_runs(tmp_path)}

    assert runs == {"starting": (STARTING, 0, None), "running": (RUNNING, 1, 4),
                    "finished": (FINISHED, 1, 1), "broken": (UNREADABLE, 0, None)}


def test_only_the_report_model_and_manifest_are_offered_as_files(tmp_path: Path) -> None:
    run = write_finished(tmp_path, "r1", [round_record(1, {"a": 0.2})])
    (run / "attempts.json").write_text("{}")

    view = load_run(tmp_path, "r1")

    assert view is not None and list(view.files) == ["report.json", "model.json"]


def test_a_name_that_leaves_the_runs_folder_is_no_run(tmp_path: Path) -> None:
    write_finished(tmp_path / "runs", "r1", [round_record(1, {"a": 0.2})])

    assert load_run(tmp_path / "runs", "..") is None
    assert load_run(tmp_path / "runs", "../runs") is None


def test_chart_draws_one_line_per_series_and_escapes_labels() -> None:
    svg = line_chart([Series("<a>", [(1, 0.5), (2, 0.75)]), Series("b", [(1, 0.1)])],
                     title="t", y_label="score", y_min=0.0, y_max=1.0)

    assert svg.count("<polyline") == 2
    assert "&lt;a&gt;" in svg and "<a>" not in svg


def test_chart_without_points_says_no_data() -> None:
    assert "no data yet" in line_chart([], title="Global", y_label="score")


def test_the_benchmark_run_reads_as_forty_rounds_of_four_sites(tmp_path: Path) -> None:
    from fedcare.research.web_bench import synthetic_run

    synthetic_run(tmp_path, "bench", rounds=40, sites=4)

    view = load_run(tmp_path, "bench")

    assert view is not None
    assert (view.status, view.rounds_done, len(view.sites)) == (FINISHED, 40, 4)
    assert view.sites[3].epsilon_lifetime.value == 0.05 * 40 + 0.01 * 3
