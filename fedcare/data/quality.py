"""Data-quality report for a site table that passed validation.

Validation (``fedcare.data.validate``) decides whether a file *can* be used; this report
says what a data manager should look at before it *is* used: sentinel zeros (a column
that is 0 in most rows where 0 is not a clinical value), constant columns, a label of one
class (or nearly), duplicate rows, the rows dropped per column and why, and how few rows
are left. Findings are warnings: they never block, unless the caller asks for strict
mode (``fedcare check-csv --strict``), where :meth:`DataQualityReport.raise_if_warned`
turns them into a :class:`~fedcare.common.errors.DataValidationError`.

Like every fedcare data message, the report names files, columns and counts, never a
patient's value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedcare.common.errors import DataValidationError
from fedcare.data.schema import TabularSchema
from fedcare.data.validate import DataProblem, SiteTable

SENTINEL_SHARE = 0.5
"""A column that is 0 in more than this share of rows, with 0 outside its clinical range."""
MAJORITY_SHARE = 0.95
"""A label whose larger class holds more than this share of rows."""
DUPLICATE_SHARE = 0.05
"""Duplicate rows above this share of the kept rows earn a warning (any are counted)."""
FEW_ROWS = 50
"""Fewer rows than this after cleaning earn a warning (held-out metrics of a handful of
rows say little, and DP noise is divided by the batch the rows allow)."""
MIN_SPLIT_ROWS = 2
"""A site needs one training and one held-out row at the very least."""


@dataclass(frozen=True)
class QualityFinding:
    """One warning: ``kind`` is a stable slug (``sentinel``, ``constant``, ``one-class``,
    ``majority-class``, ``duplicates``, ``few-rows``), ``column`` where it applies."""

    kind: str
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f"column {self.column!r}: " if self.column else ""
        return f"{where}{self.message}"


@dataclass(frozen=True)
class DataQualityReport:
    """What the rows a site will train on look like (after cleaning)."""

    source: str
    rows_read: int
    rows_kept: int
    dropped_by_column: dict[str, int]
    rows_dropped: int
    duplicate_rows: int
    label_counts: dict[int, int]
    zero_counts: dict[str, int]
    findings: tuple[QualityFinding, ...]

    @property
    def warned(self) -> bool:
        return bool(self.findings)

    def lines(self) -> list[str]:
        """The report for people: facts first, then one line per warning."""
        out = [f"data quality of {self.source}:",
               f"  rows: {self.rows_read} read, {self.rows_kept} left after cleaning"]
        if self.rows_dropped:
            per_column = ", ".join(f"{c} {n}" for c, n in self.dropped_by_column.items())
            out.append(f"  dropped {self.rows_dropped} row(s) with an empty cell (rows with an "
                       f"empty cell per column: {per_column})")
        elif self.dropped_by_column:
            per_column = ", ".join(f"{c} {n}" for c, n in self.dropped_by_column.items())
            out.append(f"  empty cells kept for imputation: {per_column}")
        if self.label_counts:
            counts = ", ".join(f"class {k}: {v}" for k, v in sorted(self.label_counts.items()))
            out.append(f"  label: {counts}")
        out.append(f"  duplicate rows: {self.duplicate_rows} of {self.rows_kept}"
                   + (f" ({self.duplicate_rows / self.rows_kept:.1%})" if self.rows_kept else ""))
        for column, count in self.zero_counts.items():
            out.append(f"  {column} = 0 (not a clinical value) in {count} of {self.rows_kept} "
                       "rows")
        if self.findings:
            out.append(f"  {len(self.findings)} warning(s):")
            out.extend(f"  WARNING {f}" for f in self.findings)
        else:
            out.append("  no warnings")
        return out

    def raise_if_warned(self) -> None:
        """Strict mode: every warning becomes a data problem, raised once."""
        if self.findings:
            raise DataValidationError(self.source, [
                DataProblem(self.source, None, f.column, f"data quality: {f.message}")
                for f in self.findings])


def assess_quality(table: SiteTable, schema: TabularSchema) -> DataQualityReport:
    """The data-quality report of a validated site table (its kept rows)."""
    report = table.report
    features = table.features
    n = len(table.labels)
    findings: list[QualityFinding] = []

    zero_counts: dict[str, int] = {}
    for column in schema.features:
        if column.kind != "numeric" or not column.zero_is_sentinel():
            continue
        zeros = int(np.count_nonzero(features[column.name].to_numpy() == 0))
        if not zeros:
            continue
        zero_counts[column.name] = zeros
        if zeros > SENTINEL_SHARE * n:
            documented = (" (the data's documentation says 0 means not measured)"
                          if column.zero_means_not_measured else "")
            findings.append(QualityFinding(
                "sentinel", column.name,
                f"is 0 in {zeros} of {n} rows, and 0 is outside its clinical range"
                f"{documented}; the model would learn from a placeholder: record the value, "
                "leave the cell empty, or drop the column"))

    sentinels = {f.column for f in findings}
    for column in schema.features:
        if column.name in sentinels:
            continue  # already explained: a placeholder in every or most rows
        values = features[column.name].to_numpy(dtype=np.float64)
        seen = values[~np.isnan(values)]
        if n > 1 and len(seen) == n and np.all(seen == seen[0]):
            findings.append(QualityFinding(
                "constant", column.name,
                f"holds the same value in all {n} rows; it carries no information at this "
                "site"))

    classes, counts = np.unique(table.labels, return_counts=True)
    label_counts = {int(k): int(v) for k, v in zip(classes, counts, strict=True)}
    label = schema.label.name
    if n and len(classes) == 1:
        findings.append(QualityFinding(
            "one-class", label,
            f"every one of the {n} rows is class {int(classes[0])}; a site with one class "
            "cannot show whether the model separates the classes (AUC undefined)"))
    elif n and counts.max() > MAJORITY_SHARE * n:
        findings.append(QualityFinding(
            "majority-class", label,
            f"{int(counts.max())} of {n} rows ({counts.max() / n:.0%}) are class "
            f"{int(classes[np.argmax(counts)])}; held-out metrics at this site rest on "
            f"{int(n - counts.max())} row(s) of the other class"))

    both = features.assign(**{f"__{label}": table.labels})
    duplicates = int(pd.DataFrame.duplicated(both).sum()) if n else 0
    if n and duplicates > DUPLICATE_SHARE * n:
        findings.append(QualityFinding(
            "duplicates", None,
            f"{duplicates} of {n} rows ({duplicates / n:.0%}) repeat an earlier row exactly; "
            "check for a double export (duplicates also weaken the add/remove-one-row "
            "privacy unit: one patient counted twice)"))

    if n < MIN_SPLIT_ROWS:
        findings.append(QualityFinding(
            "few-rows", None,
            f"{n} row(s) left after cleaning; a site needs at least {MIN_SPLIT_ROWS} (one to "
            "train on, one held out) and far more to learn anything"))
    elif n < FEW_ROWS:
        findings.append(QualityFinding(
            "few-rows", None,
            f"only {n} rows left after cleaning (fewer than {FEW_ROWS}); held-out metrics "
            "here rest on a handful of rows and DP noise weighs heavily"))

    return DataQualityReport(
        source=report.source, rows_read=report.rows_read, rows_kept=report.rows_kept,
        dropped_by_column=dict(report.missing_by_column),
        rows_dropped=report.rows_dropped_missing, duplicate_rows=duplicates,
        label_counts=label_counts, zero_counts=zero_counts, findings=tuple(findings))
