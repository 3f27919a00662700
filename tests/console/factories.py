"""Run folders shaped like the ServerApp's, for console tests (no Flower, no model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.privacy import LedgerEntry, PrivacyLedger
from fedcare.privacy.accounting import RoundSpend
from fedcare.site.audit import SiteAuditLog

DELTA = 1e-3
BUDGET = 5.0
SPEND = RoundSpend(sampling_rate=0.1, noise_multiplier=1.1, steps=30)


def round_record(n: int, sites: dict[str, float], *, failures: list[dict[str, Any]] | None = None,
                 rejected: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Round ``n`` where each site in ``sites`` trained and reports ``epsilon-run`` = value;
    its lifetime ``epsilon`` is value + 1 (one earlier run's spend), accuracy 0.5 + n/100."""
    return {
        "round": n, "seconds": 1.0,
        "train": {s: {"num-examples": 100, "epsilon": eps + 1.0, "epsilon-run": eps,
                      "delta": DELTA, "audit-hash": f"{n:02d}" + "ab" * 31}
                  for s, eps in sites.items()},
        "evaluate": {s: {"num-examples": 50, "accuracy": 0.5 + n / 100, "auc": 0.6}
                     for s in sites},
        "failures": failures or [], "rejected": rejected or [], "capped-example-counts": {},
        "update-norms": {},
        "global": {"mean-site-accuracy": 0.5 + n / 100, "pooled-accuracy": 0.5 + n / 100,
                   "mean-site-auc": 0.6},
    }


def config(rounds: int) -> dict[str, Any]:
    return {"num-rounds": rounds, "dataset": "breast-cancer", "strategy": "fedavg",
            "dp-mode": "target-epsilon", "epsilon-budget": BUDGET, "accountant": "rdp",
            "sampling": "poisson"}


def write_running(root: Path, name: str, rounds: list[dict[str, Any]], planned: int) -> Path:
    """What a run folder holds mid-run: resume.json after the last completed round."""
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "resume.json").write_text(json.dumps({
        "round": len(rounds), "report": {"rounds": rounds, "privacy": {}},
        "config": config(planned)}))
    return run


def write_finished(root: Path, name: str, rounds: list[dict[str, Any]],
                   extra: dict[str, Any] | None = None) -> Path:
    """A finished run: report.json (its ``sites`` table as the ServerApp writes it)."""
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    last = rounds[-1]
    sites = {s: {"train-rows": m["num-examples"], "epsilon": m["epsilon"], "delta": DELTA,
                 "accuracy": last["evaluate"][s]["accuracy"], "auc": 0.6}
             for s, m in last["train"].items()}
    report = {"format": "fedcare-run-report", "version": 1, "run": name, "seconds": 9.0,
              "config": config(len(rounds)), "sites": sites, "privacy": {}, "final": {},
              "rounds": rounds, **(extra or {})}
    (run / "report.json").write_text(json.dumps(report))
    (run / "model.json").write_text("{}")
    return run


def make_site(state_dir: Path, rounds: int, site: str = "north") -> None:
    """``rounds`` rounds in the ledger and the audit log, as a site writes them."""
    ledger = PrivacyLedger(state_dir, site=site)
    audit = SiteAuditLog(state_dir, site=site)
    for n in range(1, rounds + 1):
        ledger.record(LedgerEntry(run_id="r1", server_round=n,
                                  recorded_at=f"2026-01-01T00:00:0{n}Z", spend=SPEND,
                                  clip_norm=1.0, num_examples=300),
                      delta=DELTA, budget=100.0)
        audit.append(run_id="r1", server_round=n, server="sim", sent=[np.ones(3) * n],
                     received=[np.zeros(3)], epsilon_round=0.1, epsilon_total=0.1 * n,
                     delta=DELTA, accountant="rdp", train_rows=300)
