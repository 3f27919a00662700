"""Issue 16 item 1 and the fast reader: only regular files, inside their folder, capped while
read; the vectorised path gives exactly what the exact reader gives."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from fedcare.common.errors import DataValidationError
from fedcare.data import validate as data_mod
from fedcare.data.datasets.heart_disease import SCHEMA as HEART
from fedcare.data.safe_read import UnreadableFile, read_regular_file, read_secret_file
from fedcare.data.validate import load_site_csv
from tests.data_factories import HEART_HEADER, csv_text, heart_rows, write_text

SECRET_LINE = "root-secret-line-not-to-echo"


def only_problem(path: Path, **kwargs: object) -> str:
    with pytest.raises(DataValidationError) as err:
        load_site_csv(path, HEART, **kwargs)  # type: ignore[arg-type]
    assert err.value.total == 1
    return str(err.value.problems[0])


def test_a_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "cleveland.csv"
    os.mkfifo(fifo)
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(only_problem(fifo)), daemon=True)

    reader.start()
    reader.join(timeout=10)

    assert not reader.is_alive(), "reading a FIFO must not block"
    assert found == [f"{fifo}: path must be a file; got a named pipe (FIFO)"]


def test_dev_zero_is_refused_before_any_byte_is_read() -> None:
    assert only_problem(Path("/dev/zero")) == (
        "/dev/zero: path must be a file; got a character device")


def test_a_symlink_out_of_the_folder_is_refused_and_its_content_never_echoed(
        tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = write_text(outside, "passwd", f"{SECRET_LINE}\n")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "cleveland.csv").symlink_to(target)

    problem = only_problem(folder / "cleveland.csv")

    assert "symbolic link to a file elsewhere" in problem
    assert "--allow-symlinks" in problem
    assert SECRET_LINE not in problem


def test_allow_symlinks_reads_a_link_out_of_the_folder(tmp_path: Path) -> None:
    target = write_text(tmp_path, "real.csv", csv_text(heart_rows(3, seed=0), HEART_HEADER))
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "cleveland.csv").symlink_to(target)

    assert len(load_site_csv(folder / "cleveland.csv", HEART, allow_symlinks=True)) == 3


def test_a_symlink_inside_the_folder_is_read(tmp_path: Path) -> None:
    write_text(tmp_path, "v2.csv", csv_text(heart_rows(4, seed=0), HEART_HEADER))
    (tmp_path / "cleveland.csv").symlink_to(tmp_path / "v2.csv")

    assert len(load_site_csv(tmp_path / "cleveland.csv", HEART)) == 4


def test_the_size_cap_holds_while_reading_when_stat_says_zero() -> None:
    # /proc files report size 0 and hold more: the cap must stop the read itself.
    with pytest.raises(UnreadableFile) as err:
        read_regular_file("/proc/self/status", max_bytes=10)

    assert "reading stopped at 11 bytes" in err.value.rule


def test_a_file_over_the_cap_is_refused_by_its_size(tmp_path: Path) -> None:
    path = write_text(tmp_path, "big.csv", "x" * 101)

    with pytest.raises(UnreadableFile) as err:
        read_regular_file(path, max_bytes=100)

    assert err.value.rule == "file must be at most 100 bytes; got 101 bytes"


def test_a_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    token = write_text(tmp_path, "token", "s3cret-token-value\n")
    token.chmod(0o644)

    with pytest.raises(UnreadableFile) as err:
        read_secret_file(token)

    assert err.value.rule == ("token file must be readable by its owner only (chmod 600); "
                              "got mode 0644")


def test_a_private_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    token = write_text(tmp_path, "token", "s3cret-token-value\n")
    token.chmod(0o600)

    assert read_secret_file(token) == "s3cret-token-value"


# ----------------------------------------------------------------------- fast path


def both_readers(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    fast = load_site_csv(path, HEART, missing="keep")
    with monkeypatch.context() as patch:
        patch.setattr(data_mod, "_fast_frame", lambda *args: None)
        exact = load_site_csv(path, HEART, missing="keep")
    return fast, exact


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_the_fast_reader_gives_the_exact_readers_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, newline: str) -> None:
    rows = heart_rows(50, seed=3)
    rows[4]["chol"] = ""  # an empty cell stays missing
    path = write_text(tmp_path, "site.csv", csv_text(rows, HEART_HEADER, newline=newline))

    fast, exact = both_readers(path, monkeypatch)

    assert fast.features.equals(exact.features)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(fast.labels, exact.labels)  # type: ignore[attr-defined]
    assert fast.report == exact.report  # type: ignore[attr-defined]


def test_the_fast_reader_is_used_for_a_plain_numeric_file(tmp_path: Path) -> None:
    path = write_text(tmp_path, "site.csv", csv_text(heart_rows(5, seed=1), HEART_HEADER))

    fast = data_mod._fast_frame(path.read_bytes(), HEART, data_mod._ProblemLog("x"), "hint")

    assert fast is not None
    frame, header, lines, rows = fast
    assert (list(header), rows, lines.tolist()) == (list(HEART_HEADER), 5, [2, 3, 4, 5, 6])
    assert str(frame["age"].dtype) == "float64"


def test_blank_lines_keep_the_editor_line_numbers(tmp_path: Path) -> None:
    rows = heart_rows(3, seed=2)
    rows[1]["age"] = "130"  # out of range, on editor line 4 once a blank line is in
    text = csv_text(rows, HEART_HEADER).replace("\n", "\n\n", 1)
    path = write_text(tmp_path, "site.csv", text)

    problem = only_problem(path)

    assert problem == (f"{path}: row 4: column 'age': must be a number in [0, 120]; got '130'")


@pytest.mark.parametrize("cell", ["True", "nan", "inf", "1.2.3", "?"])
def test_cells_the_fast_reader_cannot_take_are_still_problems(tmp_path: Path, cell: str) -> None:
    rows = heart_rows(3, seed=2)
    rows[2]["trestbps"] = cell
    path = write_text(tmp_path, "site.csv", csv_text(rows, HEART_HEADER))

    problem = only_problem(path)

    assert problem.startswith(f"{path}: row 4: column 'trestbps': must be a number in [0, 300]")
