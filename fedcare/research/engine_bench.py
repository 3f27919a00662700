"""``fedcare perf-engine``: what starting the engine once saves a sweep, measured in one run.

The same heart-disease sweep cells (FedAvg, natural partitioning, epsilon x run seed) run
twice through the sweep's own code (``sweep.run_cells``): as before issue 19, each cell
in its own engine session (Ray started, site workers created and TensorFlow imported
for every cell), and as now, all cells in one session. Per cell it reports the wall
time, the time inside the rounds, and the difference: the seconds per cell beyond the
federated compute (start-up, pre-flight, report, engine). Figures go to
docs/performance.md; nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcare.common.files import write_json_atomic

DEFAULT_CELLS = 12
DEFAULT_ROUNDS = 5
EPSILONS: tuple[float | None, ...] = (None, 1.0, 3.0)


def bench_cells(cells: int, rounds: int) -> list[Any]:
    """``cells`` federated heart cells: epsilon (none, 1, 3) x as many run seeds as needed."""
    from fedcare.research.heart_benchmark import PROTOCOL, TUNED
    from fedcare.research.sweep import expand_grid

    seeds = list(range(-(-cells // len(EPSILONS))))
    base = {k: v for k, v in {**PROTOCOL, **TUNED, "num-rounds": rounds}.items()
            if k not in ("target-epsilon", "partitioning")}
    grid = expand_grid(base, epsilons=EPSILONS, strategies=["fedavg"],
                       partitionings=["natural"], split_seeds=[43], seeds=seeds, num_sites=4,
                       baselines=False)
    return grid[:cells]


def _per_cell(results: Sequence[Mapping[str, Any]], walls: Sequence[float]
              ) -> dict[str, Any]:
    rounds = [sum(r["seconds"] for r in result["rounds"]) for result in results]
    beyond = [w - r for w, r in zip(walls, rounds, strict=True)]
    return {"cells": len(walls), "wall-seconds": sum(walls),
            "seconds-per-cell": statistics.mean(walls),
            "round-seconds-per-cell": statistics.mean(rounds),
            "beyond-compute-seconds-per-cell": statistics.mean(beyond),
            "first-cell-seconds": walls[0], "cell-seconds": list(walls)}


def run_engine_bench(*, cells: int = DEFAULT_CELLS, rounds: int = DEFAULT_ROUNDS
                     ) -> dict[str, Any]:
    """Both ways, one after the other, on the same cells; figures and their ratio."""
    from fedcare.research.sweep import run_cells

    grid = bench_cells(cells, rounds)
    with tempfile.TemporaryDirectory(prefix="fedcare-engine-bench-") as tmp:
        walls: list[float] = []
        per_cell_results = []
        for cell in grid:  # before: a session (Ray, workers, TensorFlow) per cell
            started = time.perf_counter()
            per_cell_results += run_cells([cell], Path(tmp) / "per-cell")
            walls.append(time.perf_counter() - started)
        before = _per_cell(per_cell_results, walls)
        shared_walls: list[float] = []
        clock = [time.perf_counter()]

        def timed(cell: Any, cache: Path) -> dict[str, Any]:
            from fedcare.research.sweep import run_cell

            result = run_cell(cell, cache)
            now = time.perf_counter()
            shared_walls.append(now - clock[0])  # includes the session's start for cell 1
            clock[0] = now
            return result

        clock[0] = time.perf_counter()
        shared = run_cells(grid, Path(tmp) / "one-session", runner=timed)
        after = _per_cell(shared, shared_walls)
    return {"format": "fedcare-perf-engine", "version": 1,
            "machine": {"cpus": os.cpu_count(), "load-average": list(os.getloadavg())},
            "settings": {"cells": cells, "rounds": rounds, "dataset": "heart-disease",
                         "sites": 4, "epsilons": [e for e in EPSILONS]},
            "session-per-cell": before, "one-session": after,
            "beyond-compute-ratio": (after["beyond-compute-seconds-per-cell"] /
                                     before["beyond-compute-seconds-per-cell"]),
            "wall-ratio": after["wall-seconds"] / before["wall-seconds"]}


def format_engine_bench(result: Mapping[str, Any]) -> str:
    lines = [f"{'':<18}{'s/cell':>9}{'rounds':>9}{'beyond':>9}{'first':>9}{'total s':>10}"]
    for name in ("session-per-cell", "one-session"):
        row = result[name]
        lines.append(f"{name:<18}{row['seconds-per-cell']:9.1f}"
                     f"{row['round-seconds-per-cell']:9.1f}"
                     f"{row['beyond-compute-seconds-per-cell']:9.1f}"
                     f"{row['first-cell-seconds']:9.1f}{row['wall-seconds']:10.1f}")
    lines.append(f"seconds per cell beyond compute: x{result['beyond-compute-ratio']:.2f}; "
                 f"sweep wall time: x{result['wall-ratio']:.2f} ({result['settings']['cells']} "
                 f"heart cells, {result['settings']['rounds']} rounds each)")
    return "\n".join(lines)


def cmd_perf_engine(args: argparse.Namespace) -> int:
    result = run_engine_bench(cells=args.cells, rounds=args.rounds)
    sys.stdout.write(format_engine_bench(result) + "\n")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out), result)
    return 0


def add_parsers(sub: Any) -> None:
    """``fedcare perf-engine``."""
    bench = sub.add_parser("perf-engine", help="a 12-cell heart sweep: engine per cell vs "
                                               "once per sweep (seconds beyond compute)")
    bench.add_argument("--cells", type=int, default=DEFAULT_CELLS)
    bench.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    bench.add_argument("--out", help="write the results JSON here")
    bench.set_defaults(func=cmd_perf_engine, quiet_terminal=True)

