"""Budget-aware settings for the heart-disease protocol: ``fedcare plan`` and its tuning.

``fedcare plan --dataset heart-disease --target-epsilon E`` prints the rounds, batch size,
learning rate and model size to run at a whole-run budget of E per site (delta 1e-3, PLD),
from :data:`PLAN_TABLE`. The table was tuned on split seed 43 ONLY (docs/tuning-heart.md
records every variant tried, with the command and its numbers: ``fedcare plan-tune``); the
other split seeds are for evaluating the final choices.

At small budgets a 40-round Dense 64-32 model is mostly noise (FedAvg + DP at eps 0.1:
0.50 mean site accuracy, below predicting each site's majority class); the plan then falls
back to a model the budget can train (fewer rounds, logistic regression) and says so.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcare.common.config import PLANNED_DATASETS, RunConfig
from fedcare.common.errors import ConfigError

__all__ = ["PLAN_TABLE", "TUNING_SPLIT_SEED", "Plan", "PlanDefaults", "add_parsers",
           "majority_prior", "plan_for", "with_plan_defaults"]

#: The only split seed tuning may look at (BENCHMARK.md: choose hyper-parameters on 43).
TUNING_SPLIT_SEED = 43
PLAN_DATASETS = PLANNED_DATASETS
DEFAULT_EPSILON_BUDGET = 5.0  # the run config's default lifetime budget per site


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Settings for budgets at or above ``min_epsilon`` (up to the next row's)."""

    min_epsilon: float
    settings: Mapping[str, Any]
    model: str
    why: str
    fallback: str = ""  # what this plan falls back to, and why; "" = the full model
    tuned: str = ""  # mean site accuracy of the global model on split 43 (3 run seeds)
    extra: Mapping[str, Any] = field(default_factory=dict)


_PROTOCOL = {"dataset": "heart-disease", "partitioning": "natural", "test-fraction": 0.34,
             "delta": 1e-3, "accountant": "pld", "clip-norm": 1.0, "local-epochs": 1,
             "batch-size": 256}

#: Tuned on split seed 43 only (docs/tuning-heart.md), lowest budget first.
PLAN_TABLE: tuple[Plan, ...] = (
    Plan(min_epsilon=0.0,
         settings={**_PROTOCOL, "hidden-units": "none", "num-rounds": 3,
                   "learning-rate": 2.0},
         model="logistic regression", why="a budget this small buys a few noisy steps; "
         "only a model with 16 weights learns from them",
         fallback="logistic regression, 3 rounds, instead of Dense 64-32, 40 rounds (0.496 "
         "mean site accuracy at eps 0.1: below the per-site majority prior, 0.72 on split 43)",
         tuned="at eps 0.1: 0.703 +- 0.017 mean site accuracy of the global model (1 round "
         "0.666, 10 rounds 0.690)"),
    Plan(min_epsilon=0.5,
         settings={**_PROTOCOL, "hidden-units": "none", "num-rounds": 10,
                   "learning-rate": 2.0},
         model="logistic regression", why="at eps 1 it matched the 2,000-weight Dense "
         "64-32 (0.775 vs 0.758 on split 43) in a quarter of the rounds",
         fallback="logistic regression, 10 rounds, instead of Dense 64-32, 40 rounds",
         tuned="at eps 1: 0.775 +- 0.027 (30 rounds at learning rate 1: 0.782 +- 0.040, "
         "within noise, 3x the rounds); not tuned at eps 0.5"),
    Plan(min_epsilon=2.0,
         settings={**_PROTOCOL, "hidden-units": "64,32", "num-rounds": 40,
                   "learning-rate": 0.5},
         model="Dense 64-32", why="the full model (docs/results.md, tuned at eps 1 under RDP); "
         "at eps 3 no smaller model or other round count tried beat it",
         tuned="at eps 3: 0.778 +- 0.022 (logistic regression 10 rounds 0.772, 30 rounds at "
         "learning rate 1 0.774, Dense 16 x 20 rounds 0.774: all within noise)"),
)


