"""A site's tabular data: read and validate (splits: :mod:`fedcare.data.split`; the
site-local transform: :mod:`fedcare.data.preprocess`).

``load_site_csv`` reads a hospital's CSV as text and checks every cell against a
:class:`~fedcare.data.schema.TabularSchema`. It never coerces silently: every problem
is collected (file, line, column, rule, value) and raised once as a
:class:`~fedcare.common.errors.DataValidationError`, so a data manager fixes the file in
one pass. Row numbers are the line numbers a person sees in an editor: the header is
line 1 and the first data row is line 2.

Empty cells are values the hospital did not record. In optional columns they are either
dropped with their row (``missing="drop"``, counted in the :class:`LoadReport`) or kept
as NaN for imputation (``missing="keep"``). An empty label is always a problem.

"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Literal, NoReturn

import numpy as np
import pandas as pd

from fedcare.common.errors import DataValidationError
from fedcare.data.safe_read import UnreadableFile, read_regular_file
from fedcare.data.schema import Column, TabularSchema, format_number

logger = logging.getLogger(__name__)

MissingPolicy = Literal["drop", "keep"]
MISSING_POLICIES: tuple[str, ...] = ("drop", "keep")
MAX_LISTED_PROBLEMS = 200
"""At most this many problems are listed in one error; the rest are counted."""

MAX_CSV_BYTES = 256 * 2**20
"""A site file larger than this is refused before it is read (a hospital table of tabular
features is megabytes; a file of gigabytes is a wrong file or an attack on memory)."""

# Tokens people type for "not recorded". They are NOT treated as missing (that would be
# a silent coercion); they only earn a hint in the problem message.
_MISSING_TOKENS = frozenset({"?", "na", "n/a", "nan", "null", "none", "-", ".", "missing"})


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class DataProblem:
    """One finding in a data file.

    ``row`` is the line number as a person sees it in an editor (header = line 1), or
    ``None`` for a problem with the whole file or its header.
    """

    file: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        parts = [self.file]
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        return ": ".join(parts) + ": " + self.message


@dataclass(frozen=True)
class LoadReport:
    """What loading one site's data did.

    ``rows_read`` counts the data rows in the source; ``missing_by_column`` counts empty
    cells per feature column over all rows read (columns with none are left out).
    """

    source: str
    rows_read: int
    rows_kept: int
    rows_dropped_missing: int
    missing_by_column: dict[str, int]

    def summary(self) -> str:
        """One human line, e.g. ``hungary.csv: read 294 rows, kept 261, ...``."""
        line = (
            f"{self.source}: read {self.rows_read} rows, kept {self.rows_kept}, "
            f"dropped {self.rows_dropped_missing} with empty cells"
        )
        if self.missing_by_column:
            cells = ", ".join(f"{k} {v}" for k, v in self.missing_by_column.items())
            line += f" (empty cells: {cells})"
        return line


@dataclass(frozen=True)
class SiteTable:
    """A validated site table: schema feature columns (float64, NaN = missing) and labels."""

    features: pd.DataFrame
    labels: np.ndarray
    report: LoadReport

    def __len__(self) -> int:
        return len(self.labels)


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class _IssueGroup:
    """Many problems of one kind in one column, formatted lazily (only if listed)."""

    lines: np.ndarray
    order: int  # column position for sorting; -1 for row-level problems
    column: str | None
    describe: Callable[[int], str]


class _ProblemLog:
    """Collects every problem; formats only the first ``MAX_LISTED_PROBLEMS``."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._fixed: list[DataProblem] = []
        self._groups: list[_IssueGroup] = []

    def add(self, message: str, *, row: int | None = None, column: str | None = None) -> None:
        self._fixed.append(DataProblem(self.file, row, column, message))

    def add_group(
        self,
        lines: np.ndarray,
        *,
        order: int,
        column: str | None,
        describe: Callable[[int], str],
    ) -> None:
        if len(lines):
            self._groups.append(_IssueGroup(np.asarray(lines, dtype=np.int64), order, column,
                                            describe))

    @property
    def total(self) -> int:
        return len(self._fixed) + sum(len(g.lines) for g in self._groups)

    def problems(self, cap: int = MAX_LISTED_PROBLEMS) -> list[DataProblem]:
        listed = list(self._fixed[:cap])
        room = cap - len(listed)
        if self._groups and room > 0:
            lines = np.concatenate([g.lines for g in self._groups])
            orders = np.concatenate([np.full(len(g.lines), g.order) for g in self._groups])
            group = np.concatenate([np.full(len(g.lines), i) for i, g in enumerate(self._groups)])
            within = np.concatenate([np.arange(len(g.lines)) for g in self._groups])
            for k in np.lexsort((within, orders, lines))[:room]:
                g = self._groups[int(group[k])]
                listed.append(
                    DataProblem(self.file, int(lines[k]), g.column, g.describe(int(within[k])))
                )
        hidden = self.total - len(listed)
        if hidden > 0:
            listed.append(
                DataProblem(self.file, None, None,
                            f"... and {hidden} more problem(s) not listed ({self.total} in all)")
            )
        return listed

    def raise_if_any(self) -> None:
        if self.total:
            self.fail()

    def fail(self) -> NoReturn:
        raise DataValidationError(self.file, self.problems(), total=self.total)


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Parsed:
    values: np.ndarray  # float64; NaN where empty or not a finite number
    missing: np.ndarray  # bool: empty cell
    invalid: np.ndarray  # bool: non-empty but not a finite number
    source: pd.Series | np.ndarray  # the cells as given; read only to word a problem

    def shown(self, i: int) -> object:
        """Cell ``i`` as the person wrote it (numbers: as parsed)."""
        return self.source[i] if isinstance(self.source, np.ndarray) else self.source.iat[i]


