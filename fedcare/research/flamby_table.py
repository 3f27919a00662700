"""The heart-disease protocol as a table laid out like FLamby's (BENCHMARK.md).

Rows: pooled training, each site's local-only model, FedAvg, FedProx, FedAdam, FedYogi,
and FedAvg with DP at eps in {0.1, 1, 3, 10} (each site's whole-run figure, delta 1e-3).
Every figure is the mean and standard deviation over all runs (split seeds x run seeds)
of the protocol's primary metric, the unweighted mean of per-site test accuracies of the
global model. Hyper-parameters are heart_benchmark's ``TUNED`` (chosen for FedAvg on
split 43 only) for every row, except the "FedAvg with DP (fedcare plan)" rows at eps in
{0.1, 0.5, 1, 3}, which run ``fedcare plan``'s budget-aware settings (issue 17), and the
per-site majority prior (each site predicts its training majority class; no training), a
reference row. Cells are the sweep's: cached, so a rerun resumes.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError
from fedcare.common.files import write_json_atomic, write_text_atomic
from fedcare.data.datasets.heart_disease import SITES
from fedcare.privacy.config import DEFAULT_ACCOUNTANT
from fedcare.research.heart_benchmark import PROTOCOL, TUNED, mean_std
from fedcare.research.sweep import (
    BASELINES,
    FEDERATED,
    TIDY_COLUMNS,
    Cell,
    Progress,
    plot_all,
    round_rows,
    run_cells,
    tidy_rows,
    with_privacy,
    write_csv,
)

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi")
DP_EPSILONS = (0.1, 1.0, 3.0, 10.0)
#: Budgets of the "FedAvg with DP (fedcare plan)" rows: `fedcare plan`'s settings for each.
PLAN_EPSILONS = (0.1, 0.5, 1.0, 3.0)
PRIOR = "per-site majority prior (reference)"
#: The table's row groups, in its order: ``--rows`` runs only some of them (the prior
#: involves no training and is always computed).
ROW_GROUPS = ("baselines", "strategies", "dp", "plan", "prior")
#: The accountant of a result recorded before issue 17 (no "accountant" key): RDP.
LEGACY_ACCOUNTANT = "rdp"
DEFAULT_SPLIT_SEEDS = (43, 0, 1, 2, 3)
STRATEGY_NAMES = {"fedavg": "FedAvg", "fedprox": "FedProx", "fedadam": "FedAdam",
                  "fedyogi": "FedYogi"}
# BENCHMARK.md's published figures (logistic regression, one split, FLamby).
FLAMBY = {"pooled training": "0.747", "local only: cleveland": "0.735",
          "local only: hungary": "0.648", "local only: switzerland": "0.550",
          "local only: va-long-beach": "0.632", "FedAvg": "0.698", "FedProx": "0.698",
          "FedAdam": "0.736", "FedYogi": "0.741",
          "FedAvg with DP, eps = 0.1, delta = 1e-3": "0.606 (at delta = 1e-4)",
          "FedAvg with DP, eps = 1, delta = 1e-3": "0.702"}


def check_row_groups(groups: Sequence[str]) -> tuple[str, ...]:
    """``groups`` in the table's order; ``ConfigError`` naming any unknown one."""
    unknown = [g for g in groups if g not in ROW_GROUPS]
    if unknown or not groups:
        raise ConfigError([f"benchmark-heart-table: rows must be one or more of "
                           f"{', '.join(ROW_GROUPS)}; got {', '.join(unknown) or 'none'}"])
    return tuple(g for g in ROW_GROUPS if g in groups)


def row_group(setting: str) -> str:
    """The row group (:data:`ROW_GROUPS`) a table row belongs to."""
    if setting == "pooled training" or setting.startswith("local only: "):
        return "baselines"
    if setting in STRATEGY_NAMES.values():
        return "strategies"
    if setting == PRIOR:
        return "prior"
    return "plan" if "(fedcare plan" in setting else "dp"