def plan_for(dataset: str, target_epsilon: float) -> Plan:
    """The plan row for a whole-run budget of ``target_epsilon`` per site."""
    problems = []
    if dataset not in PLAN_DATASETS:
        problems.append(f"plan: dataset must be one of {', '.join(PLAN_DATASETS)} (tuned "
                        f"tables exist only for it); got {dataset!r}")
    if not (isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon)
            and target_epsilon > 0):
        problems.append(f"plan: target-epsilon must be a finite number > 0; "
                        f"got {target_epsilon!r}")
    if problems:
        raise ConfigError(problems)
    return [p for p in PLAN_TABLE if target_epsilon >= p.min_epsilon][-1]


def plan_settings(plan: Plan, target_epsilon: float) -> dict[str, Any]:
    """The run-config keys of ``plan`` at ``target_epsilon`` (for ``--set`` / pyproject)."""
    budget = max(DEFAULT_EPSILON_BUDGET, target_epsilon)  # a run may spend its own target
    return {**plan.settings, "target-epsilon": target_epsilon, "epsilon-budget": budget,
            **plan.extra}


def format_plan(plan: Plan, target_epsilon: float) -> str:
    s = plan_settings(plan, target_epsilon)
    lines = [
        f"plan for heart-disease at eps = {target_epsilon:g} per site, whole run, at delta = "
        f"{s['delta']:g} ({str(s['accountant']).upper()} accountant, add/remove-one example, "
        "full batch: no amplification by sampling claimed)",
        f"  model:         {plan.model} (hidden-units = {s['hidden-units']!r})",
        f"  rounds:        {s['num-rounds']}",
        f"  batch size:    {s['batch-size']} (full batch at every site)",
        f"  learning rate: {s['learning-rate']:g}",
        f"  clip norm:     {s['clip-norm']:g}",
        f"  why:           {plan.why}",
    ]
    if plan.fallback:
        lines.append(f"  FALLBACK:      {plan.fallback}")
    lines += [f"  tuned on split seed {TUNING_SPLIT_SEED} only: {plan.tuned}",
              "  run it with: fedcare simulate " + " ".join(
                  f"--set {k}={v}" for k, v in s.items())]
    return "\n".join(lines)


# ------------------------------------------------------------------------- simulate defaults


@dataclass(frozen=True, kw_only=True)
class PlanDefaults:
    """What ``fedcare simulate`` took from the plan: the row, the settings it filled in
    (the user had not set them) and the user's own values that won over the plan's."""

    plan: Plan
    target_epsilon: float
    taken: Mapping[str, Any]
    kept: Mapping[str, Any]

    def describe(self) -> str:
        row = PLAN_TABLE.index(self.plan) + 1
        lines = [f"plan: row {row} of {len(PLAN_TABLE)} of `fedcare plan --dataset "
                 f"heart-disease` ({_budget_range(row - 1)}) for target eps = "
                 f"{self.target_epsilon:g} (this run, at each site; at the run's delta): "
                 f"{self.plan.model}",
                 f"  FALLBACK: {self.plan.fallback}" if self.plan.fallback
                 else "  fallback: none (the full model)",
                 f"  tuned on split seed {TUNING_SPLIT_SEED} only: {self.plan.tuned}",
                 "  from the plan (not set by you): " + (_settings_text(self.taken) or "nothing")]
        if self.kept:
            lines.append("  yours (explicit values win over the plan's): "
                         + _settings_text(self.kept))
        lines.append("  (--set plan=off: no plan; the run config's own defaults)")
        return "\n".join(lines)


def _budget_range(index: int) -> str:
    """``0.5 <= eps < 2``: the budgets ``PLAN_TABLE[index]`` serves."""
    low = PLAN_TABLE[index].min_epsilon
    if index + 1 == len(PLAN_TABLE):
        return f"eps >= {low:g}"
    return f"{low:g} {'<=' if low > 0 else '<'} eps < {PLAN_TABLE[index + 1].min_epsilon:g}"