def _parse_column(series: pd.Series) -> _Parsed:
    """Parse one column into numbers without coercing anything silently."""
    if pd.api.types.is_bool_dtype(series) or (
        pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_complex_dtype(series)
    ):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan).copy()
        missing = np.isnan(values)
        invalid = np.isinf(values)
        values[invalid] = np.nan
        return _Parsed(values, missing, invalid, series)
    cells = series.astype(object)
    null = cells.isna()
    text = cells.where(~null, "").astype(str).str.strip()
    missing_s = text == ""
    numbers = pd.to_numeric(text.where(~missing_s), errors="coerce")
    values = numbers.to_numpy(dtype=np.float64, na_value=np.nan).copy()
    missing = missing_s.to_numpy(dtype=bool)
    invalid = ~missing & ~np.isfinite(values)
    values[invalid] = np.nan
    return _Parsed(values, missing, invalid, text.to_numpy(dtype=object))


def _parse_floats(values: np.ndarray) -> _Parsed:
    """A column the fast reader parsed already (NaN only where the cell was empty)."""
    missing = np.isnan(values)
    invalid = np.isinf(values)
    cleaned = np.where(invalid, np.nan, values) if invalid.any() else values
    return _Parsed(cleaned, missing, invalid, values)


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hint(shown: object, column: Column) -> str:
    if str(shown).strip().lower() in _MISSING_TOKENS:
        if column.optional:
            return " (leave the cell empty if the value was not recorded)"
        return " (this column may not be empty)"
    return ""


def _check_column(
    column: Column,
    parsed: _Parsed,
    lines: np.ndarray,
    log: _ProblemLog,
    *,
    order: int,
    is_label: bool,
    binary_label: bool,
) -> None:
    """Record every bad cell of one column."""
    values = parsed.values
    present = ~parsed.missing & ~parsed.invalid
    bad = parsed.invalid.copy()
    rule = column.rule()
    if column.kind == "numeric":
        with np.errstate(invalid="ignore"):
            if column.minimum is not None:
                bad |= present & (values < column.minimum)
            if column.maximum is not None:
                bad |= present & (values > column.maximum)
    else:
        bad |= present & ~np.isin(values, column.allowed_codes())
    if binary_label and column.kind != "binary":
        bad |= present & ~np.isin(values, (0.0, 1.0))
        rule = "0 or 1"

    positions = np.flatnonzero(bad)
    shown = parsed.shown

    def describe_bad(i: int, _pos: np.ndarray = positions, _rule: str = rule) -> str:
        cell = shown(int(_pos[i]))
        return f"must be {_rule}; got {_clip(str(cell))!r}{_hint(cell, column)}"

    log.add_group(lines[positions], order=order, column=column.name, describe=describe_bad)

    if is_label or not column.optional:
        empty = np.flatnonzero(parsed.missing)
        why = "every row needs a label" if is_label else "this column may not be empty"

        def describe_empty(i: int, _rule: str = rule, _why: str = why) -> str:
            return f"must be {_rule} ({_why}); got an empty cell"

        log.add_group(lines[empty], order=order, column=column.name, describe=describe_empty)


