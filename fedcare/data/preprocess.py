"""The site-local transform: impute, standardize, one-hot with the schema's fixed categories.

:class:`Preprocessor` is fitted on a site's own training rows only; it is saved beside the
site's state (``preprocessor.json``) and read back with every check of its entries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedcare.data.schema import Column, TabularSchema, format_number

PREPROCESSOR_FORMAT = "fedcare.preprocessor"
PREPROCESSOR_VERSION = 1


@dataclass(frozen=True)
class _ColumnStats:
    name: str
    kind: str
    fill: float  # imputation value
    center: float = 0.0  # numeric only
    scale: float = 1.0  # numeric only
    categories: tuple[float, ...] = ()  # categorical only


def _most_frequent(values: np.ndarray, codes: Sequence[float]) -> float:
    """The code seen most often (ties: the first in ``codes`` order)."""
    counts = [int(np.count_nonzero(values == c)) for c in codes]
    return float(codes[int(np.argmax(counts))])


class Preprocessor:
    """Site-local preprocessing fitted on one site's training rows only.

    Numeric columns: impute the median, then standardize (mean 0, std 1; a constant
    column keeps scale 1). Binary columns: impute the most frequent value, leave 0/1.
    Categorical columns: impute the most frequent code, one-hot with the schema's fixed
    categories, so every site yields the same columns in schema order.
    """

    def __init__(self, schema: TabularSchema) -> None:
        self.schema = schema
        self._stats: tuple[_ColumnStats, ...] | None = None

    @property
    def is_fitted(self) -> bool:
        return self._stats is not None

    @property
    def encoded_feature_names(self) -> tuple[str, ...]:
        return self.schema.encoded_feature_names()

    def _matrix(self, x: pd.DataFrame, action: str) -> np.ndarray:
        if not isinstance(x, pd.DataFrame):
            raise TypeError(f"Preprocessor.{action}: x must be a pandas DataFrame; "
                            f"got {type(x).__name__}")
        names = self.schema.feature_names()
        absent = [n for n in names if n not in x.columns]
        extra = [str(c) for c in x.columns if c not in names]
        if absent or extra:
            raise ValueError(
                f"Preprocessor.{action}: x must have exactly the {self.schema.name} feature "
                f"columns; missing {absent}, unexpected {extra}"
            )
        try:
            matrix = x.loc[:, list(names)].to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Preprocessor.{action}: x must hold numbers; got {exc}") from exc
        if np.isinf(matrix).any():
            raise ValueError(f"Preprocessor.{action}: x must hold finite numbers or NaN; "
                             "got an infinite value")
        for j, column in enumerate(self.schema.features):
            if column.kind == "numeric":
                continue
            values = matrix[:, j]
            seen = values[~np.isnan(values)]
            unknown = sorted(set(seen.tolist()) - set(column.allowed_codes()))
            if unknown:
                raise ValueError(
                    f"Preprocessor.{action}: column {column.name!r} must be {column.rule()}; "
                    f"got {', '.join(format_number(u) for u in unknown[:5])}"
                )
        return matrix

    def fit(self, x_train: pd.DataFrame) -> Preprocessor:
        """Learn imputation and scaling from ``x_train`` (this site's train rows) only."""
        matrix = self._matrix(x_train, "fit")
        if len(matrix) == 0:
            raise ValueError("Preprocessor.fit: x_train must have at least one row; got 0")
        stats: list[_ColumnStats] = []
        for j, column in enumerate(self.schema.features):
            values = matrix[:, j]
            seen = values[~np.isnan(values)]
            if len(seen) == 0:
                raise ValueError(
                    f"Preprocessor.fit: column {column.name!r} must have at least one value "
                    "in the training rows to impute from; got only empty cells"
                )
            if column.kind == "numeric":
                fill = float(np.median(seen))
                filled = np.where(np.isnan(values), fill, values)
                center = float(filled.mean())
                std = float(filled.std())
                tiny = 10 * np.finfo(np.float64).eps * max(1.0, abs(center))
                scale = std if math.isfinite(std) and std > tiny else 1.0
                stats.append(_ColumnStats(column.name, column.kind, fill, center, scale))
            else:
                codes = column.allowed_codes()
                stats.append(_ColumnStats(column.name, column.kind, _most_frequent(seen, codes),
                                          categories=codes if column.kind == "categorical"
                                          else ()))
        self._stats = tuple(stats)
        return self

    def transform(self, x: pd.DataFrame) -> np.ndarray:
        """Impute, scale and one-hot ``x``: float32, shape ``(n, len(encoded names))``."""
        if self._stats is None:
            raise RuntimeError(
                "Preprocessor.transform: the preprocessor must be fitted first; call "
                "fit(x_train) or Preprocessor.from_dict(...)"
            )
        matrix = self._matrix(x, "transform")
        blocks: list[np.ndarray] = []
        for j, stat in enumerate(self._stats):
            values = np.where(np.isnan(matrix[:, j]), stat.fill, matrix[:, j])
            if stat.kind == "numeric":
                blocks.append(((values - stat.center) / stat.scale)[:, None])
            elif stat.kind == "binary":
                blocks.append(values[:, None])
            else:
                blocks.append((values[:, None] == np.asarray(stat.categories)[None, :])
                              .astype(np.float64))
        out = np.hstack(blocks) if blocks else np.empty((len(matrix), 0))
        return out.astype(np.float32)

    def fit_transform(self, x_train: pd.DataFrame) -> np.ndarray:
        return self.fit(x_train).transform(x_train)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable record of the fitted statistics."""
        if self._stats is None:
            raise RuntimeError("Preprocessor.to_dict: the preprocessor must be fitted first")
        columns: list[dict[str, Any]] = []
        for stat in self._stats:
            entry: dict[str, Any] = {"name": stat.name, "kind": stat.kind, "fill": stat.fill}
            if stat.kind == "numeric":
                entry.update(center=stat.center, scale=stat.scale)
            if stat.kind == "categorical":
                entry["categories"] = [float(c) for c in stat.categories]
            columns.append(entry)
        return {
            "format": PREPROCESSOR_FORMAT,
            "version": PREPROCESSOR_VERSION,
            "schema": self.schema.name,
            "encoded_feature_names": list(self.schema.encoded_feature_names()),
            "columns": columns,
        }

    @classmethod
    def from_dict(cls, schema: TabularSchema, data: dict[str, Any]) -> Preprocessor:
        """Rebuild a fitted preprocessor; ``ValueError`` listing every mismatch."""
        where = "preprocessor record"
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be a dict; got {type(data).__name__}")
        problems: list[str] = []
        expected = {
            "format": PREPROCESSOR_FORMAT,
            "version": PREPROCESSOR_VERSION,
            "schema": schema.name,
            "encoded_feature_names": list(schema.encoded_feature_names()),
        }
        for key, want in expected.items():
            if data.get(key) != want:
                problems.append(f"{key} must be {want!r}; got {data.get(key, '<absent>')!r}")
        unknown = sorted(set(data) - set(expected) - {"columns"})
        if unknown:
            problems.append(f"keys must be {sorted([*expected, 'columns'])}; got extra {unknown}")
        columns = data.get("columns")
        stats: list[_ColumnStats] = []
        if not isinstance(columns, list) or len(columns) != len(schema.features):
            problems.append(
                f"columns must be a list of {len(schema.features)} entries; "
                f"got {type(columns).__name__} of length "
                f"{len(columns) if isinstance(columns, list) else 'n/a'}"
            )
        else:
            for column, entry in zip(schema.features, columns, strict=True):
                stat = _stats_from_entry(column, entry, problems)
                if stat is not None:
                    stats.append(stat)
        if problems:
            raise ValueError(f"{where} does not match schema {schema.name!r}: "
                             + "; ".join(problems))
        made = cls(schema)
        made._stats = tuple(stats)
        return made


def _finite(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _stats_from_entry(column: Column, entry: object, problems: list[str]) -> _ColumnStats | None:
    where = f"column {column.name!r}"
    if not isinstance(entry, dict):
        problems.append(f"{where} must be a dict; got {type(entry).__name__}")
        return None
    keys = {"name", "kind", "fill"}
    if column.kind == "numeric":
        keys |= {"center", "scale"}
    if column.kind == "categorical":
        keys |= {"categories"}
    before = len(problems)
    if set(entry) != keys:
        problems.append(f"{where} keys must be {sorted(keys)}; got {sorted(entry)}")
        return None
    if entry["name"] != column.name:
        problems.append(f"{where} name must be {column.name!r}; got {entry['name']!r}")
    if entry["kind"] != column.kind:
        problems.append(f"{where} kind must be {column.kind!r}; got {entry['kind']!r}")
    for key in sorted(keys - {"name", "kind", "categories"}):
        if not _finite(entry[key]):
            problems.append(f"{where} {key} must be a finite number; got {entry[key]!r}")
    if column.kind == "numeric" and _finite(entry["scale"]) and entry["scale"] <= 0:
        problems.append(f"{where} scale must be > 0; got {entry['scale']!r}")
    if column.kind != "numeric" and _finite(entry["fill"]) and (
        float(entry["fill"]) not in column.allowed_codes()
    ):
        problems.append(f"{where} fill must be {column.rule()}; got {entry['fill']!r}")
    if column.kind == "categorical" and entry["categories"] != list(column.allowed_codes()):
        problems.append(
            f"{where} categories must be {list(column.allowed_codes())}; "
            f"got {entry['categories']!r}"
        )
    if len(problems) > before:
        return None
    return _ColumnStats(
        name=column.name,
        kind=column.kind,
        fill=float(entry["fill"]),
        center=float(entry.get("center", 0.0)),
        scale=float(entry.get("scale", 1.0)),
        categories=column.allowed_codes() if column.kind == "categorical" else (),
    )
