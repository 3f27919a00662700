"""Issue 16 items 2, 3, 4 and 7: refused runs, audits of failed or tiny sites, the run's
own site count, and a model tied to the runs a site took part in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError, DataValidationError, ModelMismatch
from fedcare.research.audit import SITES_KEY, _partition_id, audit_run, run_sites
from fedcare.server.federation import mark_refused
from fedcare.server.report import format_site_table
from fedcare.site.pairing import check_model_run, site_runs
from tests.data_factories import write_heart_dir


def refused_report() -> dict[str, Any]:
    failure = {"site": "cleveland", "phase": "train", "code": 0,
               "reason": "refused: epsilon budget exceeded"}
    return {"config": RunConfig(dp_mode="noise-multiplier").to_run_config(),
            "sites": {"cleveland": {"test-rows": 76, "failures": 2, "accuracy": 0.5}},
            "rounds": [{"failures": [failure]}, {"failures": [failure]}]}


def test_a_run_where_no_site_trained_is_marked_refused_with_reasons() -> None:
    report = refused_report()

    mark_refused(report)

    assert report["status"] == "refused"
    assert report["refusals"] == {"cleveland": ["refused: epsilon budget exceeded"]}
    assert "no model was saved" in report["refusal-reason"]


def test_the_site_table_of_a_refused_run_says_refused_not_no_dp() -> None:
    report = refused_report()
    mark_refused(report)

    row = format_site_table(report).splitlines()[2]

    assert "refused" in row and "no DP" not in row and "0.500" not in row


def test_audit_takes_the_sites_from_the_run_and_refuses_another_number() -> None:
    report = {"run": "r", SITES_KEY: 4, "config": {"dataset": "breast-cancer"}}

    assert run_sites(report, None) == 4
    with pytest.raises(ConfigError) as err:
        run_sites(report, 8)

    assert "sites must be the run's own number of sites (4, from its report.json)" in str(
        err.value)


def test_a_heart_run_without_a_recorded_count_has_its_four_hospitals() -> None:
    report = {"run": "r", "config": {"dataset": "heart-disease", "partitioning": "natural"}}

    assert run_sites(report, None) == 4


@pytest.mark.parametrize(("site", "expected"), [
    ("site-3", 3), ("node-123456", None), ("site-9", None), ("site-x", None)])
def test_only_names_of_this_runs_partitions_map_to_a_partition(site: str,
                                                               expected: int | None) -> None:
    assert _partition_id(RunConfig(), site, 4) == expected


def test_auditing_a_refused_run_is_an_error_not_a_crash(tmp_path: Path) -> None:
    report = refused_report()
    mark_refused(report)
    report[SITES_KEY] = 4
    (tmp_path / "report.json").write_text(json.dumps(report))

    with pytest.raises(ConfigError) as err:
        audit_run(tmp_path)

    assert "got a refused run" in str(err.value)


def test_audit_skips_a_failed_site_and_a_site_too_small_to_audit(tmp_path: Path) -> None:
    from fedcare.common.model import build_model
    from fedcare.data.datasets import schema_for

    schema = schema_for("breast-cancer")
    build_model(input_dim=len(schema.encoded_feature_names()), hidden_units=(4,),
                seed=0).save(tmp_path / "model.keras")
    # 569 rows over 200 sites: site-0 keeps 2 train / 1 held-out row (too few to attack).
    config = RunConfig(hidden_units="4").to_run_config()
    report = {"run": "r", SITES_KEY: 200, "config": config, "status": "completed",
              "sites": {"site-0": {"train-rows": 2, "epsilon": 1.0},
                        "node-77": {"failures": 1}}}
    (tmp_path / "report.json").write_text(json.dumps(report))

    audited = audit_run(tmp_path)["membership-audit"]

    assert audited["node-77"]["skipped"] == "it did not train in this run (failed or refused)"
    assert "at least 2" in audited["site-0"]["skipped"]


def test_simulation_preflight_names_a_missing_site_file(tmp_path: Path) -> None:
    from fedcare.data.site_check import preflight_simulation

    write_heart_dir(tmp_path, {"cleveland": 30, "switzerland": 20, "va-long-beach": 25})
    config = RunConfig(dataset="heart-disease", partitioning="natural", data_dir=str(tmp_path))

    with pytest.raises(DataValidationError) as err:
        preflight_simulation(config, 4)

    assert str(err.value.problems[0]) == (f"{tmp_path / 'hungary.csv'}: file must exist; got "
                                          "no file at this path")


def test_simulation_preflight_logs_each_sites_quality_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fedcare.data.site_check import preflight_simulation

    write_heart_dir(tmp_path, {"cleveland": 60, "hungary": 60, "switzerland": 20,
                               "va-long-beach": 60})
    config = RunConfig(dataset="heart-disease", partitioning="natural", data_dir=str(tmp_path),
                       dp_mode="off")

    with caplog.at_level("INFO", logger="fedcare.data.site_check"):
        checks = preflight_simulation(config, 4)

    assert [c.site for c in checks] == ["cleveland", "hungary", "switzerland", "va-long-beach"]
    assert [r.message.count("data quality of") for r in caplog.records] == [1, 1, 1, 1]
    assert [r.levelname for r in caplog.records].count("WARNING") == 1  # switzerland: 20 rows


# ----------------------------------------------------------------------- item 7


def write_audit_log(site_dir: Path, *run_ids: str) -> None:
    site_dir.mkdir(parents=True, exist_ok=True)
    (site_dir / "audit-log.jsonl").write_text(
        "".join(json.dumps({"run_id": r, "server_round": 1}) + "\n" for r in run_ids))


def test_site_runs_follow_the_audit_log_attempts_folded_into_their_run(tmp_path: Path) -> None:
    write_audit_log(tmp_path, "A", "A", "B", "B/attempt-1")

    assert site_runs(tmp_path) == ["A", "B"]


def test_a_model_from_a_run_the_site_never_joined_is_refused(tmp_path: Path) -> None:
    write_audit_log(tmp_path, "A", "B")

    with pytest.raises(ModelMismatch) as err:
        check_model_run({"run": "C"}, tmp_path / "model.json", tmp_path)

    assert "model run must be a run this site took part in" in str(err.value)
    assert "got run 'C'" in str(err.value)


def test_a_model_from_an_earlier_run_of_the_site_is_accepted_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_audit_log(tmp_path, "A", "B")

    check_model_run({"run": "A"}, tmp_path / "model.json", tmp_path)

    assert "is not this site's latest run 'B'" in caplog.text