def table_cells(overrides: Mapping[str, Any], *, split_seeds: Sequence[int],
                seeds: Sequence[int], rows: Sequence[str] = ROW_GROUPS) -> list[Cell]:
    """The cells of the row groups ``rows`` for every (split seed, run seed)."""
    from fedcare.research.heart_plan import plan_for, plan_settings

    groups = check_row_groups(rows)
    cells = []
    base = RunConfig.from_mapping({**PROTOCOL, **TUNED, **overrides})
    for split_seed in split_seeds:
        for seed in seeds:
            data = base.replace(split_seed=split_seed, seed=seed)
            labels = {"partitioning": "natural", "dirichlet-alpha": None,
                      "split-seed": split_seed, "seed": seed}
            if "baselines" in groups:
                cells.append(Cell(BASELINES, data.replace(dp_mode="off"), len(SITES), labels))
            for strategy in STRATEGIES if "strategies" in groups else ():
                cells.append(Cell(FEDERATED, with_privacy(data.replace(strategy=strategy), None),
                                  len(SITES), {**labels, "strategy": strategy, "epsilon": None}))
            for eps in DP_EPSILONS if "dp" in groups else ():
                cells.append(Cell(FEDERATED, with_privacy(data.replace(strategy="fedavg"), eps),
                                  len(SITES), {**labels, "strategy": "fedavg", "epsilon": eps}))
            for eps in PLAN_EPSILONS if "plan" in groups else ():
                plan = plan_for("heart-disease", eps)
                planned = RunConfig.from_mapping({
                    **data.to_run_config(), **plan_settings(plan, eps), "strategy": "fedavg",
                    "dp-mode": "target-epsilon"})
                cells.append(Cell(FEDERATED, planned, len(SITES),
                                  {**labels, "strategy": "fedavg", "epsilon": eps,
                                   "plan": plan.model}))
    return cells


def setting_of(result: Mapping[str, Any]) -> str:
    lab = result["labels"]
    name = STRATEGY_NAMES.get(lab["strategy"], lab["strategy"])
    if lab.get("epsilon") is None:
        return name
    delta = float(result["settings"].get("delta", TUNED["delta"]))
    if lab.get("plan"):
        return (f"{name} with DP (fedcare plan: {lab['plan']}), eps = {lab['epsilon']:g}, "
                f"delta = {_short(delta)}")
    return f"{name} with DP, eps = {lab['epsilon']:g}, delta = {_short(delta)}"


def _short(x: float) -> str:
    """1e-3, not 0.001 or 1e-03: as BENCHMARK.md writes a delta."""
    mantissa, _, exponent = f"{x:.0e}".partition("e")
    return f"{mantissa}e{int(exponent)}"


def collect(results: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per table row, one record per run: mean site accuracy, per-site accuracy, AUC, eps."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        run = {"split-seed": result["labels"]["split-seed"], "seed": result["labels"]["seed"]}
        if result["kind"] == BASELINES:
            for row in result["rows"]:
                setting = ("pooled training" if row["setting"].startswith("pooled")
                           else row["setting"])
                rows.setdefault(setting, []).append({
                    **run, "mean-site-accuracy": row["mean-site-accuracy"],
                    "site-accuracy": row["site-accuracy"], "mean-site-auc": row["mean-site-auc"],
                    "own-site-accuracy": row.get("own-site-accuracy")})
            continue
        final, sites = result["final"], result["sites"]
        spent = [s["epsilon"] for s in sites.values() if s.get("epsilon") is not None]
        rows.setdefault(setting_of(result), []).append({
            **run, "mean-site-accuracy": final.get("mean-site-accuracy"),
            "site-accuracy": {name: s.get("accuracy") for name, s in sites.items()},
            "mean-site-auc": final.get("mean-site-auc"),
            "max-site-epsilon": max(spent) if spent else None})
    order = (["pooled training"] + [f"local only: {s}" for s in SITES] +
             [STRATEGY_NAMES[s] for s in STRATEGIES])
    ordered = {k: rows[k] for k in order if k in rows}
    ordered.update({k: v for k, v in rows.items() if k not in ordered})
    return ordered


def format_table(rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    header = ("| setting | FLamby | fedcare: mean site acc | " + " | ".join(SITES) +
              " | mean site AUC | own-site acc | max site eps | runs |")
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for setting, runs in rows.items():
        own = [r.get("own-site-accuracy") for r in runs if r.get("own-site-accuracy") is not None]
        eps = [r["max-site-epsilon"] for r in runs if r.get("max-site-epsilon") is not None]
        lines.append(
            f"| {setting} | {FLAMBY.get(setting, '-')} | "
            f"**{mean_std([r['mean-site-accuracy'] for r in runs])}** | "
            + " | ".join(mean_std([r["site-accuracy"].get(s) for r in runs]) for s in SITES)
            + f" | {mean_std([r['mean-site-auc'] for r in runs])} | "
            f"{mean_std(own) if own else '-'} | {f'{max(eps):.3f}' if eps else '-'} | "
            f"{len(runs)} |")
    return "\n".join(lines)


def recorded_rows(recorded: Mapping[str, Any], *, hyper_parameters: Mapping[str, Any],
                  split_seeds: Sequence[int], seeds: Sequence[int], skip: Sequence[str]
                  ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, str]]]:
    """The rows of an earlier result of this command outside the groups ``skip`` (run now),
    and each one's source (the command that ran it, its accountant). The earlier result must
    hold the same runs (split seeds, run seeds) and hyper-parameters (the accountant aside:
    each row keeps its own and the table names it); else ``ConfigError`` naming what differs."""
    problems = []
    for key, mine in (("split-seeds", list(split_seeds)), ("seeds", list(seeds))):
        if list(recorded.get(key, [])) != mine:
            problems.append(f"benchmark-heart-table: the recorded result's {key} must be "
                            f"this run's {mine}; got {recorded.get(key)}")
    theirs = dict(recorded.get("hyper-parameters", {}))
    differ = sorted(k for k in {*theirs, *hyper_parameters} - {"accountant"}
                    if theirs.get(k) != hyper_parameters.get(k))
    if differ:
        problems.append("benchmark-heart-table: the recorded result's hyper-parameters must "
                        "be this run's (accountant aside); got other " + ", ".join(
                            f"{k} ({theirs.get(k)!r} vs {hyper_parameters.get(k)!r})"
                            for k in differ))
    if problems:
        raise ConfigError(problems)
    own = {"command": str(recorded.get("command", "")),
           "accountant": str(theirs.get("accountant", LEGACY_ACCOUNTANT))}
    sources = recorded.get("sources", {})
    rows = {k: list(v) for k, v in recorded.get("rows", {}).items()
            if row_group(k) not in skip}
    return rows, {k: dict(sources.get(k, own)) for k in rows}


