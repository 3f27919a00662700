"""UCI Heart Disease, four hospitals: schema, file locations and the benchmark protocol.

The data is not part of the repository; code reads it from a directory it is given
(see :func:`resolve_data_dir`). The protocol (shared/data/heart-disease/BENCHMARK.md,
comparable with FLamby Fed-Heart-Disease): label ``num > 0``; drop ``slope``, ``ca`` and
``thal``; drop every row that still has an empty cell. Rows kept: cleveland 303,
hungary 261, switzerland 46, va-long-beach 130.

Value ranges are wide, plausible physiological bounds that accept all four real files.
Two recording artefacts in the real files are inside them on purpose, because the
protocol keeps those rows as they are: ``chol`` 0 (not measured, as the data's README
documents: every kept switzerland.csv row and some of va-long-beach.csv) and one
``trestbps`` 0 in va-long-beach.csv. ``oldpeak`` (ST depression) is negative in some
switzerland and va-long-beach rows. ``clinical_range`` holds where living patients'
values lie, so the data-quality report flags a column that is mostly 0 (a sentinel).
"""

from __future__ import annotations

import os
from pathlib import Path

from fedcare.data.schemas import HEART_DISEASE
from fedcare.data.validate import SiteTable, load_site_csv

NAME = "heart-disease"
SITES: tuple[str, ...] = ("cleveland", "hungary", "switzerland", "va-long-beach")
DEFAULT_DATA_DIR = "../shared/data/heart-disease"
"""Relative to the repository root."""
DATA_DIR_ENV = "FEDCARE_HEART_DATA"
REPO_ROOT = Path(__file__).resolve().parents[3]

SCHEMA = HEART_DISEASE

# The protocol's published counts: rows kept and rows with num > 0.
EXPECTED_ROWS: dict[str, tuple[int, int]] = {
    "cleveland": (303, 139),
    "hungary": (261, 98),
    "switzerland": (46, 45),
    "va-long-beach": (130, 101),
}


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the four hospital files live.

    ``data_dir`` if given (a relative path is taken from the repository root, like the
    default); else the ``FEDCARE_HEART_DATA`` environment variable; else
    ``DEFAULT_DATA_DIR``.
    """
    chosen: str | os.PathLike[str]
    if data_dir is not None and os.fspath(data_dir) != "":
        chosen = data_dir
    else:
        chosen = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    path = Path(chosen).expanduser()
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def _check_site(site: str) -> None:
    if site not in SITES:
        raise ValueError(f"site must be one of {', '.join(SITES)}; got {site!r}")


def site_path(data_dir: str | os.PathLike[str] | None, site: str) -> Path:
    """The CSV file of one hospital."""
    _check_site(site)
    return resolve_data_dir(data_dir) / f"{site}.csv"


def data_available(data_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when all four hospital files exist."""
    return all(site_path(data_dir, s).is_file() for s in SITES)


def load_site(data_dir: str | os.PathLike[str] | None, site: str) -> SiteTable:
    """One hospital's rows under the benchmark protocol (rows with empty cells dropped)."""
    return load_site_csv(site_path(data_dir, site), SCHEMA, missing="drop")


def load_sites(data_dir: str | os.PathLike[str] | None = None) -> dict[str, SiteTable]:
    """All four hospitals, in ``SITES`` order."""
    return {site: load_site(data_dir, site) for site in SITES}