def _check_missing_policy(missing: str) -> None:
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {', '.join(MISSING_POLICIES)}; got {missing!r}")


def _check_header(names: Sequence[str], schema: TabularSchema, log: _ProblemLog) -> set[str]:
    """Record header problems; return the schema columns present exactly once."""
    wanted = schema.column_names()
    counts: dict[str, list[int]] = {}
    for i, name in enumerate(names, start=1):
        counts.setdefault(name, []).append(i)
    for name, where in counts.items():
        if name == "":
            for i in where:
                log.add(f"header column {i} must have a name; got an empty header cell")
        elif len(where) > 1:
            log.add(
                f"must appear once in the header; got {len(where)} times "
                f"(header columns {', '.join(map(str, where))})",
                column=name,
            )
    known = set(wanted) | set(schema.ignored_columns)
    for name in counts:
        if name and name not in known:
            close = get_close_matches(name, list(known), n=1) or [
                k for k in known if k.lower() == name.lower()
            ]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            ignored = (
                f"; or one of the ignored columns: {', '.join(schema.ignored_columns)}"
                if schema.ignored_columns else ""
            )
            log.add(
                f"must be a {schema.name} column ({', '.join(wanted)}{ignored}); "
                f"got an unknown column{hint}",
                column=name,
            )
    absent = [w for w in wanted if w not in counts]
    if absent:
        log.add(
            f"header must name every {schema.name} column; missing "
            + ", ".join(repr(a) for a in absent)
        )
    return {w for w in wanted if len(counts.get(w, ())) == 1}


# --------------------------------------------------------------------------- validate


def validate_frame(
    frame: pd.DataFrame,
    schema: TabularSchema,
    *,
    source: str,
    missing: MissingPolicy = "drop",
    line_numbers: Sequence[int] | np.ndarray | None = None,
) -> SiteTable:
    """Validate an in-memory table against ``schema`` and return its features and labels.

    Cells may be text (parsed as numbers, whitespace stripped, empty = missing) or
    numbers (NaN = missing). ``line_numbers`` gives each row's line number for problem
    messages; by default row ``i`` is line ``i + 2``, as in a CSV written with a header.
    Raises :class:`DataValidationError` listing every problem.
    """
    _check_missing_policy(missing)
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame; got {type(frame).__name__}")
    return _validate(frame, schema, source=source, missing=missing, line_numbers=line_numbers,
                     log=_ProblemLog(source), rows_read=len(frame))


def _validate(
    frame: pd.DataFrame,
    schema: TabularSchema,
    *,
    source: str,
    missing: MissingPolicy,
    line_numbers: Sequence[int] | np.ndarray | None,
    log: _ProblemLog,
    rows_read: int,
    header: Sequence[str] | None = None,
) -> SiteTable:
    """``header``: the file's column names when ``frame`` holds only the schema columns
    the fast reader parsed already (float64), keyed by name."""
    n = len(frame)
    if line_numbers is None:
        lines = np.arange(2, n + 2, dtype=np.int64)
    else:
        lines = np.asarray(line_numbers, dtype=np.int64)
        if lines.shape != (n,):
            raise ValueError(
                f"line_numbers must hold one number per row ({n}); got shape {lines.shape}"
            )
    names = ([str(c).strip().lstrip("\ufeff") for c in frame.columns] if header is None
             else list(header))
    usable = _check_header(names, schema, log)
    if rows_read == 0:
        log.add("file must hold at least one data row after the header; got none")

    parsed: dict[str, _Parsed] = {}
    for order, column in enumerate((*schema.features, schema.label)):
        if column.name not in usable:
            continue
        parsed[column.name] = p = (
            _parse_column(frame.iloc[:, names.index(column.name)]) if header is None
            else _parse_floats(frame[column.name].to_numpy(dtype=np.float64)))
        is_label = column is schema.label
        _check_column(column, p, lines, log, order=order, is_label=is_label,
                      binary_label=is_label and schema.label_threshold is None)
    log.raise_if_any()

    feature_names = schema.feature_names()
    missing_counts = {name: int(parsed[name].missing.sum()) for name in feature_names}
    any_missing = np.zeros(n, dtype=bool)
    for name in feature_names:
        any_missing |= parsed[name].missing
    keep = ~any_missing if missing == "drop" else np.ones(n, dtype=bool)
    kept = int(keep.sum())
    report = LoadReport(
        source=source,
        rows_read=rows_read,
        rows_kept=kept,
        rows_dropped_missing=n - kept,
        missing_by_column={k: v for k, v in missing_counts.items() if v},
    )
    if n and kept == 0:
        log.add(
            f"file must keep at least one row after dropping rows with empty cells; every one "
            f"of its {n} rows has an empty cell ({report.summary()})"
        )
        log.raise_if_any()

    features = pd.DataFrame({name: parsed[name].values[keep] for name in feature_names},
                            columns=list(feature_names), dtype=np.float64)
    raw_label = parsed[schema.label.name].values[keep]
    if schema.label_threshold is None:
        labels = raw_label.astype(np.int64)
    else:
        labels = (raw_label > schema.label_threshold).astype(np.int64)
    logger.info("%s", report.summary())
    return SiteTable(features=features, labels=labels, report=report)


