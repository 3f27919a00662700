"""Views of run reports for comparing two runs: what they found, without timings and ids."""

from __future__ import annotations

import math
from typing import Any


def rounded(value: Any) -> Any:
    """Floats to 12 significant digits: sums over sites may add in another order."""
    if isinstance(value, float) and math.isfinite(value) and value:
        return round(value, 11 - math.floor(math.log10(abs(value))))
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def science(report: dict[str, Any]) -> dict[str, Any]:
    """What a run found, without timings, ids and the engine's placement."""
    def by_site(train: dict[str, Any]) -> dict[str, Any]:
        return {site: {k: v for k, v in m.items() if k in ("num-examples", "steps", "epsilon",
                                                           "noise-multiplier")}
                for site, m in train.items()}

    return rounded({"sites": report["sites"], "final": report["final"],
                     "privacy": report["privacy"],
                     "rounds": [{"train": by_site(r["train"]), "global": r.get("global")}
                                for r in report["rounds"]]})
