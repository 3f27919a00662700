"""Factories for data-layer tests: small schemas, CSV files and site tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedcare.data.schema import Column, TabularSchema
from fedcare.data.validate import LoadReport, SiteTable

# A small schema with one column of each kind, hand-checkable.
TINY = TabularSchema(
    name="tiny",
    features=(
        Column(name="age", kind="numeric", minimum=0, maximum=120, optional=True),
        Column(name="smoker", kind="binary"),
        Column(name="stage", kind="categorical", categories=(1, 2, 3), optional=True),
    ),
    label=Column(name="outcome", kind="binary"),
    ignored_columns=("note",),
)
TINY_HEADER: tuple[str, ...] = ("age", "smoker", "stage", "outcome")
TINY_ROW: dict[str, str] = {"age": "50", "smoker": "1", "stage": "2", "outcome": "0"}

HEART_HEADER: tuple[str, ...] = (
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang",
    "oldpeak", "slope", "ca", "thal", "num",
)


def csv_text(rows: Sequence[Mapping[str, str] | Sequence[str]],
             header: Sequence[str] = TINY_HEADER, *, newline: str = "\n") -> str:
    """A CSV document: header line, then one line per row (dict rows follow the header)."""
    lines = [",".join(header)]
    for row in rows:
        cells = [row.get(h, "") for h in header] if isinstance(row, Mapping) else list(row)
        lines.append(",".join(cells))
    return newline.join(lines) + newline


def tiny_rows(*overrides: Mapping[str, str]) -> list[dict[str, str]]:
    """One valid TINY row per override mapping, each with those cells replaced."""
    return [{**TINY_ROW, **o} for o in overrides]


def write_text(directory: Path, name: str, text: str, *, bom: bool = False) -> Path:
    path = directory / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def heart_rows(n: int, *, seed: int, positive_share: float = 0.5) -> list[dict[str, str]]:
    """``n`` valid, complete heart-disease rows (strings), randomly but reproducibly drawn."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        sick = rng.random() < positive_share
        rows.append({
            "age": str(int(rng.integers(30, 78))),
            "sex": str(int(rng.integers(0, 2))),
            "cp": str(int(rng.integers(1, 5))),
            "trestbps": str(int(rng.integers(95, 190))),
            "chol": str(int(rng.integers(120, 400))),
            "fbs": str(int(rng.integers(0, 2))),
            "restecg": str(int(rng.integers(0, 3))),
            "thalach": str(int(rng.integers(80, 200))),
            "exang": str(int(rng.integers(0, 2))),
            "oldpeak": f"{rng.uniform(-1, 5):.1f}",
            "slope": "", "ca": "", "thal": "",
            "num": str(int(rng.integers(1, 5))) if sick else "0",
        })
    return rows


def write_heart_dir(directory: Path, sizes: Mapping[str, int]) -> Path:
    """Write synthetic heart-disease site files (``<site>.csv``) into ``directory``."""
    for k, (site, n) in enumerate(sizes.items()):
        text = csv_text(heart_rows(n, seed=k), HEART_HEADER)
        write_text(directory, f"{site}.csv", text)
    return directory


Values = Sequence[float] | np.ndarray


def tiny_table(age: Values, smoker: Values, stage: Values, labels: Sequence[int]) -> SiteTable:
    """A TINY SiteTable built directly (no file), for split/preprocessing tests."""
    features = pd.DataFrame({"age": age, "smoker": smoker, "stage": stage}, dtype=np.float64)
    n = len(labels)
    return SiteTable(
        features=features,
        labels=np.asarray(labels, dtype=np.int64),
        report=LoadReport(source="tiny-test", rows_read=n, rows_kept=n, rows_dropped_missing=0,
                          missing_by_column={}),
    )