# --------------------------------------------------------------------------- CSV


def _read_raw(path: str | os.PathLike[str], log: _ProblemLog, max_bytes: int,
              allow_symlinks: bool) -> bytes | None:
    try:
        return read_regular_file(path, max_bytes=max_bytes, allow_symlinks=allow_symlinks)
    except UnreadableFile as refused:
        log.add(refused.rule)
        return None


def _decode(raw: bytes, log: _ProblemLog) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        utf16 = " (it looks like UTF-16)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        log.add(
            f"file must be UTF-8 text; got byte 0x{raw[exc.start]:02x} at byte offset "
            f"{exc.start}, which is not valid UTF-8{utf16} (save the file as 'CSV UTF-8')",
            row=line,
        )
        return None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        log.add("file must hold a header line and data rows; got an empty file")
        return None
    return text


def _looks_like_data(cells: Sequence[str]) -> bool:
    def is_number(cell: str) -> bool:
        try:
            float(cell)
        except ValueError:
            return False
        return True

    filled = [c for c in cells if c]
    return bool(filled) and all(is_number(c) for c in filled)


def _read_frame(path: str | os.PathLike[str], log: _ProblemLog, *, header_hint: str,
                max_bytes: int = MAX_CSV_BYTES, allow_symlinks: bool = False,
                raw: bytes | None = None) -> tuple[pd.DataFrame, np.ndarray, int]:
    """A CSV file as a frame of str cells (header as column names); ragged rows reported
    and left out. Returns the frame, the line number of each kept row, and rows read."""
    if raw is None:
        raw = _read_raw(path, log, max_bytes, allow_symlinks)
    text = None if raw is None else _decode(raw, log)
    if text is None:
        log.fail()

    # Python's csv module rather than pandas' parser: it hands back every record with its
    # own cell count, so every ragged row is reported (pandas stops at the first long row
    # and pads short ones with NaN), and it infers nothing: cells stay str.
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[list[str]] = []
    starts: list[int] = []
    header: list[str] | None = None
    header_line = 0
    previous = 0
    try:
        for record in reader:
            start = previous + 1
            previous = reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line is not a row
            if header is None:
                header = [cell.strip() for cell in record]
                header_line = start
            else:
                records.append(record)
                starts.append(start)
    except csv.Error as exc:
        log.add(f"line must be valid CSV; got {exc}", row=reader.line_num)
        log.fail()
    if header is None:  # pragma: no cover - text.strip() was non-empty
        log.add("file must hold a header line; got none")
        log.fail()
    _check_header_line(header, header_line, log, header_hint)

    width = len(header)
    counts = np.fromiter((len(r) for r in records), dtype=np.int64, count=len(records))
    lines = np.asarray(starts, dtype=np.int64)
    ragged = np.flatnonzero(counts != width)

    def describe_ragged(i: int) -> str:
        return (f"row must have {width} cells (one per header column); "
                f"got {counts[ragged[i]]}")

    log.add_group(lines[ragged], order=-1, column=None, describe=describe_ragged)
    good = counts == width
    if len(ragged):
        records = [r for r, ok in zip(records, good, strict=True) if ok]
    frame = pd.DataFrame(records, dtype=object) if records else pd.DataFrame(
        np.empty((0, width), dtype=object))
    frame.columns = pd.Index(header, dtype=object)
    return frame, lines[good], len(counts)


