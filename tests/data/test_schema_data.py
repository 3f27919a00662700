"""Schema, CSV validation, train/test split and preprocessing."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedcare.common.errors import DataValidationError
from fedcare.data.datasets import heart_disease, prepare_site
from fedcare.data.preprocess import Preprocessor
from fedcare.data.schema import Column, TabularSchema
from fedcare.data.split import split_train_test
from fedcare.data.validate import (
    MAX_LISTED_PROBLEMS,
    DataProblem,
    LoadReport,
    SiteTable,
    load_site_csv,
    validate_frame,
)
from tests.data_factories import (
    HEART_HEADER,
    TINY,
    TINY_HEADER,
    csv_text,
    heart_rows,
    tiny_rows,
    tiny_table,
    write_text,
)


def problems_of(path: Path, schema: TabularSchema = TINY, **kwargs: Any) -> list[DataProblem]:
    with pytest.raises(DataValidationError) as caught:
        load_site_csv(path, schema, **kwargs)
    assert caught.value.source == str(path)
    problems = data_problems(caught.value)
    assert all(p.file == str(path) for p in problems)
    return problems


def data_problems(error: DataValidationError) -> list[DataProblem]:
    problems = [p for p in error.problems if isinstance(p, DataProblem)]
    assert len(problems) == len(error.problems)
    return problems


def where(problems: list[DataProblem]) -> list[tuple[int | None, str | None]]:
    return [(p.row, p.column) for p in problems]


# --------------------------------------------------------------------------- schema


def test_encoded_feature_names_one_hot_categoricals_in_schema_order() -> None:
    assert heart_disease.SCHEMA.encoded_feature_names() == (
        "age", "sex", "cp=1", "cp=2", "cp=3", "cp=4", "trestbps", "chol", "fbs",
        "restecg=0", "restecg=1", "restecg=2", "thalach", "exang", "oldpeak",
    )
    assert TINY.feature_names() == ("age", "smoker", "stage")


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: Column(name="x", kind="numeric", minimum=5, maximum=1), "minimum must be <="),
        (lambda: Column(name="x", kind="categorical"), "categories must be a tuple"),
        (lambda: Column(name="x", kind="binary", categories=(0, 1)), "categorical columns only"),
        (lambda: Column(name="x", kind="ordinal"), "kind must be one of"),  # type: ignore[arg-type]
        (lambda: Column(name="a=b", kind="binary"), "name must have no"),
        (lambda: TabularSchema(name="s", features=(Column(name="y", kind="binary"),),
                               label=Column(name="y", kind="binary")), "must be distinct"),
        (lambda: TabularSchema(name="s", features=(Column(name="x", kind="binary"),),
                               label=Column(name="y", kind="numeric", minimum=0, maximum=4)),
         "label_threshold=None needs"),
        (lambda: TabularSchema(name="s", features=(Column(name="x", kind="binary"),),
                               label=Column(name="y", kind="binary"),
                               ignored_columns=("x",)), "ignored_columns must not name"),
    ],
)
def test_malformed_schema_is_rejected(build: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        build()


def test_data_problem_reads_file_row_column_message() -> None:
    problem = DataProblem("cleveland.csv", 17, "chol", "must be a number in [0, 700]; got 'abc'")
    assert str(problem) == (
        "cleveland.csv: row 17: column 'chol': must be a number in [0, 700]; got 'abc'"
    )
    assert str(DataProblem("x.csv", None, None, "file must exist")) == "x.csv: file must exist"


def test_load_report_summary_is_one_line_with_missing_counts() -> None:
    report = LoadReport(source="h.csv", rows_read=10, rows_kept=7, rows_dropped_missing=3,
                        missing_by_column={"chol": 2, "fbs": 1})
    assert report.summary() == (
        "h.csv: read 10 rows, kept 7, dropped 3 with empty cells (empty cells: chol 2, fbs 1)"
    )


# --------------------------------------------------------------------------- CSV: valid


def test_valid_csv_loads_features_as_float64_and_labels_as_int64(tmp_path: Path) -> None:
    rows = tiny_rows({"age": "40.5"}, {"smoker": "0", "stage": "3", "outcome": "1"})
    path = write_text(tmp_path, "site.csv", csv_text(rows))

    table = load_site_csv(path, TINY)

    assert list(table.features.columns) == ["age", "smoker", "stage"]
    assert table.features.dtypes.unique().tolist() == [np.dtype("float64")]
    assert table.features.to_numpy().tolist() == [[40.5, 1.0, 2.0], [50.0, 0.0, 3.0]]
    assert table.labels.dtype == np.int64 and table.labels.tolist() == [0, 1]
    assert table.report == LoadReport(source=str(path), rows_read=2, rows_kept=2,
                                      rows_dropped_missing=0, missing_by_column={})


def test_bom_crlf_and_whitespace_around_cells_are_accepted(tmp_path: Path) -> None:
    text = csv_text([[" 61 ", "1", " 3", "1 "]], [" age", "smoker ", "stage", "outcome"],
                    newline="\r\n")
    path = write_text(tmp_path, "bom.csv", text, bom=True)

    table = load_site_csv(path, TINY)

    assert table.features.to_numpy().tolist() == [[61.0, 1.0, 3.0]]
    assert table.labels.tolist() == [1]


def test_ignored_columns_are_dropped_without_validation(tmp_path: Path) -> None:
    text = csv_text([["free text!", "50", "1", "2", "0"]], ["note", *TINY_HEADER])
    path = write_text(tmp_path, "site.csv", text)

    table = load_site_csv(path, TINY)

    assert list(table.features.columns) == ["age", "smoker", "stage"]


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path: Path) -> None:
    text = "age,smoker,stage,outcome\n50,1,2,0\n\n50,7,2,0\n"
    path = write_text(tmp_path, "site.csv", text)

    problems = problems_of(path)

    assert where(problems) == [(4, "smoker")]


# --------------------------------------------------------------------------- CSV: file level


def test_missing_file_is_reported_not_raised_as_oserror(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "nope.csv")

    assert where(problems) == [(None, None)]
    assert "must exist" in problems[0].message


def test_directory_instead_of_file_is_reported(tmp_path: Path) -> None:
    problems = problems_of(tmp_path)

    assert "must be a file" in problems[0].message


@pytest.mark.parametrize("text", ["", "  \n\n"])
def test_empty_file_is_reported(tmp_path: Path, text: str) -> None:
    problems = problems_of(write_text(tmp_path, "empty.csv", text))

    assert len(problems) == 1 and "got an empty file" in problems[0].message


def test_non_utf8_file_names_the_byte_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("age,smoker,stage,outcome\n50,1,2,0\n5\xe9,1,2,0\n".encode("latin-1"))

    problems = problems_of(path)

    # "age,smoker,stage,outcome\n" is 25 bytes, "50,1,2,0\n" 9 more, then "5": offset 35.
    assert where(problems) == [(3, None)]
    assert "must be UTF-8" in problems[0].message
    assert "byte 0xe9 at byte offset 35" in problems[0].message


def test_utf16_file_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("age,smoker,stage,outcome\n50,1,2,0\n".encode("utf-16"))

    problems = problems_of(path)

    assert "byte offset 0, which is not valid UTF-8 (it looks like UTF-16)" in (
        problems[0].message
    )


def test_quoted_multiline_cell_keeps_later_line_numbers_true(tmp_path: Path) -> None:
    text = 'age,smoker,stage,outcome\n50,1,2,0\n50,1,"2",0\n"5\n0",1,2,0\n50,9,2,0\n'
    problems = problems_of(write_text(tmp_path, "q.csv", text))

    assert where(problems) == [(4, "age"), (6, "smoker")]


def test_long_bad_value_is_clipped_in_the_message(tmp_path: Path) -> None:
    path = write_text(tmp_path, "c.csv", csv_text(tiny_rows({"age": "9" * 100})))

    (problem,) = problems_of(path)

    assert problem.message == f"must be a number in [0, 120]; got '{'9' * 37}...'"


def test_header_only_file_has_no_data_rows(tmp_path: Path) -> None:
    problems = problems_of(write_text(tmp_path, "h.csv", csv_text([])))

    assert [p.message for p in problems] == [
        "file must hold at least one data row after the header; got none"
    ]


def test_file_without_header_is_reported_once(tmp_path: Path) -> None:
    problems = problems_of(write_text(tmp_path, "h.csv", "50,1,2,0\n60,0,1,1\n"))

    assert where(problems) == [(1, None)]
    assert "must be a header naming the columns (age, smoker, stage, outcome)" in (
        problems[0].message
    )


def test_header_problems_name_missing_duplicate_and_unknown_columns(tmp_path: Path) -> None:
    text = csv_text([["50", "50", "2", "x", "0"]], ["age", "age", "stage", "Smoker_", "outcme"])
    problems = problems_of(write_text(tmp_path, "h.csv", text))

    messages = {p.column: p.message for p in problems}
    assert "got 2 times (header columns 1, 2)" in messages["age"]
    assert "got an unknown column" in messages["Smoker_"]
    assert "did you mean 'outcome'?" in messages["outcme"]
    assert messages[None] == "header must name every tiny column; missing 'smoker', 'outcome'"
    assert len(problems) == 4  # stage is valid; no cell of a broken column is judged


def test_empty_header_name_is_reported(tmp_path: Path) -> None:
    text = csv_text([["50", "1", "2", "0", ""]], [*TINY_HEADER, ""])
    problems = problems_of(write_text(tmp_path, "h.csv", text))

    assert [p.message for p in problems] == [
        "header column 5 must have a name; got an empty header cell"
    ]


def test_every_ragged_row_is_reported_with_its_line(tmp_path: Path) -> None:
    text = "age,smoker,stage,outcome\n50,1,2,0\n50,1,2\n50,1,2,0,9\n50,1,2,0\n50\n"
    problems = problems_of(write_text(tmp_path, "r.csv", text))

    assert where(problems) == [(3, None), (4, None), (6, None)]
    assert problems[0].message == "row must have 4 cells (one per header column); got 3"
    assert problems[1].message.endswith("got 5")


# --------------------------------------------------------------------------- CSV: cells


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ({"age": "abc"}, "must be a number in [0, 120]; got 'abc'"),
        ({"age": "121"}, "must be a number in [0, 120]; got '121'"),
        ({"age": "-0.5"}, "must be a number in [0, 120]; got '-0.5'"),
        ({"age": "inf"}, "must be a number in [0, 120]; got 'inf'"),
        ({"age": "?"}, "must be a number in [0, 120]; got '?' (leave the cell empty if the "
                       "value was not recorded)"),
        ({"stage": "4"}, "must be one of 1, 2, 3; got '4'"),
        ({"stage": "two"}, "must be one of 1, 2, 3; got 'two'"),
        ({"smoker": "2"}, "must be 0 or 1; got '2'"),
        ({"smoker": "yes"}, "must be 0 or 1; got 'yes'"),
        ({"smoker": ""}, "must be 0 or 1 (this column may not be empty); got an empty cell"),
        ({"outcome": ""}, "must be 0 or 1 (every row needs a label); got an empty cell"),
        ({"outcome": "x"}, "must be 0 or 1; got 'x'"),
        ({"outcome": "2"}, "must be 0 or 1; got '2'"),
    ],
)
def test_bad_cell_is_reported_with_line_column_and_value(
    tmp_path: Path, cell: dict[str, str], message: str
) -> None:
    path = write_text(tmp_path, "c.csv", csv_text(tiny_rows({}, {}, cell)))

    problems = problems_of(path)

    (column,) = cell
    assert [str(p) for p in problems] == [f"{path}: row 4: column '{column}': {message}"]


@pytest.mark.parametrize(
    ("num", "message"),
    [
        ("5", "must be a number in [0, 4]; got '5'"),
        ("-1", "must be a number in [0, 4]; got '-1'"),
        ("", "must be a number in [0, 4] (every row needs a label); got an empty cell"),
    ],
)
def test_thresholded_label_must_be_within_its_range(
    tmp_path: Path, num: str, message: str
) -> None:
    row = {**heart_rows(1, seed=0)[0], "num": num}
    path = write_text(tmp_path, "h.csv", csv_text([row], HEART_HEADER))

    problems = problems_of(path, heart_disease.SCHEMA)

    assert where(problems) == [(2, "num")]
    assert problems[0].message == message


def test_thresholded_label_becomes_raw_greater_than_threshold(tmp_path: Path) -> None:
    rows = [{**r, "num": n} for r, n in zip(heart_rows(4, seed=1), "0123", strict=True)]
    path = write_text(tmp_path, "h.csv", csv_text(rows, HEART_HEADER))

    assert load_site_csv(path, heart_disease.SCHEMA).labels.tolist() == [0, 1, 1, 1]


def test_all_problems_in_one_file_are_reported_in_line_then_column_order(
    tmp_path: Path,
) -> None:
    text = csv_text(
        tiny_rows({"stage": "9", "age": "old"}, {}, {"outcome": ""}, {"smoker": "3"}),
        ["age", "smoker", "stage", "outcome", "extra"],
    )
    problems = problems_of(write_text(tmp_path, "m.csv", text))

    assert where(problems) == [
        (None, "extra"), (2, "age"), (2, "stage"), (4, "outcome"), (5, "smoker"),
    ]


def test_problem_list_is_capped_but_all_are_counted(tmp_path: Path) -> None:
    path = write_text(tmp_path, "many.csv", csv_text(tiny_rows(*[{"smoker": "5"}] * 250)))

    problems = problems_of(path)

    assert len(problems) == MAX_LISTED_PROBLEMS + 1
    assert problems[0].row == 2 and problems[MAX_LISTED_PROBLEMS - 1].row == 201
    assert problems[-1].message == "... and 50 more problem(s) not listed (250 in all)"


# --------------------------------------------------------------------------- missing cells


def missing_file(tmp_path: Path) -> Path:
    rows = tiny_rows({}, {"age": ""}, {"age": "", "stage": " "}, {"stage": ""}, {"age": "70"})
    return write_text(tmp_path, "m.csv", csv_text(rows))


def test_missing_drop_drops_and_counts_rows_with_empty_optional_cells(tmp_path: Path) -> None:
    table = load_site_csv(missing_file(tmp_path), TINY, missing="drop")

    assert table.features["age"].tolist() == [50.0, 70.0]
    assert (table.report.rows_read, table.report.rows_kept) == (5, 2)
    assert table.report.rows_dropped_missing == 3
    assert table.report.missing_by_column == {"age": 2, "stage": 2}


def test_missing_keep_keeps_nan_for_imputation(tmp_path: Path) -> None:
    table = load_site_csv(missing_file(tmp_path), TINY, missing="keep")

    assert len(table) == 5 and table.report.rows_dropped_missing == 0
    assert table.features["age"].isna().tolist() == [False, True, True, False, False]
    assert table.report.missing_by_column == {"age": 2, "stage": 2}


def test_file_whose_every_row_has_an_empty_cell_is_a_problem_under_drop(tmp_path: Path) -> None:
    path = write_text(tmp_path, "m.csv", csv_text(tiny_rows({"age": ""}, {"stage": ""})))

    problems = problems_of(path)

    assert "must keep at least one row after dropping rows with empty cells" in (
        problems[0].message
    )


def test_unknown_missing_policy_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing must be one of drop, keep; got 'impute'"):
        load_site_csv(tmp_path / "x.csv", TINY, missing="impute")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- validate_frame


def test_validate_frame_checks_numeric_frames_too() -> None:
    frame = pd.DataFrame({"age": [50.0, np.inf, np.nan], "smoker": [1, 0, 1],
                          "stage": [1, 2, 3], "outcome": [0, 1, 1]})

    with pytest.raises(DataValidationError) as caught:
        validate_frame(frame, TINY, source="frame")

    assert [str(p) for p in caught.value.problems] == [
        "frame: row 3: column 'age': must be a number in [0, 120]; got 'inf'"
    ]


def test_validate_frame_uses_given_line_numbers() -> None:
    frame = pd.DataFrame({"age": ["1"], "smoker": ["9"], "stage": ["1"], "outcome": ["0"]})

    with pytest.raises(DataValidationError) as caught:
        validate_frame(frame, TINY, source="f", line_numbers=[41])

    assert where(data_problems(caught.value)) == [(41, "smoker")]


def test_large_file_validates_quickly(tmp_path: Path) -> None:
    rows = heart_rows(200, seed=3) * 500  # 100,000 rows
    path = write_text(tmp_path, "big.csv", csv_text(rows, HEART_HEADER))

    start = time.perf_counter()
    table = load_site_csv(path, heart_disease.SCHEMA)
    elapsed = time.perf_counter() - start

    assert len(table) == 100_000
    assert elapsed < 5.0, f"100k rows took {elapsed:.2f} s"


# --------------------------------------------------------------------------- split


def balanced_table(n: int) -> SiteTable:
    return tiny_table(age=np.arange(n, dtype=float), smoker=[i % 2 for i in range(n)],
                      stage=[1 + i % 3 for i in range(n)], labels=[i % 2 for i in range(n)])


def test_test_size_follows_ceil_of_fraction_and_parts_are_disjoint() -> None:
    table = balanced_table(10)

    split = split_train_test(table, test_fraction=0.25, seed=0)

    assert len(split.y_test) == 3 and len(split.y_train) == 7  # ceil(2.5) = 3
    ages = sorted([*split.x_train["age"], *split.x_test["age"]])
    assert ages == list(range(10))


def test_split_is_stratified_when_every_class_has_two_rows() -> None:
    split = split_train_test(balanced_table(20), test_fraction=0.5, seed=7)

    assert split.y_test.sum() == 5 and split.y_train.sum() == 5


def test_split_falls_back_to_unstratified_when_a_class_has_one_row(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = tiny_table(age=range(10), smoker=[0] * 10, stage=[1] * 10, labels=[1] * 9 + [0])

    with caplog.at_level(logging.INFO, logger="fedcare.data.split"):
        split = split_train_test(table, test_fraction=0.3, seed=0)

    assert len(split.y_test) == 3
    assert "unstratified split of 10 rows" in caplog.text


def test_split_is_fixed_by_its_seed() -> None:
    table = balanced_table(40)

    first = split_train_test(table, test_fraction=0.3, seed=1)
    again = split_train_test(table, test_fraction=0.3, seed=1)
    other = split_train_test(table, test_fraction=0.3, seed=2)

    assert first.x_test.index.tolist() == again.x_test.index.tolist()
    assert first.x_test.index.tolist() != other.x_test.index.tolist()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan"), 0.95])
def test_split_rejects_fractions_that_leave_a_part_empty(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        split_train_test(balanced_table(10), test_fraction=fraction, seed=0)


# --------------------------------------------------------------------------- Preprocessor


def tiny_frame(age: list[float], smoker: list[float], stage: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"age": age, "smoker": smoker, "stage": stage}, dtype=np.float64)


NAN = float("nan")


def test_preprocessor_imputes_standardizes_and_one_hots_by_hand() -> None:
    train = tiny_frame([10, 20, 30, NAN], [1, 1, 0, NAN], [2, 2, 3, NAN])
    # age: median 20 fills the gap -> [10, 20, 30, 20]: mean 20, std sqrt(50).
    # smoker: most frequent 1. stage: most frequent 2 -> one-hot (0, 1, 0).

    out = Preprocessor(TINY).fit(train).transform(tiny_frame([30, NAN], [0, NAN], [1, NAN]))

    assert out.dtype == np.float32 and out.shape == (2, 5)
    expected = np.array([[10 / math.sqrt(50), 0, 1, 0, 0], [0, 1, 0, 1, 0]])
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_preprocessor_statistics_come_from_train_rows_only() -> None:
    base = balanced_table(30)
    split = split_train_test(base, test_fraction=0.3, seed=5)
    altered = base.features.copy()
    altered.loc[split.x_test.index, "age"] = 119.0  # change only the test rows
    changed = SiteTable(features=altered, labels=base.labels, report=base.report)

    a = prepare_site("a", base, schema=TINY, split_seed=5, test_fraction=0.3)
    b = prepare_site("b", changed, schema=TINY, split_seed=5, test_fraction=0.3)

    assert a.preprocessor.to_dict() == b.preprocessor.to_dict()
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_test, b.x_test)


def test_one_hot_width_is_fixed_even_when_a_site_lacks_a_category() -> None:
    site_a = tiny_frame([1, 2], [0, 1], [1, 2])
    site_b = tiny_frame([3, 4], [1, 1], [3, 3])

    out_a = Preprocessor(TINY).fit(site_a).transform(site_a)
    out_b = Preprocessor(TINY).fit(site_b).transform(site_b)

    assert out_a.shape == out_b.shape == (2, 5)
    assert out_a[:, 4].tolist() == [0, 0]  # stage=3 never seen at site a
    assert out_b[:, 2:5].tolist() == [[0, 0, 1], [0, 0, 1]]


def test_constant_column_keeps_scale_one_and_stays_finite() -> None:
    train = tiny_frame([0.1, 0.1, 0.1], [0, 0, 0], [1, 1, 1])

    prep = Preprocessor(TINY).fit(train)
    out = prep.transform(tiny_frame([0.1, 1.1], [0, 1], [1, 1]))

    column = prep.to_dict()["columns"][0]
    assert column["scale"] == 1.0
    np.testing.assert_allclose(out[:, 0], [0.0, 1.0], atol=1e-6)


def test_to_dict_survives_json_and_rebuilds_the_same_transform() -> None:
    train = tiny_frame([10, 20, 35, NAN], [1, 0, 0, 1], [1, 3, 3, NAN])
    prep = Preprocessor(TINY).fit(train)

    record = json.loads(json.dumps(prep.to_dict()))
    rebuilt = Preprocessor.from_dict(TINY, record)

    assert record["schema"] == "tiny" and record["version"] == 1
    np.testing.assert_array_equal(rebuilt.transform(train), prep.transform(train))


def edited(record: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(record))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        (("schema",), "heart-disease", "schema must be 'tiny'"),
        (("version",), 2, "version must be 1"),
        (("format",), "pickle", "format must be"),
        (("columns", 0, "kind"), "binary", "kind must be 'numeric'"),
        (("columns", 0, "scale"), 0.0, "scale must be > 0"),
        (("columns", 0, "center"), float("nan"), "center must be a finite number"),
        (("columns", 2, "categories"), [1.0, 2.0], "categories must be [1.0, 2.0, 3.0]"),
        (("columns", 1, "fill"), 0.5, "fill must be 0 or 1"),
        (("columns",), [], "columns must be a list of 3 entries"),
    ],
)
def test_from_dict_rejects_records_that_do_not_match(
    path: tuple[Any, ...], value: Any, fragment: str
) -> None:
    record = Preprocessor(TINY).fit(tiny_frame([1, 2], [0, 1], [1, 2])).to_dict()

    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        Preprocessor.from_dict(TINY, edited(record, path, value))


def test_transform_before_fit_says_to_fit_first() -> None:
    with pytest.raises(RuntimeError, match="must be fitted first"):
        Preprocessor(TINY).transform(tiny_frame([1], [0], [1]))


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        (pd.DataFrame({"age": [1.0]}), "missing \\['smoker', 'stage'\\]"),
        (tiny_frame([1], [0], [7]), "column 'stage' must be one of 1, 2, 3; got 7"),
        (tiny_frame([1], [0.5], [1]), "column 'smoker' must be 0 or 1; got 0.5"),
        (tiny_frame([np.inf], [0], [1]), "finite"),
    ],
)
def test_transform_rejects_frames_outside_the_schema(frame: pd.DataFrame, fragment: str) -> None:
    prep = Preprocessor(TINY).fit(tiny_frame([1, 2], [0, 1], [1, 2]))

    with pytest.raises(ValueError, match=fragment):
        prep.transform(frame)


def test_fit_refuses_a_column_with_no_values_to_impute_from() -> None:
    with pytest.raises(ValueError, match="column 'age' must have at least one value"):
        Preprocessor(TINY).fit(tiny_frame([NAN, NAN], [0, 1], [1, 2]))
