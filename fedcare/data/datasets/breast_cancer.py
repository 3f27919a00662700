"""Wisconsin Diagnostic Breast Cancer: the embedded default dataset.

scikit-learn ships a copy (569 rows, 212 malignant), so it loads offline. Column names
are scikit-learn's feature names made CSV-friendly (``"mean radius"`` ->
``"mean_radius"``). The label ``diagnosis_malignant`` is 1 for malignant; scikit-learn's
target is 0 for malignant, so it is inverted here.

Ranges: every feature is a size, texture or shape measurement, so the minimum is 0. The
maximum is about ten times the largest value in the data set, rounded up to one
significant figure: wide enough for any plausible hospital file, narrow enough to catch
a unit mix-up (e.g. area in mm^2 instead of pixels) or a shifted column.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from fedcare.data.schemas import BREAST_CANCER
from fedcare.data.validate import SiteTable, validate_frame

NAME = "breast-cancer"
LABEL = "diagnosis_malignant"
SOURCE = "scikit-learn load_breast_cancer (bundled copy)"
NUM_ROWS = 569
NUM_MALIGNANT = 212

SCHEMA = BREAST_CANCER


def csv_name(sklearn_name: str) -> str:
    """``"mean concave points"`` -> ``"mean_concave_points"``."""
    return sklearn_name.strip().lower().replace(" ", "_")


def raw_frame() -> pd.DataFrame:
    """The bundled data as a frame in the schema's columns (features, then label)."""
    from sklearn.datasets import load_breast_cancer  # slow import: only when needed

    bunch = load_breast_cancer(as_frame=True)
    features = bunch.data.rename(columns=csv_name)
    frame = features.loc[:, list(SCHEMA.feature_names())].copy()
    frame[LABEL] = (bunch.target.to_numpy() == 0).astype("int64")  # sklearn: 0 = malignant
    return frame


def load_table() -> SiteTable:
    """All 569 rows, validated through the same checks as a hospital's file."""
    return validate_frame(raw_frame(), SCHEMA, source=SOURCE, missing="drop")


def write_csv(path: str | os.PathLike[str]) -> None:
    """Write the data set as a hospital-style CSV (header + one row per patient)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    raw_frame().to_csv(target, index=False, lineterminator="\n")
