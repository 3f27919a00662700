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

* ``personalised (refined, chosen on validation)``: with ``local-refinement =
  "site-only"`` each site also chooses, on validation rows carved from its own training
  rows, among the DP models and models of its own rows trained WITHOUT DP (kept at the site:
  fedcare.site.refinement); ``personalised variant: X`` is each candidate X scored alone;
* ``per-site majority prior``: each site predicts its training rows' majority class.

With ``epsilons``, each budget runs the settings ``fedcare plan`` gives for it
(fedcare.research.heart_plan, tuned on split 43) plus the personalisation settings below;
the non-private local-only model is the same at every budget (TUNED, Dense 64-32).

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
from fedcare.common.personalised import CANDIDATES
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
REFINED = "personalised (refined, chosen on validation)"
LOCAL = "local only (no privacy)"
LOCAL_DP = "local only (DP, same eps)"
PRIOR = "per-site majority prior (reference)"
VARIANT = "personalised variant: "
SETTINGS = (GLOBAL, PERSONAL, REFINED, *(VARIANT + c for c in CANDIDATES), LOCAL, LOCAL_DP,
            PRIOR)
#: Site-only refinement in the benchmark's runs (the simulation's sites allow it).
REFINE: dict[str, Any] = {"local-refinement": "site-only"}


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
    rows = [_row(label, {s: _number(r[key]["accuracy"]) for s, r in section.items()},
                 {s: _number(r[key]["auc"]) for s, r in section.items()}, epsilon=eps)
            for label, key in ((GLOBAL, "global"), (PERSONAL, "personalised"))]
    refined = {s: r["refined"] for s, r in section.items() if r.get("refined")}
    if refined:
        rows.append(_row(REFINED, {s: _number(r["accuracy"]) for s, r in refined.items()},
                         {s: _number(r["auc"]) for s, r in refined.items()}, epsilon=eps,
                         choice={s: r["choice"] for s, r in refined.items()}))
        for candidate in CANDIDATES:
            scored = {s: r["candidates"][candidate] for s, r in refined.items()
                      if candidate in r["candidates"]}
            if scored:
                rows.append(_row(VARIANT + candidate,
                                 {s: _number(m["accuracy"]) for s, m in scored.items()},
                                 {s: _number(m["auc"]) for s, m in scored.items()},
                                 epsilon=eps))
    return rows


def prior_row(sites: Sequence[SiteData]) -> dict[str, Any]:
    """Each site predicts its training majority class (AUC of a constant: undefined)."""
    from fedcare.research.heart_plan import majority_prior

    prior = majority_prior(sites)
    return _row(PRIOR, prior, {s: math.nan for s in prior})


def local_dp_row(config: RunConfig, sites: Sequence[SiteData]) -> dict[str, Any]:
    """Each site alone, DP-SGD at the same calibrated noise and steps as in the run."""
    from fedcare.research.heart_benchmark import fresh_trainer
    from fedcare.site.site import noise_multiplier_for
    from fedcare.site.training import DPSettings, derive_seed

    trainer, init = fresh_trainer(config, input_dim=sites[0].x_train.shape[1])
    acc, auc = {}, {}
    # The whole target spent on the local model's own steps (no fine-tuning to pay for).
    alone = config.replace(finetune_epochs=0, finetune_budget_share=0.0, local_refinement="dp")
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


def budget_settings(overrides: Mapping[str, Any], epsilon: float | None) -> dict[str, Any]:
    """The run settings at one budget: ``fedcare plan``'s for it (None: TUNED's as before),
    the personalisation settings, site-only refinement, then the caller's overrides."""
    if epsilon is None:
        return {**PERSONALISED, **overrides}
    from fedcare.research.heart_plan import plan_for, plan_settings

    return {**plan_settings(plan_for("heart-disease", epsilon), epsilon), **PERSONALISED,
            **REFINE, **overrides, "target-epsilon": epsilon}