def _check_header_line(header: Sequence[str], header_line: int, log: _ProblemLog,
                       header_hint: str) -> None:
    """Fail at once on a header that is not one: other separators, or a data row."""
    separator = next((d for d in (";", "\t", "|") if len(header) == 1 and d in header[0]), None)
    if separator is not None:
        log.add(f"line {header_line} must be comma-separated; got one cell holding "
                f"{separator!r} separators (save the file as CSV with commas)", row=header_line)
        log.fail()
    if _looks_like_data(header):
        log.add(
            f"line {header_line} must be a header naming the columns "
            f"({header_hint}); got what looks like a data row",
            row=header_line,
        )
        log.fail()


# Bytes a plain numeric data row is made of. A file whose rows hold only these (and no
# quotes) is read by pandas' C parser straight into float64; any other byte (a letter,
# '?', a quote) sends the file to the exact reader, so nothing is inferred: 'True',
# 'nan' or 'inf' typed in a cell stay problems to report, never become numbers.
_NUMERIC_BYTES = np.zeros(256, dtype=bool)
_NUMERIC_BYTES[np.frombuffer(b"0123456789.+-eE, \t\r\n", dtype=np.uint8)] = True
_FAST_SLICE = 8 * 2**20  # bytes per vectorised byte-class check (bounds its temporary)
_MAX_BLANK_LINES = 10_000  # more blank lines than this: the exact reader


def _all_numeric_bytes(data: np.ndarray) -> bool:
    return all(bool(_NUMERIC_BYTES[data[i:i + _FAST_SLICE]].all())
               for i in range(0, len(data), _FAST_SLICE))


