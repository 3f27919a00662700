"""Broken hospital files: every one reported with file/row/column, never a traceback."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fedcare.common.errors import DataValidationError
from fedcare.data.datasets import schema_for
from fedcare.data.validate import load_site_csv
from fedcare.research.run import PROJECT_ROOT
from tests.csv_fuzz import broken_heart_files, huge_file
from tests.data_factories import HEART_HEADER, csv_text, heart_rows

SCHEMA = schema_for("heart-disease")


def _findings(path: Path) -> DataValidationError:
    with pytest.raises(DataValidationError) as caught:
        load_site_csv(path, SCHEMA)
    return caught.value


def test_the_valid_starting_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.csv"
    path.write_text(csv_text(heart_rows(20, seed=7), HEART_HEADER))

    assert len(load_site_csv(path, SCHEMA).labels) == 20


def test_every_broken_file_is_reported_with_file_row_and_column(tmp_path: Path) -> None:
    cases = broken_heart_files(tmp_path)
    unreported, unlocated = [], []

    for case in cases:
        try:
            load_site_csv(case.path, SCHEMA)
        except DataValidationError as err:
            assert err.source == str(case.path)
            assert err.problems and all(p.file == str(case.path) for p in err.problems)
            if case.names_row and not any(p.row for p in err.problems):
                unlocated.append((case.name, "row", [str(p) for p in err.problems]))
            if case.names_column and not any(p.column for p in err.problems):
                unlocated.append((case.name, "column", [str(p) for p in err.problems]))
        else:
            unreported.append(case.name)  # loaded: it was let through (silently coerced)

    assert len(cases) >= 35
    assert unreported == []
    assert unlocated == []


def test_a_file_over_the_size_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = huge_file(tmp_path, target_bytes=600_000)

    with pytest.raises(DataValidationError, match="must be at most 500000 bytes"):
        load_site_csv(path, SCHEMA, max_bytes=500_000)
    assert len(load_site_csv(path, SCHEMA, max_bytes=10**7).labels) > 5_000


def test_blank_lines_are_not_rows_and_change_nothing(tmp_path: Path) -> None:
    text = csv_text(heart_rows(20, seed=7), HEART_HEADER)
    path = tmp_path / "blank-lines.csv"
    path.write_text(text.replace("\n", "\n\n", 5))

    table = load_site_csv(path, SCHEMA)

    assert len(table.labels) == 20


def test_random_byte_damage_is_reported_or_harmless_never_a_crash(tmp_path: Path) -> None:
    # 300 seeded mutations (flip, insert, delete bytes; swap delimiters): each must load or
    # raise DataValidationError, nothing else.
    base = csv_text(heart_rows(20, seed=7), HEART_HEADER).encode()
    rng = random.Random(0)
    crashes, reported = [], 0
    for i in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data))
            op = rng.choice(("flip", "insert", "delete", "delimiter"))
            if op == "flip":
                data[at] = rng.randrange(256)
            elif op == "insert":
                data[at:at] = bytes([rng.choice(b'",;\n\r\x00\xff\xfe"abc9.-')])
            elif op == "delete":
                del data[at]
            else:
                data = data.replace(b",", rng.choice([b";", b"\t", b"|"]), rng.randint(1, 40))
        path = tmp_path / f"mutant-{i}.csv"
        path.write_bytes(bytes(data))
        try:
            load_site_csv(path, SCHEMA)
        except DataValidationError:
            reported += 1
        except Exception as err:  # the point: none of these happens
            crashes.append((i, repr(err)))
    assert crashes == []
    assert reported > 200  # most damage is detectable; the rest left a valid file


def test_a_wrong_delimiter_is_named(tmp_path: Path) -> None:
    case = next(c for c in broken_heart_files(tmp_path) if c.name == "semicolon-delimiter")

    assert "must be comma-separated; got one cell holding ';'" in str(_findings(case.path))


@pytest.mark.parametrize("name", ["semicolon-delimiter", "latin1-byte", "duplicate-column"])
def test_check_csv_reports_broken_files_without_a_traceback(tmp_path: Path, name: str) -> None:
    case = next(c for c in broken_heart_files(tmp_path) if c.name == name)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}

    done = subprocess.run([sys.executable, "-m", "fedcare.cli", "check-csv", str(case.path)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)

    assert done.returncode == 1, done.stdout + done.stderr
    assert str(case.path) in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