@one_engine_session  # Ray and the site workers start once for all runs
def run_personalisation_benchmark(overrides: Mapping[str, Any], *, split_seeds: Sequence[int],
                                  seeds: Sequence[int], output: Path | None = None,
                                  run_prefix: str = "heart-personal",
                                  epsilons: Sequence[float | None] = (None,)) -> dict[str, Any]:
    """Every (budget, split seed, run seed): global, personalised (and, with a budget, the
    refined choice and each candidate), local-only (plain and DP), the majority prior."""
    settings = {**PERSONALISED, **overrides}
    rows: list[dict[str, Any]] = []
    for split_seed in split_seeds:
        for seed in seeds:
            config = protocol_config(settings, split_seed=split_seed, seed=seed)
            sites = load_sites(config)
            tag: dict[str, Any] = {"split-seed": split_seed, "seed": seed}
            own = {r["setting"].removeprefix("local only: "): r for r in
                   centralized_rows(config, sites) if "own-site-accuracy" in r}
            rows.append({**_row(LOCAL, {s: r["own-site-accuracy"] for s, r in own.items()},
                                {s: r["own-site-auc"] for s, r in own.items()}), **tag})
            rows.append({**prior_row(sites), **tag})
            for epsilon in epsilons:
                budget = protocol_config(budget_settings(overrides, epsilon),
                                         split_seed=split_seed, seed=seed)
                at = {**tag, "target-epsilon": budget.target_epsilon}
                rows.append({**local_dp_row(budget, sites), **at})
                name = (f"{budget.run_name or run_prefix}-"
                        + (f"eps{epsilon:g}-" if epsilon is not None else "")
                        + f"split{split_seed}-seed{seed}")
                rows += [{**row, **at}
                         for row in federated_rows(budget.replace(run_name=name))]
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
            "table": format_personal_table(rows) + "\n\n" + format_against_local(rows)}


def _write(output: Path, settings: Mapping[str, Any], split_seeds: Sequence[int],
           seeds: Sequence[int], rows: list[dict[str, Any]]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(_result(settings, split_seeds, seeds, rows), indent=2,
                                 default=str))


def format_personal_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: per budget and setting, mean ± std over all (split, seed) runs of each site's
    accuracy and AUC on its own held-out rows, and of their mean over sites. Rows without a
    budget (the non-private local-only model, the prior) are shown once, under every budget
    they were run beside."""
    budgets = sorted({r["target-epsilon"] for r in rows if r.get("target-epsilon") is not None})
    if len(budgets) <= 1:
        return _one_table(rows)
    parts = []
    for eps in budgets:
        ran = {(r.get("split-seed"), r.get("seed")) for r in rows
               if r.get("target-epsilon") == eps}
        mine = [r for r in rows if r.get("target-epsilon") == eps or (
            r.get("target-epsilon") is None and (r.get("split-seed"), r.get("seed")) in ran)]
        parts.append(f"eps = {eps:g} per site (whole run, what leaves the site):\n\n"
                     + _one_table(mine))
    return "\n\n".join(parts)


def _one_table(rows: Sequence[Mapping[str, Any]]) -> str:
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


def format_against_local(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown, per budget: each site's refined personalised accuracy against its non-private
    local-only model (mean over the runs that have both), and each split's mean site accuracy
    (mean over run seeds) of global, refined and local-only: the issue's targets."""
    budgets = sorted({r["target-epsilon"] for r in rows if r.get("target-epsilon") is not None})
    local = {(r["split-seed"], r["seed"]): r for r in rows if r["setting"] == LOCAL}
    splits = sorted({r["split-seed"] for r in rows if "split-seed" in r},
                    key=lambda s: (s != 43, s))  # 43 (the tuning split) first
    parts = []
    for eps in budgets:
        refined = [r for r in rows if r["setting"] == REFINED and r.get("target-epsilon") == eps
                   and (r["split-seed"], r["seed"]) in local]
        if not refined:
            continue
        lines = [f"eps = {eps:g}: refined personalised vs local only (no privacy), accuracy on "
                 f"each site's own test rows, mean over {len(refined)} runs", "",
                 "| site | refined | local only | refined - local only | runs refined >= local |",
                 "| --- | --- | --- | --- | --- |"]
        for site in [*SITES, "mean over sites"]:
            def acc(row: Mapping[str, Any], site: str = site) -> float:
                return float(row["mean-site-accuracy"] if site == "mean over sites"
                             else row["site-accuracy"].get(site, math.nan))
            pairs = [(acc(r), acc(local[(r["split-seed"], r["seed"])])) for r in refined]
            pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
            if not pairs:
                continue
            mine, theirs = (statistics.fmean(p[i] for p in pairs) for i in (0, 1))
            lines.append(f"| {site} | {mine:.3f} | {theirs:.3f} | {mine - theirs:+.3f} | "
                         f"{sum(a >= b for a, b in pairs)}/{len(pairs)} |")
        lines += ["", "| model | " + " | ".join(f"split {s}" for s in splits) + " |",
                  "|" + " --- |" * (len(splits) + 1)]
        for setting in (GLOBAL, PERSONAL, REFINED, LOCAL, PRIOR):
            cells = []
            for split in splits:
                group = [r["mean-site-accuracy"] for r in rows
                         if r["setting"] == setting and r.get("split-seed") == split
                         and r.get("target-epsilon") in (None, eps)]
                cells.append(f"{statistics.fmean(group):.3f}" if group else "-")
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# ------------------------------------------------------------------------- merging parts