def _settings_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


_PLAN_INPUTS = ("dataset", "target-epsilon")  # what picks the row, not what it sets


def with_plan_defaults(explicit: Mapping[str, Any]
                       ) -> tuple[dict[str, Any], PlanDefaults | None]:
    """``fedcare simulate``'s settings: ``explicit`` (only what the user set: flags,
    ``--set``) over the plan's settings for its target epsilon.

    ``plan`` defaults to ``auto`` for a dataset with a plan table under ``dp-mode =
    target-epsilon`` (the target: the user's, else the run config's default), ``off``
    otherwise. The result is parsed once by :meth:`RunConfig.from_mapping`, which names a
    bad ``plan``, ``target-epsilon`` or combination; with such a value nothing is filled in.
    """
    dataset = explicit.get("dataset", RunConfig.dataset)
    dp_mode = explicit.get("dp-mode", RunConfig.dp_mode)
    planned = dataset in PLAN_DATASETS and dp_mode == "target-epsilon"
    settings = {**explicit, "plan": explicit.get("plan", "auto" if planned else "off")}
    target = _budget(explicit.get("target-epsilon", RunConfig.target_epsilon))
    if settings["plan"] != "auto" or not planned or target is None:
        return settings, None
    plan = plan_for(dataset, target)
    from_plan = {k: v for k, v in plan_settings(plan, target).items()
                 if k not in _PLAN_INPUTS}
    taken = {k: v for k, v in from_plan.items() if k not in explicit}
    kept = {k: explicit[k] for k in from_plan if k in explicit and explicit[k] != from_plan[k]}
    return ({**taken, **settings},
            PlanDefaults(plan=plan, target_epsilon=target, taken=taken, kept=kept))


def _budget(value: Any) -> float | None:
    """A usable target epsilon, else None (RunConfig names the bad value)."""
    if isinstance(value, bool):
        return None
    try:
        eps = float(value)
    except (TypeError, ValueError):
        return None
    return eps if math.isfinite(eps) and eps > 0 else None


# ------------------------------------------------------------------------- tuning


def majority_prior(sites: Sequence[Any]) -> dict[str, float]:
    """Each site predicts its training rows' majority class: accuracy on its test rows."""
    import numpy as np

    out = {}
    for site in sites:
        majority = float(np.mean(site.y_train) >= 0.5)
        out[site.name] = float(np.mean(site.y_test == majority))
    return out


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value;key=value`` -> (NAME, {key: value})."""
    name, _, rest = text.partition(":")
    settings: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(";"))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError([f"plan-tune: variant items must be key=value; got {item!r}"])
        settings[key.strip()] = _value(value.strip())
    if not name.strip():
        raise ConfigError([f"plan-tune: variant must be NAME:key=value;...; got {text!r}"])
    return name.strip(), settings


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def tune(variants: Sequence[tuple[str, Mapping[str, Any]]], *, target_epsilon: float,
         seeds: Sequence[int], output_dir: Path, out: Path | None = None) -> list[dict[str, Any]]:
    """Each variant's global model at ``target_epsilon`` on split seed 43, per run seed."""
    from fedcare.research.heart_benchmark import federated_row, load_sites, protocol_config

    rows: list[dict[str, Any]] = []
    for name, settings in variants:
        for seed in seeds:
            config = protocol_config({**_PROTOCOL, **settings, "target-epsilon": target_epsilon,
                                      "secure-noise": False, "output-dir": str(output_dir)},
                                     split_seed=TUNING_SPLIT_SEED, seed=seed)
            run_name = re.sub(r"[^A-Za-z0-9._-]+", "-",
                              f"tune-eps{target_epsilon:g}-{name}-seed{seed}").strip("-")
            row = federated_row(config.replace(run_name=run_name), name)
            rows.append({**row, "variant": name, "settings": dict(settings), "seed": seed,
                         "target-epsilon": target_epsilon})
            if out is not None:  # keep what is done if a long tuning run is stopped
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(rows, indent=2, default=str))
    config = protocol_config(_PROTOCOL, split_seed=TUNING_SPLIT_SEED, seed=0)
    prior = majority_prior(load_sites(config))
    rows.append({"variant": "per-site majority prior (reference)", "settings": {},
                 "site-accuracy": prior, "mean-site-accuracy": statistics.fmean(prior.values()),
                 "epsilon": {}, "seed": None, "target-epsilon": target_epsilon})
    return rows


