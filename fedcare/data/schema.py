"""Tabular schemas: what a site's data file must hold, written as data.

A :class:`TabularSchema` names the feature columns a model uses (with their kind and
allowed values), the raw label column, how the raw label becomes a binary label, and
the columns a file may carry that are dropped before use. It holds no callables, so it
can be printed, compared and written into a model manifest.

Schemas are checked when they are built: a malformed schema is a programming error and
raises :class:`ValueError` listing every problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

ColumnKind = Literal["numeric", "binary", "categorical"]
COLUMN_KINDS: tuple[str, ...] = ("numeric", "binary", "categorical")
BINARY_CODES: tuple[float, ...] = (0.0, 1.0)


def format_number(value: float) -> str:
    """Render a number the way a person writes it: ``1.0`` -> ``1``, ``0.5`` -> ``0.5``."""
    if math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return repr(float(value))


@dataclass(frozen=True, kw_only=True)
class Column:
    """One column of a site file.

    ``numeric`` columns may carry an inclusive ``[minimum, maximum]`` range (either end
    may be open). ``binary`` columns hold 0 or 1. ``categorical`` columns hold one of
    ``categories`` (numeric codes such as chest-pain type 1..4), and are one-hot encoded
    in that order. ``optional`` columns may hold empty cells (a value not recorded).

    ``clinical_range`` (numeric only) is where real measurements lie; ``[minimum,
    maximum]`` stays wider so files with documented recording artefacts still load. A
    column that is 0 in most rows while 0 is outside its clinical range is a sentinel
    (the data-quality report warns); ``zero_means_not_measured`` records that the data's
    own documentation says so.
    """

    name: str
    kind: ColumnKind
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[float, ...] = ()
    optional: bool = False
    clinical_range: tuple[float, float] | None = None
    zero_means_not_measured: bool = False

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"column {self.name!r}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every way this column definition is malformed (empty when it is sound)."""
        found: list[str] = []
        if not isinstance(self.name, str) or not self.name.strip():
            found.append(f"name must be a non-empty string; got {self.name!r}")
        elif self.name != self.name.strip() or "," in self.name or "=" in self.name:
            found.append(
                f"name must have no surrounding spaces, commas or '='; got {self.name!r}"
            )
        if self.kind not in COLUMN_KINDS:
            found.append(f"kind must be one of {', '.join(COLUMN_KINDS)}; got {self.kind!r}")
        for end in ("minimum", "maximum"):
            value = getattr(self, end)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                found.append(f"{end} must be a finite number or None; got {value!r}")
        if (
            isinstance(self.minimum, (int, float))
            and isinstance(self.maximum, (int, float))
            and self.minimum > self.maximum
        ):
            found.append(
                f"minimum must be <= maximum; got minimum={self.minimum!r}, "
                f"maximum={self.maximum!r}"
            )
        if self.kind != "numeric" and (self.minimum is not None or self.maximum is not None):
            found.append(f"minimum/maximum apply to numeric columns only; kind is {self.kind!r}")
        if self.kind == "categorical":
            if not isinstance(self.categories, tuple) or len(self.categories) < 2:
                found.append(
                    f"categories must be a tuple of at least 2 codes; got {self.categories!r}"
                )
            elif not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
                for c in self.categories
            ):
                found.append(f"categories must be finite numbers; got {self.categories!r}")
            elif len(set(self.categories)) != len(self.categories):
                found.append(f"categories must be distinct; got {self.categories!r}")
        elif self.categories:
            found.append(
                f"categories apply to categorical columns only; kind is {self.kind!r}"
            )
        if not isinstance(self.optional, bool):
            found.append(f"optional must be True or False; got {self.optional!r}")
        if self.clinical_range is not None and (
            self.kind != "numeric" or not isinstance(self.clinical_range, tuple)
            or len(self.clinical_range) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v) for v in self.clinical_range)
            or self.clinical_range[0] > self.clinical_range[1]
        ):
            found.append("clinical_range must be a (low, high) pair of finite numbers, low <= "
                         f"high, on a numeric column; got {self.clinical_range!r}")
        if not isinstance(self.zero_means_not_measured, bool):
            found.append("zero_means_not_measured must be True or False; got "
                         f"{self.zero_means_not_measured!r}")
        return found

    def zero_is_sentinel(self) -> bool:
        """True when 0 lies outside the clinical range (a recorded 0 means 'no value')."""
        if self.zero_means_not_measured:
            return True
        low, high = self.clinical_range or (None, None)
        return low is not None and high is not None and not low <= 0 <= high

    def allowed_codes(self) -> tuple[float, ...]:
        """The codes a binary or categorical cell may hold (empty for numeric)."""
        if self.kind == "binary":
            return BINARY_CODES
        if self.kind == "categorical":
            return tuple(float(c) for c in self.categories)
        return ()

    def rule(self) -> str:
        """The validation rule in words, e.g. ``a number in [0, 700]``."""
        if self.kind == "binary":
            return "0 or 1"
        if self.kind == "categorical":
            return "one of " + ", ".join(format_number(c) for c in self.categories)
        if self.minimum is not None and self.maximum is not None:
            return (
                f"a number in [{format_number(self.minimum)}, {format_number(self.maximum)}]"
            )
        if self.minimum is not None:
            return f"a number >= {format_number(self.minimum)}"
        if self.maximum is not None:
            return f"a number <= {format_number(self.maximum)}"
        return "a finite number"

    def encoded_names(self) -> tuple[str, ...]:
        """Names after one-hot encoding: ``("cp=1", "cp=2", ...)`` or ``(name,)``."""
        if self.kind == "categorical":
            return tuple(f"{self.name}={format_number(c)}" for c in self.categories)
        return (self.name,)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description (for manifests)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "minimum": None if self.minimum is None else float(self.minimum),
            "maximum": None if self.maximum is None else float(self.maximum),
            "categories": [float(c) for c in self.categories],
            "optional": self.optional,
            **({"clinical-range": [float(v) for v in self.clinical_range]}
               if self.clinical_range is not None else {}),
            **({"zero-means-not-measured": True} if self.zero_means_not_measured else {}),
        }