def in_table_order(rows: Mapping[str, Any]) -> dict[str, Any]:
    """``rows`` by row group (:data:`ROW_GROUPS`), keeping the order within each group."""
    names = sorted(rows, key=lambda name: ROW_GROUPS.index(row_group(name)))
    return {name: rows[name] for name in names}


def heart_table(overrides: Mapping[str, Any], *, split_seeds: Sequence[int],
                seeds: Sequence[int], cache_dir: Path, out: Path | None = None,
                markdown: Path | None = None, plots_dir: Path | None = None,
                command: str = "", rows: Sequence[str] = ROW_GROUPS,
                recorded: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run (or read from the cache) the cells of the row groups ``rows``; the other rows
    come from ``recorded`` (an earlier result of this command), each naming its source."""
    groups = check_row_groups(rows)
    hyper = {**TUNED, "accountant": DEFAULT_ACCOUNTANT, **overrides}
    cells = table_cells(overrides, split_seeds=split_seeds, seeds=seeds, rows=groups)
    cached = sum(1 for c in cells if (cache_dir / "cells" / f"{c.key}.json").is_file())
    results = run_cells(cells, cache_dir, progress=Progress(total=len(cells), skipped=cached))
    table_rows = collect(results)
    if "prior" in groups:
        table_rows[PRIOR] = prior_rows(overrides, split_seeds=split_seeds)
    here = {"command": command, "accountant": str(hyper["accountant"])}
    sources = {k: dict(here) for k in table_rows}
    if recorded is not None:
        carried, carried_sources = recorded_rows(recorded, hyper_parameters=hyper,
                                                 split_seeds=split_seeds, seeds=seeds,
                                                 skip=groups)
        table_rows, sources = {**carried, **table_rows}, {**carried_sources, **sources}
    table_rows = in_table_order(table_rows)
    table = format_table(table_rows)
    result = {"protocol": PROTOCOL, "hyper-parameters": hyper,
              "split-seeds": list(split_seeds), "seeds": list(seeds), "command": command,
              "rows": table_rows, "sources": in_table_order(sources), "table": table}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, result)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(markdown, render_markdown(result))
    if plots_dir is not None:  # the sweep's tidy table and plots, from the same cells
        plots_dir.mkdir(parents=True, exist_ok=True)
        tidy, by_round = tidy_rows(results), round_rows(results)
        write_csv(plots_dir / "results.csv", tidy, TIDY_COLUMNS)
        result["plots"] = [str(p) for p in plot_all(plots_dir, tidy, by_round)]
    return result


def prior_rows(overrides: Mapping[str, Any], *, split_seeds: Sequence[int]
               ) -> list[dict[str, Any]]:
    """Each site predicts its training rows' majority class: one row per split seed (it
    involves no run seed and no training)."""
    from fedcare.research.heart_benchmark import load_sites, protocol_config
    from fedcare.research.heart_plan import majority_prior

    rows = []
    for split_seed in split_seeds:
        sites = load_sites(protocol_config(overrides, split_seed=split_seed, seed=0))
        prior = majority_prior(sites)
        rows.append({"split-seed": split_seed, "seed": None, "site-accuracy": prior,
                     "mean-site-accuracy": statistics.fmean(prior.values()),
                     "mean-site-auc": None})
    return rows


def _commands_text(result: Mapping[str, Any]) -> tuple[str, str]:
    """The commands that made the table (this one first) and, when some rows come from an
    earlier result (``--recorded``), which rows each command ran, with its accountant."""
    here = (str(result["command"]),
            str(result["hyper-parameters"].get("accountant", LEGACY_ACCOUNTANT)))
    ran: dict[tuple[str, str], list[str]] = {}
    for setting, source in result.get("sources", {}).items():
        ran.setdefault((str(source["command"]), str(source["accountant"])), []).append(setting)
    commands = "\n".join(dict.fromkeys([here[0], *(command for command, _ in ran)]))
    if set(ran) <= {here}:
        return commands, ""
    lines = ["Not every row was run by the first command above: it took the others from an "
             "earlier result of the command (`--recorded`, not re-run). Rows by the command "
             "that ran them, with the accountant their DP noise was calibrated with:", ""]
    lines += [f"- `{command}` (its DP rows: {accountant.upper()} accountant): "
              + "; ".join(rows) for (command, accountant), rows in ran.items()]
    return commands, "\n".join(lines) + "\n"


def _missing_text(rows: Mapping[str, Any]) -> str:
    """A sentence naming the row groups the table has no row of (not run, not recorded)."""
    have = {row_group(name) for name in rows}
    missing = [g for g in ROW_GROUPS if g not in have]
    if not missing:
        return ""
    return ("Row groups not in this table (neither run by the command nor in a recorded "
            f"result; `--rows {','.join(missing)}` runs them): {', '.join(missing)}.\n")


def render_markdown(result: Mapping[str, Any]) -> str:
    splits = ", ".join(str(s) for s in result["split-seeds"])
    hp = result["hyper-parameters"]
    accountant = str(hp.get("accountant", LEGACY_ACCOUNTANT)).upper()
    commands, sources = _commands_text(result)
    unless = " unless listed below" if sources else ""
    return f"""# Heart disease beside FLamby's Fed-Heart-Disease table

