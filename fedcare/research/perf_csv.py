"""``fedcare perf-csv``: the CSV check's time and peak memory against ``pandas.read_csv``.

A heart-disease-shaped CSV of about ``megabytes`` MB is generated (seeded; about 2 % of
cholesterol cells empty, the ignored columns empty, as in the real files). Each
measurement runs in a fresh Python process, so one does not inherit the other's heap:

* ``pandas.read_csv(path)`` with its defaults (the reference);
* ``fedcare``: ``load_site_csv`` (bounded read, every cell checked, rows with empty cells
  dropped) plus the data-quality report: what ``fedcare check-csv`` does before it prints.

Time is wall-clock around the call; memory is the process's peak resident set size
(Linux ``VmHWM``, reset just before the call) minus its size after imports, i.e. what the
call itself needed at its peak (``ru_maxrss`` would not do: it keeps the parent's peak
across ``exec``). Figures are medians over ``repeats`` interleaved runs. The goal (issue
16): at most 3x pandas' time and 4x its memory.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

GOAL_TIME_RATIO = 3.0
GOAL_MEMORY_RATIO = 4.0
SEED = 16
_HEART_COLUMNS = ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach",
                  "exang", "oldpeak", "slope", "ca", "thal", "num")

_PROBE = r"""
import json, sys, time
kind, path = sys.argv[1], sys.argv[2]
import pandas as pd
from fedcare.data.validate import load_site_csv
from fedcare.data.datasets.heart_disease import SCHEMA
from fedcare.data.quality import assess_quality
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
base = status("VmRSS")
start = time.perf_counter()
if kind == "pandas":
    rows = len(pd.read_csv(path))
else:
    table = load_site_csv(path, SCHEMA)
    assess_quality(table, SCHEMA)
    rows = len(table)
seconds = time.perf_counter() - start
peak = status("VmHWM")
print(json.dumps({"seconds": seconds, "peak_mib": (peak - base) / 1024, "rows": rows}))
"""


def write_heart_like_csv(path: Path, megabytes: float, *, seed: int = SEED) -> int:
    """A heart-disease-shaped CSV of about ``megabytes`` MB; returns its data rows."""
    rows = max(1, int(megabytes * 1e6 / 33.6))  # ~33.6 bytes a row
    rng = np.random.default_rng(seed)
    chol = rng.integers(120, 400, rows).astype(np.float64)
    chol[rng.random(rows) < 0.02] = np.nan
    frame = pd.DataFrame({
        "age": rng.integers(29, 78, rows), "sex": rng.integers(0, 2, rows),
        "cp": rng.integers(1, 5, rows), "trestbps": rng.integers(94, 200, rows),
        "chol": chol, "fbs": rng.integers(0, 2, rows), "restecg": rng.integers(0, 3, rows),
        "thalach": rng.integers(71, 202, rows), "exang": rng.integers(0, 2, rows),
        "oldpeak": np.round(rng.uniform(-1, 6, rows), 1), "slope": "", "ca": "", "thal": "",
        "num": rng.integers(0, 5, rows)}, columns=list(_HEART_COLUMNS))
    frame.to_csv(path, index=False, float_format="%.10g")
    return rows


def _measure(kind: str, path: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", _PROBE, kind, str(path)], check=True,
                          capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_csv_benchmark(*, megabytes: float = 50.0, repeats: int = 3,
                      work_dir: Path | None = None) -> dict[str, Any]:
    """Time and peak memory of the CSV check vs ``pandas.read_csv`` (see the module doc)."""
    if not megabytes > 0 or repeats < 1:
        raise ValueError(f"perf-csv: megabytes must be > 0 and repeats >= 1; got {megabytes}, "
                         f"{repeats}")
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        path = Path(tmp) / "heart-like.csv"
        rows = write_heart_like_csv(path, megabytes)
        size = path.stat().st_size
        samples: dict[str, list[dict[str, float]]] = {"pandas": [], "fedcare": []}
        for _ in range(repeats):
            for kind in samples:  # interleaved, so machine load hits both alike
                samples[kind].append(_measure(kind, path))
    result: dict[str, Any] = {"file-bytes": size, "rows": rows, "repeats": repeats}
    for kind, runs in samples.items():
        result[kind] = {"seconds": statistics.median(r["seconds"] for r in runs),
                        "peak-mib": statistics.median(r["peak_mib"] for r in runs),
                        "rows": runs[0]["rows"]}
    result["time-ratio"] = result["fedcare"]["seconds"] / result["pandas"]["seconds"]
    result["memory-ratio"] = result["fedcare"]["peak-mib"] / result["pandas"]["peak-mib"]
    result["goal"] = {"time-ratio": GOAL_TIME_RATIO, "memory-ratio": GOAL_MEMORY_RATIO}
    return result


def format_result(result: dict[str, Any]) -> str:
    pandas_, ours = result["pandas"], result["fedcare"]
    return "\n".join([
        f"CSV check on a {result['file-bytes'] / 1e6:.1f} MB file ({result['rows']} rows), "
        f"medians of {result['repeats']} interleaved runs, each in a fresh process:",
        f"  pandas.read_csv       {pandas_['seconds']:7.2f} s  {pandas_['peak-mib']:7.0f} MiB peak",
        f"  fedcare check         {ours['seconds']:7.2f} s  {ours['peak-mib']:7.0f} MiB peak "
        f"({ours['rows']} rows kept)",
        f"  ratio                 {result['time-ratio']:7.2f} x  {result['memory-ratio']:7.2f} x "
        f"(goal <= {GOAL_TIME_RATIO:g} x time, <= {GOAL_MEMORY_RATIO:g} x memory)",
    ])