@dataclass(frozen=True, kw_only=True)
class TabularSchema:
    """What one dataset's site files hold.

    ``label_threshold``: the binary label is ``raw label > label_threshold``; ``None``
    means the raw label must already be 0 or 1. ``ignored_columns`` may be present in a
    file and are dropped before use (not validated).
    """

    name: str
    features: tuple[Column, ...]
    label: Column
    label_threshold: float | None = None
    ignored_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not isinstance(self.name, str) or not self.name.strip():
            problems.append(f"name must be a non-empty string; got {self.name!r}")
        if not isinstance(self.features, tuple) or not self.features:
            problems.append(f"features must be a non-empty tuple of Column; got {self.features!r}")
        elif not all(isinstance(c, Column) for c in self.features):
            problems.append("features must hold Column objects only")
        if not isinstance(self.label, Column):
            problems.append(f"label must be a Column; got {self.label!r}")
        elif self.label.optional:
            problems.append(f"label column {self.label.name!r} must not be optional")
        if not problems:
            names = [c.name for c in self.features] + [self.label.name]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                problems.append(f"column names must be distinct; repeated: {duplicates}")
            overlap = sorted(set(names) & set(self.ignored_columns))
            if overlap:
                problems.append(f"ignored_columns must not name schema columns; got {overlap}")
            if len(set(self.ignored_columns)) != len(self.ignored_columns):
                problems.append(f"ignored_columns must be distinct; got {self.ignored_columns}")
            if self.label_threshold is None:
                if self.label.kind == "numeric" and not (
                    self.label.minimum == 0 and self.label.maximum == 1
                ):
                    problems.append(
                        "label_threshold=None needs a binary label column (or numeric in "
                        f"[0, 1]); label {self.label.name!r} is {self.label.rule()}"
                    )
                if self.label.kind == "categorical" and set(self.label.categories) != {0, 1}:
                    problems.append(
                        "label_threshold=None needs label categories (0, 1); "
                        f"got {self.label.categories}"
                    )
            elif (
                isinstance(self.label_threshold, bool)
                or not isinstance(self.label_threshold, (int, float))
                or not math.isfinite(self.label_threshold)
            ):
                problems.append(
                    f"label_threshold must be a finite number or None; got "
                    f"{self.label_threshold!r}"
                )
        if problems:
            raise ValueError(f"schema {self.name!r}: " + "; ".join(problems))

    def feature_names(self) -> tuple[str, ...]:
        """Raw feature column names, in schema order."""
        return tuple(c.name for c in self.features)

    def encoded_feature_names(self) -> tuple[str, ...]:
        """Feature names after one-hot encoding, in schema order."""
        return tuple(name for c in self.features for name in c.encoded_names())

    def column_names(self) -> tuple[str, ...]:
        """Every column a site file must hold: the features, then the label."""
        return (*self.feature_names(), self.label.name)

    def column(self, name: str) -> Column:
        """The feature or label column called ``name`` (``KeyError`` if none)."""
        for c in (*self.features, self.label):
            if c.name == name:
                return c
        raise KeyError(f"schema {self.name!r} has no column {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description (for manifests)."""
        return {
            "name": self.name,
            "features": [c.to_dict() for c in self.features],
            "label": self.label.to_dict(),
            "label_threshold": (
                None if self.label_threshold is None else float(self.label_threshold)
            ),
            "ignored_columns": list(self.ignored_columns),
        }