The protocol of `../shared/data/heart-disease/BENCHMARK.md` (four hospitals, natural split,
each site's own seeded 66/34 train/test split, site-local preprocessing, label `num > 0`),
laid out like its FLamby table. Each figure is the mean ± standard deviation over
{len(result['split-seeds']) * len(result['seeds'])} runs: split seeds {splits} x run seeds
{", ".join(str(s) for s in result['seeds'])}. The primary metric is the unweighted mean over
the four sites of the global model's test accuracy; "local only: X" is X's own model scored on
all four test sets (FLamby's figure), "own-site acc" the same model on X's own test rows.

Model: fedcare's Dense {hp.get('hidden-units')} (FLamby: logistic regression).
Hyper-parameters for every row but the "fedcare plan" rows: {hp.get('num-rounds')} rounds,
{hp.get('local-epochs')} local epoch a round, batch size {hp.get('batch-size')} (full batch),
learning rate {hp.get('learning-rate')}, clip norm {hp.get('clip-norm')}; chosen for FedAvg on
split 43 only (docs/results.md), not re-tuned for FedProx/FedAdam/FedYogi (server learning
rate and proximal mu at their defaults). The "FedAvg with DP (fedcare plan: ...)" rows run
`fedcare plan`'s settings for their budget (docs/tuning-heart.md). DP rows: DP-SGD at every
site with the noise calibrated so that each site's **whole-run** epsilon is the stated target
at delta = {hp.get('delta')} ({accountant} accountant{unless}, add/remove-one
adjacency, q = 1: full batch, so no amplification by sampling);
"max site eps" is the largest figure any site spent, never an average. FLamby's eps = 0.1
row was published at delta = 1e-4; ours is at 1e-3.

Reading it:
- With full batch and one local epoch a site takes one step a round, starting at the global
  model, where FedProx's proximal term has zero gradient: FedProx and FedAvg coincide here.
- FedAdam and FedYogi use Flower's server-side defaults, untuned for this model.
- BENCHMARK.md asks for at least 3 run seeds per split as well; the run seeds used here are
  listed above (the spread over run seeds on split 43 is in docs/results.md).
- `secure-noise=false` derives the DP noise from the run seed so the table can be reproduced
  exactly; it changes no privacy figure. Checked by rerunning split 43 / seed 0 from the final
  code: every cell equal except FedYogi, whose adaptive server step amplifies TensorFlow's
  floating-point reduction order (0.769-0.774 over three runs of the same cell).

Made with (cells are cached under the cache folder; a rerun resumes):

```
{commands}
```

{sources}
{result['table']}

{_missing_text(result['rows'])}
Raw per-run figures: `docs/data/heart-flamby-table.json`; the sweep's tidy table and plots
of the runs of the command above that has `--plots-dir`: `docs/heart-benchmark/`
(`results.csv`, `privacy-utility.png`, `accuracy-by-round.png`, `per-site-vs-local.png`).

![privacy-utility](heart-benchmark/privacy-utility.png)
![per site](heart-benchmark/per-site-vs-local.png)
![by round](heart-benchmark/accuracy-by-round.png)
"""
