"""Hand-made sweep cell results (the shape ``sweep.run_cell`` caches), for table and plot tests."""

from __future__ import annotations

from typing import Any

from fedcare.research.sweep import BASELINES, FEDERATED, Cell


def federated_result(cell: Cell, *, accuracy: float, sites: tuple[str, ...] = ("a", "b"),
                     eps_spent: float | None = None) -> dict[str, Any]:
    site_rows = {s: {"accuracy": accuracy + 0.01 * i, "auc": 0.8, "epsilon": eps_spent,
                     "delta": 1e-3 if eps_spent is not None else None,
                     "train-rows": 10, "test-rows": 5} for i, s in enumerate(sites)}
    mean = sum(r["accuracy"] for r in site_rows.values()) / len(sites)
    return {"key": cell.key, "kind": FEDERATED, "labels": dict(cell.labels),
            "num-sites": cell.num_sites, "settings": dict(cell.settings), "seconds": 1.0,
            "final": {"mean-site-accuracy": mean, "mean-site-auc": 0.8, "pooled-accuracy": mean},
            "sites": site_rows,
            "rounds": [{"round": r, "seconds": 0.1, "mean-site-accuracy": mean * r / 2,
                        "mean-site-auc": 0.8, "pooled-accuracy": mean} for r in (1, 2)]}


def baselines_result(cell: Cell, *, sites: tuple[str, ...] = ("a", "b"),
                     own: float = 0.7) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [
        {"setting": "pooled (no privacy)", "mean-site-accuracy": 0.9,
         "site-accuracy": dict.fromkeys(sites, 0.9), "site-auc": dict.fromkeys(sites, 0.95),
         "mean-site-auc": 0.95, "pooled-accuracy": 0.9, "epsilon": {}}]
    for s in sites:
        rows.append({"setting": f"local only: {s}", "mean-site-accuracy": 0.6,
                     "site-accuracy": {t: (own if t == s else 0.5) for t in sites},
                     "site-auc": dict.fromkeys(sites, 0.7), "mean-site-auc": 0.7,
                     "pooled-accuracy": 0.6, "epsilon": {}, "own-site-accuracy": own,
                     "own-site-auc": 0.75})
    return {"key": cell.key, "kind": BASELINES, "labels": dict(cell.labels),
            "num-sites": cell.num_sites, "settings": dict(cell.settings), "seconds": 0.5,
            "rows": rows}


def fake_result(cell: Cell, sites: tuple[str, ...] = ("a", "b")) -> dict[str, Any]:
    """A plausible result for any cell: accuracy rises with epsilon; no DP is best."""
    if cell.kind == BASELINES:
        return baselines_result(cell, sites=sites)
    eps = cell.labels.get("epsilon")
    accuracy = 0.85 if eps is None else 0.6 + 0.02 * min(eps, 10) + 0.001 * cell.labels["seed"]
    return federated_result(cell, accuracy=accuracy, sites=sites, eps_spent=eps)
