"""A generator of broken hospital files: each case is one way a real CSV goes wrong.

``broken_heart_files(directory)`` writes the corpus and returns a :class:`Case` per file,
with what must be reported: whether the finding names a row, a column. Each case starts
from the same valid heart-disease file (``tests.data_factories.heart_rows``) and breaks
one thing, so a case that loads means the reader let that one thing through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.data_factories import HEART_HEADER, csv_text, heart_rows


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    names_row: bool  # the finding must give a line number
    names_column: bool  # the finding must name a column


def _valid_rows() -> list[dict[str, str]]:
    return heart_rows(20, seed=7)


def _text(rows: list[dict[str, str]] | None = None,
          header: tuple[str, ...] = HEART_HEADER, sep: str = ",") -> str:
    text = csv_text(rows if rows is not None else _valid_rows(), header)
    return text.replace(",", sep) if sep != "," else text


def _cell(column: str, value: str, row: int = 5) -> str:
    rows = _valid_rows()
    rows[row][column] = value
    return _text(rows)


def _renamed(old: str, new: str) -> str:
    header = tuple(new if h == old else h for h in HEART_HEADER)
    rows = [{(new if k == old else k): v for k, v in r.items()} for r in _valid_rows()]
    return _text(rows, header)


def _without(column: str) -> str:
    header = tuple(h for h in HEART_HEADER if h != column)
    return _text(header=header)


def _duplicated(column: str) -> str:
    lines = _text().splitlines()
    i = HEART_HEADER.index(column)
    out = []
    for line in lines:
        cells = line.split(",")
        out.append(",".join([*cells, cells[i]]))
    return "\n".join(out) + "\n"


def _lines(edit: Callable[[list[str]], list[str]]) -> str:
    return "\n".join(edit(_text().splitlines())) + "\n"


# name -> (file bytes, names_row, names_column)
def _corpus() -> dict[str, tuple[bytes, bool, bool]]:
    u = str.encode
    valid = _text()
    return {
        "semicolon-delimiter": (u(_text(sep=";")), False, False),
        "tab-delimiter": (u(_text(sep="\t")), False, False),
        "missing-column": (u(_without("chol")), False, False),
        "missing-label-column": (u(_without("num")), False, False),
        "renamed-column": (u(_renamed("chol", "cholesterol")), False, True),
        "case-changed-column": (u(_renamed("age", "Age")), False, True),
        "duplicate-column": (u(_duplicated("chol")), False, True),
        "text-in-numeric": (u(_cell("age", "fifty")), True, True),
        "comma-decimal": (u(_cell("oldpeak", '"1,5"')), True, True),
        "unit-in-cell": (u(_cell("chol", "250 mg/dl")), True, True),
        "excel-error": (u(_cell("trestbps", "#VALUE!")), True, True),
        "out-of-range-high": (u(_cell("age", "500")), True, True),
        "out-of-range-negative": (u(_cell("trestbps", "-3")), True, True),
        "infinite-value": (u(_cell("chol", "inf")), True, True),
        "nan-literal": (u(_cell("thalach", "NaN")), True, True),
        "overflowing-number": (u(_cell("oldpeak", "1e309")), True, True),
        "binary-not-0-1": (u(_cell("sex", "2")), True, True),
        "binary-as-word": (u(_cell("sex", "male")), True, True),
        "category-not-in-set": (u(_cell("cp", "9")), True, True),
        "fractional-category": (u(_cell("cp", "2.5")), True, True),
        "label-out-of-range": (u(_cell("num", "7")), True, True),
        "label-missing": (u(_cell("num", "")), True, True),
        "missing-token-in-required": (u(_cell("sex", "?")), True, True),
        "blank-cells-row": (u(_lines(lambda ls: [*ls[:4], "," * 13, *ls[4:]])), True, True),
        "bom-inside-a-cell": (u(_cell("age", "\ufeff63")), True, True),
        "utf16-with-bom": (valid.encode("utf-16"), True, False),
        "latin1-byte": (u(valid).replace(b"\n", b"\n\xe9", 1), True, False),
        "nul-byte": (u(valid).replace(b"\n", b"\n\x00", 3), True, False),
        "unterminated-quote": (u(_lines(lambda ls: [*ls[:3], '"' + ls[3], *ls[4:]])), True,
                               False),
        "extra-cell": (u(_lines(lambda ls: [*ls[:6], ls[6] + ",1", *ls[7:]])), True, False),
        "short-row": (u(_lines(lambda ls: [*ls[:6], ls[6].rsplit(",", 2)[0], *ls[7:]])), True,
                      False),
        "no-header": (u(_lines(lambda ls: ls[1:])), True, False),
        "header-only": (u(_lines(lambda ls: ls[:1])), False, False),
        "zero-bytes": (b"", False, False),
        "whitespace-only": (b"  \n\n \t\n", False, False),
        "every-row-has-a-gap": (u(_text([{**r, "chol": ""} for r in _valid_rows()])),
                                False, False),
        "one-class-label-text": (u(_text([{**r, "num": "yes"} for r in _valid_rows()])),
                                 True, True),
    }


def broken_heart_files(directory: Path) -> list[Case]:
    directory.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, (data, names_row, names_column) in _corpus().items():
        path = directory / f"{name}.csv"
        path.write_bytes(data)
        cases.append(Case(name=name, path=path, names_row=names_row, names_column=names_column))
    return cases


def huge_file(directory: Path, *, target_bytes: int) -> Path:
    """A valid-looking file of at least ``target_bytes`` bytes (rows repeated)."""
    path = directory / "huge.csv"
    header, *rows = _text().splitlines()
    block = ("\n".join(rows) + "\n").encode()
    with path.open("wb") as handle:
        handle.write((header + "\n").encode())
        written = 0
        while written < target_bytes:
            handle.write(block)
            written += len(block)
    return path
