"""Heart-disease protocol, personalised: does every hospital gain by joining?

For each (split seed, run seed), on the protocol of :mod:`heart_benchmark`, each site's
own held-out rows score four models (accuracy at 0.5 and ROC AUC):

* ``global``: the federated DP model shared by all sites (the FLamby metric);
* ``personalised``: the same run's global model plus the site's private logit offset
  (trained in the same DP steps, then optionally fine-tuned under DP), i.e. what the
  site's ``fedcare predict`` uses. Both come from ONE Flower simulation; each site's
  epsilon (whole run, including fine-tuning) is at most the target;
* ``local only (no privacy)``: the site trains alone on its train rows, no DP, the
  same number of full-batch epochs (heart_benchmark's own-site figure);
* ``local only (DP, same eps)``: the site trains alone under DP-SGD calibrated to the
  same whole-run epsilon and delta, for the rounds' number of steps (all of its budget
  on its own model: no fine-tuning to pay for).

The primary figure is the unweighted mean over the four sites.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcare.common.config import RunConfig
from fedcare.data.datasets import SiteData
from fedcare.data.datasets.heart_disease import SITES
from fedcare.research.cluster import one_engine_session
from fedcare.research.heart_benchmark import (
    PROTOCOL,
    TUNED,
    centralized_rows,
    load_sites,
    mean_std,
    protocol_config,
)

# Chosen on split seed 43 only (docs/personalisation.md).
PERSONALISED: dict[str, Any] = {"personalisation": "offset", "offset-learning-rate": 2.0,
                                 "offset-averaging": "tail", "finetune-epochs": 1,
                                 "finetune-scope": "private", "finetune-budget-share": 0.2,
                                 "finetune-learning-rate": 6.0}
GLOBAL = "global (FedAvg + DP)"
PERSONAL = "personalised (global + private offset)"
LOCAL = "local only (no privacy)"
LOCAL_DP = "local only (DP, same eps)"
SETTINGS = (GLOBAL, PERSONAL, LOCAL, LOCAL_DP)


def _row(setting: str, acc: Mapping[str, float], auc: Mapping[str, float],
         **extra: Any) -> dict[str, Any]:
    aucs = [v for v in auc.values() if math.isfinite(v)]
    return {"setting": setting, "site-accuracy": dict(acc), "site-auc": dict(auc),
            "mean-site-accuracy": statistics.fmean(acc.values()),
            "mean-site-auc": statistics.fmean(aucs) if aucs else math.nan, **extra}


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def federated_rows(config: RunConfig) -> list[dict[str, Any]]:
    """One simulation: the global and the personalised model at each site."""
    from fedcare.research.run import run_simulation

    report = run_simulation(config, num_sites=len(SITES))
    section = report["personalisation"]["sites"]
    eps = {s: r["epsilon"] for s, r in report["sites"].items() if r.get("epsilon") is not None}
    return [_row(label, {s: _number(r[key]["accuracy"]) for s, r in section.items()},
                 {s: _number(r[key]["auc"]) for s, r in section.items()}, epsilon=eps)
            for label, key in ((GLOBAL, "global"), (PERSONAL, "personalised"))]


def local_dp_row(config: RunConfig, sites: Sequence[SiteData]) -> dict[str, Any]:
    """Each site alone, DP-SGD at the same calibrated noise and steps as in the run."""
    from fedcare.research.heart_benchmark import fresh_trainer
    from fedcare.site.site import noise_multiplier_for
    from fedcare.site.training import DPSettings, derive_seed

    trainer, init = fresh_trainer(config, input_dim=sites[0].x_train.shape[1])
    acc, auc = {}, {}
    # The whole target spent on the local model's own steps (no fine-tuning to pay for).
    alone = config.replace(finetune_epochs=0, finetune_budget_share=0.0)
    for site in sites:
        sigma = noise_multiplier_for(alone, len(site.y_train))
        trainer.set_weights(init)
        trainer.train(site.x_train, site.y_train,
                      epochs=config.num_rounds * config.local_epochs,
                      batch_size=config.batch_size, learning_rate=config.learning_rate,
                      dp=DPSettings(noise_multiplier=sigma, clip_norm=config.clip_norm),
                      proximal_mu=0.0, sampling_seed=derive_seed(config.seed, site.name, "local"),
                      noise_seed=derive_seed(config.seed, site.name, "local-noise"))
        result = trainer.evaluate(site.x_test, site.y_test)
        acc[site.name], auc[site.name] = result.accuracy, result.auc
    return _row(LOCAL_DP, acc, auc)


@one_engine_session  # Ray and the site workers start once for all runs
def run_personalisation_benchmark(overrides: Mapping[str, Any], *, split_seeds: Sequence[int],
                                  seeds: Sequence[int], output: Path | None = None,
                                  run_prefix: str = "heart-personal") -> dict[str, Any]:
    """Every (split seed, run seed): global, personalised, local-only (plain and DP)."""
    settings = {**PERSONALISED, **overrides}
    rows: list[dict[str, Any]] = []
    for split_seed in split_seeds:
        for seed in seeds:
            config = protocol_config(settings, split_seed=split_seed, seed=seed)
            sites = load_sites(config)
            tag = {"split-seed": split_seed, "seed": seed}
            own = {r["setting"].removeprefix("local only: "): r for r in
                   centralized_rows(config, sites) if "own-site-accuracy" in r}
            rows.append({**_row(LOCAL, {s: r["own-site-accuracy"] for s, r in own.items()},
                                {s: r["own-site-auc"] for s, r in own.items()}), **tag})
            rows.append({**local_dp_row(config, sites), **tag})
            name = f"{config.run_name or run_prefix}-split{split_seed}-seed{seed}"
            rows += [{**row, **tag} for row in federated_rows(config.replace(run_name=name))]
            if output is not None:  # keep what is done if a long run is stopped
                _write(output, settings, split_seeds, seeds, rows)
    result = _result(settings, split_seeds, seeds, rows)
    if output is not None:
        _write(output, settings, split_seeds, seeds, rows)
    return result


def _result(settings: Mapping[str, Any], split_seeds: Sequence[int], seeds: Sequence[int],
            rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"protocol": PROTOCOL, "hyper-parameters": {**TUNED, **settings},
            "split-seeds": list(split_seeds), "seeds": list(seeds), "rows": rows,
            "table": format_personal_table(rows)}


def _write(output: Path, settings: Mapping[str, Any], split_seeds: Sequence[int],
           seeds: Sequence[int], rows: list[dict[str, Any]]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(_result(settings, split_seeds, seeds, rows), indent=2,
                                 default=str))


def format_personal_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: per setting, mean ± std over all (split, seed) runs of each site's accuracy
    and AUC on its own held-out rows, and of their mean over sites."""
    header = ("| model (scored on each site's own test rows) | mean site acc | "
              + " | ".join(f"{s} acc" for s in SITES) + " | mean site AUC | "
              + " | ".join(f"{s} AUC" for s in SITES) + " | runs | max site eps |")
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for setting in SETTINGS:
        group = [r for r in rows if r["setting"] == setting]
        if not group:
            continue
        eps = [max(r["epsilon"].values()) for r in group if r.get("epsilon")]
        lines.append(
            f"| {setting} | {mean_std([r['mean-site-accuracy'] for r in group])} | "
            + " | ".join(mean_std([r["site-accuracy"].get(s, math.nan) for r in group])
                         for s in SITES)
            + f" | {mean_std([r['mean-site-auc'] for r in group])} | "
            + " | ".join(mean_std([r["site-auc"].get(s, math.nan) for r in group]) for s in SITES)
            + f" | {len(group)} | {f'{max(eps):.3f}' if eps else '-'} |")
    return "\n".join(lines)