def format_tuning(rows: Sequence[Mapping[str, Any]]) -> str:
    from fedcare.data.datasets.heart_disease import SITES
    from fedcare.research.heart_benchmark import mean_std

    header = ("| eps | variant | settings | mean site acc | " + " | ".join(SITES)
              + " | runs | max site eps |")
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    groups: dict[tuple[float, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["target-epsilon"], row["variant"]), []).append(row)
    for (eps, name), group in groups.items():
        spent = [max(r["epsilon"].values()) for r in group if r.get("epsilon")]
        settings = "; ".join(f"{k}={v}" for k, v in group[0]["settings"].items()) or "-"
        lines.append(
            f"| {eps:g} | {name} | {settings} | "
            f"{mean_std([r['mean-site-accuracy'] for r in group])} | "
            + " | ".join(mean_std([r["site-accuracy"].get(s, math.nan) for r in group])
                         for s in SITES)
            + f" | {len(group)} | {f'{max(spent):.3f}' if spent else '-'} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------- commands


def cmd_plan(args: argparse.Namespace) -> int:
    from fedcare.cli.args import EXIT_OK

    plan = plan_for(args.dataset, args.target_epsilon)
    if args.json:
        sys.stdout.write(json.dumps({"settings": plan_settings(plan, args.target_epsilon),
                                     "model": plan.model, "why": plan.why,
                                     "fallback": plan.fallback, "tuned": plan.tuned},
                                    indent=2) + "\n")
    else:
        sys.stdout.write(format_plan(plan, args.target_epsilon) + "\n")
    return EXIT_OK


def cmd_plan_tune(args: argparse.Namespace) -> int:
    from fedcare.cli.args import EXIT_OK

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [parse_variant(v) for v in args.variant]
    rows = tune(variants, target_epsilon=args.target_epsilon, seeds=seeds,
                output_dir=Path(args.output_dir), out=Path(args.out) if args.out else None)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2, default=str))
    sys.stdout.write(format_tuning(rows) + "\n")
    return EXIT_OK


def add_parsers(sub: Any) -> None:
    """``fedcare plan`` and ``fedcare plan-tune``."""
    plan = sub.add_parser("plan", help="rounds, batch, learning rate and model size for a "
                                       "privacy budget (tuned on heart-disease split 43)")
    plan.add_argument("--dataset", required=True, choices=PLAN_DATASETS)
    plan.add_argument("--target-epsilon", type=float, required=True,
                      help="whole-run epsilon per site (delta 1e-3, PLD)")
    plan.add_argument("--json", action="store_true", help="the settings as JSON")
    plan.set_defaults(func=cmd_plan)
    tune_p = sub.add_parser("plan-tune", help=f"tune the plan table: global-model variants "
                                              f"on split seed {TUNING_SPLIT_SEED} only")
    tune_p.add_argument("--target-epsilon", type=float, required=True)
    tune_p.add_argument("--variant", action="append", required=True,
                        metavar="NAME:key=value;key=value",
                        help="a variant: run-config keys over the protocol's (repeatable)")
    tune_p.add_argument("--seeds", default="0,1,2", help="run seeds, comma-separated")
    tune_p.add_argument("--output-dir", default="runs/plan-tune", help="run folders")
    tune_p.add_argument("--out", help="write the per-run rows (JSON) here")
    tune_p.set_defaults(func=cmd_plan_tune)