def run_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a row is a figure of: (setting, split seed, run seed, budget or None)."""
    return (row["setting"], row.get("split-seed"), row.get("seed"), row.get("target-epsilon"))


def _same_figures(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    def figures(row: Mapping[str, Any]) -> list[tuple[str, str, float]]:
        return sorted((key, site, _number(value)) for key in ("site-accuracy", "site-auc")
                      for site, value in row.get(key, {}).items())

    left, right = figures(a), figures(b)
    return len(left) == len(right) and all(
        k1 == k2 and s1 == s2 and (v1 == v2 or (math.isnan(v1) and math.isnan(v2)))
        for (k1, s1, v1), (k2, s2, v2) in zip(left, right, strict=True))


def merge_rows(parts: Sequence[Sequence[Mapping[str, Any]]]
               ) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    """The rows of several runs of the command (e.g. parts run in parallel, or a stopped run
    resumed), each (setting, split seed, run seed, budget) once: the first part's copy.

    Budget-free rows (the non-private local-only model, the prior) are made again by every
    part that ran their (split seed, run seed); the second list names the keys whose later
    copies had other figures (so a caller can say so instead of hiding it)."""
    kept: dict[tuple[Any, ...], dict[str, Any]] = {}
    differ: list[tuple[Any, ...]] = []
    for rows in parts:
        for row in rows:
            key = run_key(row)
            if key not in kept:
                kept[key] = dict(row)
            elif not _same_figures(kept[key], row) and key not in differ:
                differ.append(key)
    return list(kept.values()), differ


def runs_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """Which (split seed, run seed) runs each budget holds, from its global-model rows:
    ``eps 3: 13 runs (split 43 seed 0, ...)``."""
    budgets = sorted({r["target-epsilon"] for r in rows if r.get("target-epsilon") is not None})
    parts = []
    for eps in budgets:
        runs = sorted({(r["split-seed"], r["seed"]) for r in rows
                       if r["setting"] == GLOBAL and r.get("target-epsilon") == eps},
                      key=lambda run: (run[0] != 43, run[0], run[1]))  # 43 (tuning) first
        parts.append(f"eps {eps:g}: {len(runs)} runs ("
                     + ", ".join(f"split {s} seed {seed}" for s, seed in runs) + ")")
    return "; ".join(parts)


def merge_result_files(paths: Sequence[Path]) -> dict[str, Any]:
    """``fedcare benchmark-heart-personal --merge``: the result files' rows merged
    (:func:`merge_rows`), the runs each budget holds, and the command's own tables."""
    from fedcare.common.errors import ConfigError

    parts, problems = [], []
    for path in paths:
        try:  # our own result files: JSON (NaN stands for an undefined AUC), never pickle
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            problems.append(f"benchmark-heart-personal: --merge file must be a readable "
                            f"results JSON; got {path} ({err})")
            continue
        if not (isinstance(data, dict) and isinstance(data.get("rows"), list)):
            problems.append(f"benchmark-heart-personal: --merge file must hold a 'rows' "
                            f"list (a results JSON of this command); got {path}")
            continue
        parts.append(data["rows"])
    if problems:
        raise ConfigError(problems)
    rows, differ = merge_rows(parts)
    return {"rows": rows, "runs": runs_summary(rows),
            "merged-from": [str(p) for p in paths],
            "differing-copies": [list(key) for key in differ],
            "table": format_personal_table(rows) + "\n\n" + format_against_local(rows)}
