"""The datasets' schemas, without their loaders: a process that only needs a model's
shape (the ServerApp) imports this module and :mod:`fedcare.data.schema`, not pandas.
The loaders (:mod:`fedcare.data.datasets`) use the same objects."""

from __future__ import annotations

from fedcare.data.schema import Column, TabularSchema

# (name, maximum): maximum = 10 x the data set's largest value, rounded up.
_FEATURES: tuple[tuple[str, float], ...] = (
    ("mean_radius", 300),
    ("mean_texture", 400),
    ("mean_perimeter", 2000),
    ("mean_area", 30000),
    ("mean_smoothness", 2),
    ("mean_compactness", 4),
    ("mean_concavity", 5),
    ("mean_concave_points", 3),
    ("mean_symmetry", 4),
    ("mean_fractal_dimension", 1),
    ("radius_error", 30),
    ("texture_error", 50),
    ("perimeter_error", 300),
    ("area_error", 6000),
    ("smoothness_error", 0.4),
    ("compactness_error", 2),
    ("concavity_error", 4),
    ("concave_points_error", 0.6),
    ("symmetry_error", 0.8),
    ("fractal_dimension_error", 0.3),
    ("worst_radius", 400),
    ("worst_texture", 500),
    ("worst_perimeter", 3000),
    ("worst_area", 50000),
    ("worst_smoothness", 3),
    ("worst_compactness", 20),
    ("worst_concavity", 20),
    ("worst_concave_points", 3),
    ("worst_symmetry", 7),
    ("worst_fractal_dimension", 3),
)

BREAST_CANCER = TabularSchema(
    name="breast-cancer",
    features=tuple(
        Column(name=name, kind="numeric", minimum=0, maximum=maximum)
        for name, maximum in _FEATURES
    ),
    label=Column(name="diagnosis_malignant", kind="binary"),
    label_threshold=None,
)

HEART_DISEASE = TabularSchema(
    name="heart-disease",
    features=(
        Column(name="age", kind="numeric", minimum=0, maximum=120, optional=True,
               clinical_range=(1, 110)),
        Column(name="sex", kind="binary", optional=True),
        Column(name="cp", kind="categorical", categories=(1, 2, 3, 4), optional=True),
        Column(name="trestbps", kind="numeric", minimum=0, maximum=300, optional=True,
               clinical_range=(50, 250)),
        Column(name="chol", kind="numeric", minimum=0, maximum=1000, optional=True,
               clinical_range=(70, 700), zero_means_not_measured=True),
        Column(name="fbs", kind="binary", optional=True),
        Column(name="restecg", kind="categorical", categories=(0, 1, 2), optional=True),
        Column(name="thalach", kind="numeric", minimum=0, maximum=250, optional=True,
               clinical_range=(40, 230)),
        Column(name="exang", kind="binary", optional=True),
        Column(name="oldpeak", kind="numeric", minimum=-10, maximum=10, optional=True),
    ),
    label=Column(name="num", kind="numeric", minimum=0, maximum=4),
    label_threshold=0,
    ignored_columns=("slope", "ca", "thal"),
)

# (column, minimum, maximum, centre, spread, sign of the score's shift for outcome 1)
SYNTHETIC_NUMERIC: tuple[tuple[str, float, float, float, float, float], ...] = (
    ("age", 0, 120, 55, 9, 1),
    ("trestbps", 0, 300, 132, 18, 1),
    ("chol", 0, 1000, 240, 50, 1),
    ("thalach", 0, 250, 138, 23, -1),
    ("oldpeak", -10, 10, 1.0, 1.1, 1),
)
SYNTHETIC_BINARY: tuple[tuple[str, float], ...] = (("sex", 1), ("fbs", 1), ("exang", 1))
SYNTHETIC_CATEGORICAL: tuple[tuple[str, tuple[float, ...], float], ...] = (
    ("cp", (1, 2, 3, 4), 1), ("restecg", (0, 1, 2), 1))

SYNTHETIC = TabularSchema(
    name="synthetic",
    features=(
        *(Column(name=name, kind="numeric", minimum=low, maximum=high)
          for name, low, high, *_ in SYNTHETIC_NUMERIC),
        *(Column(name=name, kind="binary") for name, _ in SYNTHETIC_BINARY),
        *(Column(name=name, kind="categorical", categories=cats)
          for name, cats, _ in SYNTHETIC_CATEGORICAL),
    ),
    label=Column(name="outcome", kind="binary"),
    label_threshold=None,
)

SCHEMAS: dict[str, TabularSchema] = {s.name: s for s in (BREAST_CANCER, HEART_DISEASE, SYNTHETIC)}


def schema_for(dataset: str) -> TabularSchema:
    """The schema of a named dataset."""
    try:
        return SCHEMAS[dataset]
    except KeyError:
        raise ValueError(f"dataset must be one of {', '.join(SCHEMAS)}; got {dataset!r}"
                         ) from None