def _fast_frame(raw: bytes, schema: TabularSchema, log: _ProblemLog, header_hint: str
                ) -> tuple[pd.DataFrame, list[str], np.ndarray, int] | None:
    """The schema columns of a plain numeric CSV as float64, or ``None`` when the file
    needs the exact reader (quotes, bare carriage returns, odd bytes, ragged rows).

    Returns the frame (schema columns present once, by name), the header, each row's
    line number and the data rows read. Vectorised: line ends, comma counts and blank
    lines come from numpy over the bytes; numbers from pandas' C parser.
    """
    body_at = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    first_end = raw.find(b"\n", body_at)
    if first_end < 0 or b'"' in raw or raw.count(b"\r") != raw.count(b"\r\n"):
        return None
    try:
        header_text = raw[body_at:first_end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    header = [cell.strip() for cell in header_text.rstrip("\r").split(",")]
    if not any(header):
        return None  # a blank first line: the exact reader finds the header
    _check_header_line(header, 1, log, header_hint)
    data = np.frombuffer(raw, dtype=np.uint8)[first_end + 1:]
    if not _all_numeric_bytes(data):
        return None
    ends = np.flatnonzero(data == ord("\n"))
    if len(data) and data[-1] != ord("\n"):
        ends = np.append(ends, len(data))
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    if len(header) < 2 or not len(data):
        return None
    # Commas per line (reduceat over an empty line reads the next byte: zeroed below).
    commas = np.add.reduceat((data == ord(",")).view(np.uint8), starts, dtype=np.int32)
    commas[ends == starts] = 0
    # A line without commas is blank (skipped, as the exact reader does) or ragged.
    blank = np.zeros(len(starts), dtype=bool)
    odd = np.flatnonzero(commas == 0)
    if len(odd) > _MAX_BLANK_LINES:
        return None
    for k in odd:
        if raw[first_end + 1 + starts[k]:first_end + 1 + ends[k]].strip():
            return None  # a one-cell row: ragged
        blank[k] = True
    if np.any(~blank & (commas != len(header) - 1)):
        return None  # ragged rows: the exact reader lists every one
    lines = np.flatnonzero(~blank).astype(np.int64) + 2  # header is line 1
    body = raw[first_end + 1:]
    if blank.any():
        body = b"\n".join(body[s:e] for s, e in zip(starts[~blank], ends[~blank], strict=True))
    counts: dict[str, int] = {}
    for name in header:
        counts[name] = counts.get(name, 0) + 1
    wanted = [i for i, name in enumerate(header)
              if counts[name] == 1 and name in schema.column_names()]
    rows = len(lines)
    if not rows or not wanted:
        return None
    try:
        frame = pd.read_csv(io.BytesIO(body), header=None, usecols=wanted,
                            dtype=np.float64, keep_default_na=False, na_values=[""],
                            float_precision="high", engine="c")
    except (ValueError, pd.errors.ParserError):
        return None  # e.g. '1.2.3': the exact reader words the problem
    if len(frame) != rows:  # pragma: no cover - guarded by the line scan above
        return None
    frame.columns = pd.Index([header[i] for i in sorted(wanted)])
    return frame, header, lines, rows


def load_site_csv(
    path: str | os.PathLike[str],
    schema: TabularSchema,
    *,
    missing: MissingPolicy = "drop",
    max_bytes: int = MAX_CSV_BYTES,
    allow_symlinks: bool = False,
) -> SiteTable:
    """Read and validate one site's CSV file (at most ``max_bytes`` bytes).

    Only a regular file is read (a named pipe, device or directory is refused), never
    past ``max_bytes``, and a symbolic link out of the file's folder is refused unless
    ``allow_symlinks``. The file is UTF-8 text (a leading BOM is dropped). A plain
    numeric file is parsed vectorised; anything else (and any file with a problem) goes
    through the exact reader, where every cell stays a string until it is checked, so
    nothing is inferred or coerced behind the user's back. Every problem (file, header,
    row shape, cell value) is collected and raised once as a :class:`DataValidationError`.
    ``missing`` decides what happens to rows with empty cells in optional columns:
    ``"drop"`` drops and counts them, ``"keep"`` keeps NaN.
    """
    _check_missing_policy(missing)
    source = os.fspath(path)
    log = _ProblemLog(source)
    hint = ", ".join(schema.column_names())
    raw = _read_raw(path, log, max_bytes, allow_symlinks)
    if raw is None:
        log.fail()
    try:
        fast = _fast_frame(raw, schema, log, hint)
        if fast is not None:
            frame, header, lines, rows_read = fast
            return _validate(frame, schema, source=source, missing=missing,
                             line_numbers=lines, log=log, rows_read=rows_read, header=header)
    except DataValidationError:
        # Word every problem exactly as the exact reader does (cells as written).
        log = _ProblemLog(source)
    frame, lines, rows_read = _read_frame(path, log, header_hint=hint, raw=raw)
    return _validate(frame, schema, source=source, missing=missing, line_numbers=lines,
                     log=log, rows_read=rows_read)


# --------------------------------------------------------------------------- new patients


@dataclass(frozen=True)
class FeatureTable:
    """Validated rows of new patients: feature columns, optional labels, source lines.

    ``features`` holds the schema's feature columns (float64, NaN = not recorded, in an
    optional column). ``labels`` is ``None`` when the file has no label column. ``lines``
    holds each row's line number in the source (header = line 1), so results can be
    traced back to the row a person sees in an editor.
    """

    features: pd.DataFrame
    labels: np.ndarray | None
    lines: np.ndarray
    report: LoadReport

    def __len__(self) -> int:
        return len(self.features)


def load_features_csv(path: str | os.PathLike[str], schema: TabularSchema) -> FeatureTable:
    """Read and validate a CSV of new patients: the feature columns, the label optional.

    The same checks as :func:`load_site_csv`, problem for problem (file, line, column),
    except that the header need not name the label column; when it does, the label is
    validated as usual and returned. No row is ever dropped: an empty cell in an optional
    column stays NaN (the site preprocessor imputes it), and an empty cell in a required
    column is a problem. Raises :class:`DataValidationError` listing every problem.
    """
    source = os.fspath(path)
    log = _ProblemLog(source)
    frame, lines, rows_read = _read_frame(
        path, log, header_hint=f"{', '.join(schema.feature_names())}; the label "
                               f"{schema.label.name!r} is optional")

    label = schema.label
    labelled = label.name in [str(name).lstrip("\ufeff") for name in frame.columns]
    if not labelled:
        # Stand in a valid label so the shared validator checks everything else exactly
        # as for a training file; the stand-in is never returned.
        if label.kind == "categorical":
            stand_in = float(label.categories[0])
        elif label.kind == "numeric" and label.minimum is not None:
            stand_in = float(label.minimum)
        elif label.kind == "numeric" and label.maximum is not None:
            stand_in = min(0.0, float(label.maximum))
        else:
            stand_in = 0.0
        frame[label.name] = format_number(stand_in)
    table = _validate(frame, schema, source=source, missing="keep", line_numbers=lines,
                      log=log, rows_read=rows_read)
    return FeatureTable(features=table.features, labels=table.labels if labelled else None,
                        lines=lines, report=table.report)
