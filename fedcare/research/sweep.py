"""Sweeps: epsilon x strategy x partitioning x split seed x run seed, resumable.

Each cell of the grid is one real Flower simulation (or, once per partitioning, split
seed and run seed, the non-federated baselines: pooled training and each site's
local-only model, trained for as many epochs as the federation's rounds). A finished
cell's result is written atomically to ``<out>/cells/<key>.json``; the key hashes every
setting of the cell, so a rerun skips what is done and reruns what changed. Cells run
back to back in this process (Flower's simulation engine can be started again in one
process; TensorFlow is imported once, though each simulation starts its own Ray workers).

Outputs: ``results.csv`` (tidy: one row per cell and site, ``(mean)`` rows for the
unweighted mean over sites), ``rounds.csv`` (global figures by round), and three plots:
``privacy-utility.png``, ``accuracy-by-round.png``, ``per-site-vs-local.png``.
Every epsilon is the per-site whole-run target at the stated delta; the ``site-epsilon``
column is the largest whole-run figure any site spent, never an average.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import math
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError
from fedcare.common.files import strict_json_loads, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: a cell's settings are its whole run config
FEDERATED = "federated"
BASELINES = "baselines"
MEAN_SITE = "(mean)"
TIDY_COLUMNS = ("kind", "strategy", "dp", "epsilon", "delta", "partitioning", "dirichlet-alpha",
                "split-seed", "seed", "num-sites", "site", "accuracy", "auc", "site-epsilon",
                "rounds", "seconds", "cell")
ROUND_COLUMNS = ("strategy", "dp", "epsilon", "partitioning", "dirichlet-alpha", "split-seed",
                 "seed", "round", "mean-site-accuracy", "mean-site-auc", "pooled-accuracy",
                 "seconds", "cell")
PLOTS = ("privacy-utility.png", "accuracy-by-round.png", "per-site-vs-local.png")
_COLOURS = tuple(f"C{k}" for k in (0, 1, 2, 3, 4, 5, 6, 8, 9))  # C7 is grey: local-only's


@dataclass(frozen=True)
class Cell:
    """One unit of work: its complete run-config overrides and what to run."""

    kind: str
    config: RunConfig
    num_sites: int
    labels: Mapping[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> dict[str, Any]:
        """The cell's whole run config, kebab-case (as cached and reported)."""
        return self.config.to_run_config()

    @property
    def key(self) -> str:
        blob = json.dumps({"v": CACHE_VERSION, "kind": self.kind, "sites": self.num_sites,
                           "settings": dict(self.settings)}, sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        lab = self.labels
        part = str(lab.get("partitioning", ""))
        if part == "dirichlet":
            part += f"{lab.get('dirichlet-alpha')}"
        if self.kind == BASELINES:
            name = f"baselines-{part}"
        else:
            eps = "nodp" if lab.get("epsilon") is None else f"eps{lab['epsilon']:g}"
            name = f"{lab.get('strategy')}-{eps}-{part}"
        return f"{name}-split{lab.get('split-seed')}-seed{lab.get('seed')}-{digest}"


def parse_partitioning(text: str) -> tuple[str, float | None]:
    """``natural``, ``iid`` or ``dirichlet:ALPHA`` (also ``dirichlet-ALPHA``)."""
    name, _, alpha = text.strip().replace("-", ":", 1).partition(":")
    if name in ("natural", "iid") and not alpha:
        return name, None
    if name == "dirichlet":
        try:
            value = float(alpha)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value > 0:
            return name, value
    raise ConfigError([f"sweep: partitioning must be natural, iid or dirichlet:ALPHA with "
                       f"ALPHA > 0; got {text!r}"])


def parse_epsilon(text: str) -> float | None:
    """A whole-run target epsilon per site; ``none`` / ``off`` means a run without DP."""
    if text.strip().lower() in ("none", "off", "nodp", "inf"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError([f"sweep: epsilon must be > 0 or 'none' (no DP); got {text!r}"])
    return value


def expand_grid(base: Mapping[str, Any], *, epsilons: Sequence[float | None],
                strategies: Sequence[str], partitionings: Sequence[str],
                split_seeds: Sequence[int], seeds: Sequence[int], num_sites: int,
                baselines: bool = True) -> list[Cell]:
    """Every cell of the grid, validated (all problems together) before anything runs."""
    problems = [f"sweep: {name} must not be empty" for name, values in
                (("epsilons", epsilons), ("strategies", strategies),
                 ("partitionings", partitionings), ("split-seeds", split_seeds),
                 ("seeds", seeds)) if not values]
    for key in ("target-epsilon", "dp-mode", "strategy", "partitioning", "dirichlet-alpha",
                "split-seed", "seed", "run-name", "output-dir", "state-dir"):
        if key in base:
            problems.append(f"sweep: {key} is set by the sweep itself; got --set {key}="
                            f"{base[key]!r}")
    if problems:
        raise ConfigError(problems)
    config = RunConfig.from_mapping(base)  # every problem of --set at once, before any cell
    cells: list[Cell] = []
    for part_text, split_seed, seed in itertools.product(partitionings, split_seeds, seeds):
        partitioning, alpha = parse_partitioning(part_text)
        data = config.replace(partitioning=partitioning, split_seed=split_seed, seed=seed,
                              **({"dirichlet_alpha": alpha} if alpha is not None else {}))
        labels = {"partitioning": partitioning, "dirichlet-alpha": alpha,
                  "split-seed": split_seed, "seed": seed}
        if baselines:
            cells.append(Cell(BASELINES, data.replace(dp_mode="off"), num_sites, labels))
        for strategy, eps in itertools.product(strategies, epsilons):
            cells.append(Cell(FEDERATED, with_privacy(data.replace(strategy=strategy), eps),
                              num_sites, {**labels, "strategy": strategy, "epsilon": eps}))
    return cells


def with_privacy(config: RunConfig, epsilon: float | None) -> RunConfig:
    """``config`` without DP (``None``) or calibrated to ``epsilon`` per site for the run; a
    virtual site's ledger budget is raised to allow the spend asked for."""
    if epsilon is None:
        return config.replace(dp_mode="off")
    return config.replace(dp_mode="target-epsilon", target_epsilon=epsilon,
                          epsilon_budget=max(config.epsilon_budget, epsilon))


def load_cached(cache_dir: Path, cell: Cell) -> dict[str, Any] | None:
    path = cache_dir / "cells" / f"{cell.key}.json"
    if not path.is_file():
        return None
    try:
        result = strict_json_loads(path.read_text())
    except ValueError as err:
        logger.warning("sweep: cached cell %s is unreadable (%s); running it again", path, err)
        return None
    return result if isinstance(result, dict) and result.get("key") == cell.key else None


def run_cell(cell: Cell, cache_dir: Path, *, keep_runs: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    config = cell.config
    if cell.kind == BASELINES:
        body = _baselines(config, cell.num_sites)
    else:
        body = _federated(config, cell, cache_dir, keep_runs=keep_runs)
    return {"key": cell.key, "kind": cell.kind, "labels": dict(cell.labels),
            "num-sites": cell.num_sites, "settings": cell.settings,
            "seconds": time.perf_counter() - started, **body}


def _federated(config: RunConfig, cell: Cell, cache_dir: Path, *, keep_runs: bool
               ) -> dict[str, Any]:
    from fedcare.research.run import run_simulation

    runs = cache_dir / "runs"
    run_dir = runs / cell.key
    if run_dir.exists():  # an interrupted attempt of this very cell, inside the sweep folder
        logger.info("sweep: removing the unfinished run %s", run_dir)
        shutil.rmtree(run_dir)
    report = run_simulation(config.replace(output_dir=str(runs), run_name=cell.key),
                            num_sites=cell.num_sites, audit=False)
    if not keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)
    sites = {name: {k: row.get(k) for k in ("accuracy", "auc", "epsilon", "delta",
                                            "train-rows", "test-rows")}
             for name, row in report["sites"].items()}
    rounds = [{"round": r["round"], "seconds": r["seconds"], **r.get("global", {})}
              for r in report["rounds"]]
    return {"final": report["final"], "sites": sites, "rounds": rounds,
            "simulation-seconds": report.get("seconds")}


def _baselines(config: RunConfig, num_sites: int) -> dict[str, Any]:
    from fedcare.data.datasets import load_federated_site
    from fedcare.research.heart_benchmark import centralized_rows

    sites = [load_federated_site(
        dataset=config.dataset, partition_id=i, num_partitions=num_sites,
        partitioning=config.partitioning, data_dir=config.data_dir,
        split_seed=config.split_seed, test_fraction=config.test_fraction,
        dirichlet_alpha=config.dirichlet_alpha, partition_seed=config.partition_seed)
        for i in range(num_sites)]
    return {"rows": centralized_rows(config, sites)}


def run_cells(cells: Sequence[Cell], cache_dir: Path, *, keep_runs: bool = False,
              progress: Progress | None = None,
              runner: Callable[[Cell, Path], dict[str, Any]] | None = None
              ) -> list[dict[str, Any]]:
    """Each cell's result, from the cache or run now (and cached at once)."""
    (cache_dir / "cells").mkdir(parents=True, exist_ok=True)
    cached = {cell.key: load_cached(cache_dir, cell) for cell in cells}
    todo = [cell for cell in cells if cached[cell.key] is None]
    progress = progress or Progress(total=len(cells), skipped=len(cells) - len(todo))
    progress.render()
    results = []
    for cell in cells:
        result = cached[cell.key]
        if result is None:
            progress.render(current=cell.key)
            started = time.perf_counter()
            result = (runner or (lambda c, d: run_cell(c, d, keep_runs=keep_runs)))(
                cell, cache_dir)
            write_json_atomic(cache_dir / "cells" / f"{cell.key}.json", result)
            progress.advance(time.perf_counter() - started)
        results.append(result)
    progress.finish()
    return results


class Progress:
    """A progress bar with an ETA on stderr (redrawn in place on a terminal; one line per
    finished cell otherwise). The ETA is the mean time of cells run in this session."""

    def __init__(self, *, total: int, skipped: int = 0, stream: TextIO | None = None,
                 width: int = 24) -> None:
        self.total, self.skipped, self.done = total, skipped, skipped
        self.stream = stream or sys.stderr
        self.width = width
        self.durations: list[float] = []
        self.started = time.perf_counter()

    def eta_seconds(self) -> float | None:
        if not self.durations:
            return None
        return statistics.fmean(self.durations) * (self.total - self.done)

    def line(self, current: str = "") -> str:
        filled = int(self.width * self.done / self.total) if self.total else self.width
        eta = self.eta_seconds()
        text = (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} cells"
                f" ({self.skipped} cached), elapsed {_clock(time.perf_counter() - self.started)}"
                f", ETA {_clock(eta) if eta is not None else '?'}")
        return f"{text}  {current}" if current else text

    def render(self, current: str = "") -> None:
        if self.stream.isatty():
            self.stream.write("\r\033[K" + self.line(current))
        elif not current:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def advance(self, seconds: float) -> None:
        self.done += 1
        self.durations.append(seconds)
        self.render()

    def finish(self) -> None:
        if self.stream.isatty():
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return (f"{whole // 3600}h{whole % 3600 // 60:02d}m" if whole >= 3600
            else f"{whole // 60}m{whole % 60:02d}s")


def tidy_rows(results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell and site, plus a ``(mean)`` row per cell (unweighted over sites)."""
    rows: list[dict[str, Any]] = []
    for result in results:
        lab = result["labels"]
        base = {"partitioning": lab.get("partitioning"),
                "dirichlet-alpha": lab.get("dirichlet-alpha"), "split-seed": lab["split-seed"],
                "seed": lab["seed"], "num-sites": result["num-sites"], "cell": result["key"],
                "rounds": result["settings"].get("num-rounds", RunConfig().num_rounds),
                "seconds": result["seconds"]}
        if result["kind"] == FEDERATED:
            eps = lab.get("epsilon")
            base.update({"kind": FEDERATED, "strategy": lab["strategy"], "dp": eps is not None,
                         "epsilon": eps})
            spent = [s["epsilon"] for s in result["sites"].values()
                     if s.get("epsilon") is not None]
            delta = next((s["delta"] for s in result["sites"].values() if s.get("delta")), None)
            base["delta"] = delta
            final = result["final"]
            rows.append({**base, "site": MEAN_SITE, "accuracy": final.get("mean-site-accuracy"),
                         "auc": final.get("mean-site-auc"),
                         "site-epsilon": max(spent) if spent else None})
            for name, site in result["sites"].items():
                rows.append({**base, "site": name, "accuracy": site.get("accuracy"),
                             "auc": site.get("auc"), "site-epsilon": site.get("epsilon")})
            continue
        for row in result["rows"]:
            local = row["setting"].startswith("local only: ")
            kind = "local-only" if local else "pooled"
            common = {**base, "kind": kind, "strategy": None, "dp": False, "epsilon": None,
                      "delta": None, "site-epsilon": None}
            if local:  # a local-only model is scored on its own site's test rows
                site = row["setting"].removeprefix("local only: ")
                rows.append({**common, "site": site, "accuracy": row["own-site-accuracy"],
                             "auc": row["own-site-auc"]})
            else:
                rows.append({**common, "site": MEAN_SITE, "accuracy": row["mean-site-accuracy"],
                             "auc": row["mean-site-auc"]})
                rows.extend({**common, "site": s, "accuracy": acc, "auc": row["site-auc"][s]}
                            for s, acc in row["site-accuracy"].items())
        own = [r for r in rows if r["cell"] == result["key"] and r["kind"] == "local-only"]
        if own:
            rows.append({**own[0], "site": MEAN_SITE,
                         "accuracy": _mean([r["accuracy"] for r in own]),
                         "auc": _mean([r["auc"] for r in own])})
    return [{col: row.get(col) for col in TIDY_COLUMNS} for row in rows]


def round_rows(results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        if result["kind"] != FEDERATED:
            continue
        lab = result["labels"]
        for rnd in result["rounds"]:
            rows.append({"strategy": lab["strategy"], "dp": lab.get("epsilon") is not None,
                         "epsilon": lab.get("epsilon"), "partitioning": lab["partitioning"],
                         "dirichlet-alpha": lab.get("dirichlet-alpha"),
                         "split-seed": lab["split-seed"], "seed": lab["seed"],
                         "round": rnd["round"], "cell": result["key"], "seconds": rnd["seconds"],
                         **{k: rnd.get(k) for k in ("mean-site-accuracy", "mean-site-auc",
                                                    "pooled-accuracy")}})
    return [{col: row.get(col) for col in ROUND_COLUMNS} for row in rows]


def _mean(values: Iterable[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.fmean(kept) if kept else None


def _std(values: Iterable[Any]) -> float:
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.stdev(kept) if len(kept) > 1 else 0.0


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    write_text_atomic(path, buffer.getvalue())


def write_parquet_if_available(path: Path, rows: Sequence[Mapping[str, Any]]) -> bool:
    """Parquet beside the CSV when pyarrow happens to be installed (it is not a dependency)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path)
    return True


def _series_label(strategy: Any, partitioning: Any, alpha: Any) -> str:
    part = f"dirichlet {alpha:g}" if partitioning == "dirichlet" else str(partitioning)
    return f"{strategy}, {part}"


def plot_all(out_dir: Path, rows: Sequence[Mapping[str, Any]],
             by_round: Sequence[Mapping[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [out_dir / name for name in PLOTS]
    fed = [r for r in rows if r["kind"] == FEDERATED and r["site"] == MEAN_SITE]
    local = [r for r in rows if r["kind"] == "local-only" and r["site"] == MEAN_SITE]
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in fed:
        groups.setdefault((r["strategy"], r["partitioning"], r["dirichlet-alpha"]), []).append(r)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for metric, ax in zip(("accuracy", "auc"), axes, strict=True):
        for i, (key, group) in enumerate(sorted(groups.items(), key=str)):
            colour = f"C{i % 10}"
            eps = sorted({r["epsilon"] for r in group if r["epsilon"] is not None})
            if eps:
                at = [[r[metric] for r in group if r["epsilon"] == e] for e in eps]
                ax.errorbar(eps, [_mean(v) or math.nan for v in at], yerr=[_std(v) for v in at],
                            marker="o", capsize=3, color=colour, label=_series_label(*key))
            nodp = [r[metric] for r in group if r["epsilon"] is None]
            if nodp:
                ax.axhline(_mean(nodp) or math.nan, color=colour, linestyle="--", linewidth=1,
                           label=f"{_series_label(*key)}, no DP")
        if local:
            ax.axhline(_mean(r[metric] for r in local) or math.nan, color="grey", linestyle=":",
                       label="local only (own site, mean)")
        ax.set_xscale("log")
        ax.set_xlabel("epsilon per site, this run (target)")
        ax.set_ylabel(f"mean site {'accuracy' if metric == 'accuracy' else 'ROC AUC'}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("privacy-utility: mean ± std over split and run seeds")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    curves: dict[tuple[Any, ...], dict[int, list[Any]]] = {}
    for r in by_round:
        key = (r["strategy"], r["partitioning"], r["dirichlet-alpha"], r["epsilon"])
        curves.setdefault(key, {}).setdefault(int(r["round"]), []).append(
            r["mean-site-accuracy"])
    for key, points in sorted(curves.items(), key=str):
        xs = sorted(points)
        privacy = "no DP" if key[3] is None else f"eps {key[3]:g}"
        ax.plot(xs, [_mean(points[x]) or math.nan for x in xs],
                label=f"{_series_label(*key[:3])}, {privacy}")
    ax.set_xlabel("round")
    ax.set_ylabel("mean site accuracy (global model)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)

    parts = sorted({(r["partitioning"], r["dirichlet-alpha"]) for r in rows}, key=str)
    fig, axes = plt.subplots(len(parts), 1, figsize=(9, 3.6 * len(parts)), squeeze=False)
    for (part, alpha), ax in zip(parts, axes[:, 0], strict=True):
        mine = [r for r in rows if (r["partitioning"], r["dirichlet-alpha"]) == (part, alpha)
                and r["site"] != MEAN_SITE and r["kind"] in (FEDERATED, "local-only")]
        sites = sorted({r["site"] for r in mine})
        series = sorted({("local only (own site)",) if r["kind"] == "local-only" else
                         (r["strategy"], r["epsilon"]) for r in mine},
                        key=lambda s: (len(s) == 1, str(s[0]),
                                       -1.0 if len(s) == 1 or s[1] is None else s[1]))
        width = 0.8 / max(1, len(series))
        for j, s in enumerate(series):
            def matches(r: Mapping[str, Any], s: tuple[Any, ...] = s) -> bool:
                return (r["kind"] == "local-only" if len(s) == 1 else
                        r["kind"] == FEDERATED and (r["strategy"], r["epsilon"]) == s)
            vals = [[r["accuracy"] for r in mine if r["site"] == site and matches(r)]
                    for site in sites]
            label = s[0] if len(s) == 1 else (
                f"{s[0]}, {'no DP' if s[1] is None else f'eps {s[1]:g}'}")
            ax.bar([i + j * width for i in range(len(sites))],
                   [_mean(v) or 0.0 for v in vals], width, yerr=[_std(v) for v in vals],
                   capsize=2, label=label, color="0.25" if len(s) == 1 else _COLOURS[j % 9],
                   hatch="//" if len(s) == 1 else None)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sites))], sites)
        ax.set_ylabel("site test accuracy")
        ax.set_title(f"{_series_label('per site', part, alpha).removeprefix('per site, ')}: "
                     "global model vs each site's local-only model")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    return paths


def run_sweep(base: Mapping[str, Any], *, epsilons: Sequence[float | None],
              strategies: Sequence[str], partitionings: Sequence[str],
              split_seeds: Sequence[int], seeds: Sequence[int], num_sites: int,
              out_dir: Path, keep_runs: bool = False, plots: bool = True) -> dict[str, Any]:
    """Run (or resume) the grid; write the tidy tables and plots; return their paths."""
    cells = expand_grid(base, epsilons=epsilons, strategies=strategies,
                        partitionings=partitionings, split_seeds=split_seeds, seeds=seeds,
                        num_sites=num_sites)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = run_cells(cells, out_dir, keep_runs=keep_runs)
    rows, by_round = tidy_rows(results), round_rows(results)
    write_csv(out_dir / "results.csv", rows, TIDY_COLUMNS)
    write_csv(out_dir / "rounds.csv", by_round, ROUND_COLUMNS)
    files: list[Path] = [out_dir / "results.csv", out_dir / "rounds.csv"]
    if write_parquet_if_available(out_dir / "results.parquet", rows):
        files.append(out_dir / "results.parquet")
    if plots:
        files += plot_all(out_dir, rows, by_round)
    return {"cells": len(cells), "files": [str(p) for p in files], "rows": rows}
