"""``fedcare perf``: the speed and scale figures, measured in one run, as ratios.

1. DP local epoch / plain local epoch (``perf.epoch_costs``, interleaved samples).
2. Per-round cost beyond the sites' training in a 4-site simulation: the median
   steady-state round (round 1 holds Ray's and TensorFlow's start-up and is reported
   apart) minus the training time on the critical path (the sites' summed training
   seconds over the number of workers). fedcare's engine setting (10 ms polls) and
   Flower's default (0.1 s polls) are both measured.
3. Wall time of a 4-site DP simulation, fedcare vs a minimal Flower app in the style of
   ``flwr new``'s TensorFlow template (``baseline_app``), same data, model, DP settings
   and Ray workers. Runs are interleaved (fedcare, baseline, fedcare, ...), so the ratio
   of medians is fair on a busy machine.
4. Scaling: seconds per steady round and the peak resident memory of the whole process
   tree (this process, Ray's daemons and workers; sampled every 0.2 s) at 10, 50 and 100
   virtual sites.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedcare.common.config import RunConfig

logger = logging.getLogger(__name__)

PERF_FORMAT = "fedcare-perf"
PERF_VERSION = 1
FLOWER_DEFAULT_POLL_SECONDS = 0.1
GOALS = {"dp-epoch-ratio": 1.5, "round-overhead-seconds": 1.0, "fedcare-vs-flower-ratio": 0.5,
         "peak-rss-bytes-100-sites": 24 * 2**30}
# The timed simulations: bundled breast-cancer data, iid over the sites, DP-SGD with a
# fixed noise multiplier (what the baseline app's DPKerasSGDOptimizer takes).
SIM_SETTINGS: dict[str, Any] = {"dataset": "breast-cancer", "partitioning": "iid",
                                "dp-mode": "noise-multiplier", "noise-multiplier": 1.0,
                                "clip-norm": 1.0, "batch-size": 32, "learning-rate": 0.1,
                                "epsilon-budget": 1000.0}


def process_tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo, page = 0, [root], os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):  # a process that ended
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        todo.extend(children.get(pid, []))
    return total


class PeakMemory:
    """Samples the process tree's RSS in a thread; ``peak`` is the largest sample."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, process_tree_rss(os.getpid()))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, process_tree_rss(os.getpid()))


def _fedcare_run(root: Path, *, sites: int, rounds: int, poll: float,
                 settings: dict[str, Any] | None = None) -> dict[str, Any]:
    from fedcare.research.run import run_simulation, simulation_workers

    config = RunConfig.from_mapping({**(settings or SIM_SETTINGS), "num-rounds": rounds,
                                     "output-dir": str(root),
                                     "run-name": f"perf-{sites}-{secrets.token_hex(4)}"})
    started = time.perf_counter()
    with PeakMemory() as memory:
        report = run_simulation(config, num_sites=sites, poll_seconds=poll, audit=False)
    wall = time.perf_counter() - started
    workers = simulation_workers()
    steady = report["rounds"][1:] or report["rounds"]
    round_s = [r["seconds"] for r in steady]
    compute = [sum(float(m.get("train-seconds", 0.0)) for m in r["train"].values()) / workers
               for r in steady]
    return {"wall-seconds": wall, "first-round-seconds": report["rounds"][0]["seconds"],
            "seconds-per-round": statistics.median(round_s),
            "training-seconds-per-round": statistics.median(compute),
            "overhead-seconds-per-round": statistics.median(
                [s - c for s, c in zip(round_s, compute, strict=True)]),
            "peak-rss-bytes": memory.peak, "sites": sites, "rounds": rounds,
            "load-average": list(os.getloadavg()), "dataset": config.dataset,
            "mean-site-accuracy": report["final"].get("mean-site-accuracy")}


def site_work(root: Path, *, rounds: int = 10) -> dict[str, float]:
    """One site's whole round outside Flower (median over rounds 2..N): training alone, and
    everything a fedcare site does (ledger budget check and accounting, audit log append
    with fsync, training, evaluation). Timed in this process, beside the simulations."""
    from fedcare.common.model import build_model, weights_of
    from fedcare.site.site import SiteSpec, evaluate_round, train_round

    config = RunConfig.from_mapping({**SIM_SETTINGS, "num-rounds": rounds})
    site = SiteSpec(name="site-0", state_dir=root / f"site-work-{secrets.token_hex(4)}",
                    epsilon_budget=config.epsilon_budget, partition_id=0, num_partitions=4)
    weights = weights_of(build_model(input_dim=30, hidden_units=config.hidden_layer_sizes,
                                     seed=0))
    whole, training = [], []
    for server_round in range(1, rounds + 1):
        started = time.perf_counter()
        outcome = train_round(config, site, weights, run_id="perf", server_round=server_round,
                              proximal_mu=0.0)
        evaluate_round(config, site, weights)
        if server_round > 1:  # round 1 traces the training function once per process
            whole.append(time.perf_counter() - started)
            training.append(outcome.seconds)
    return {"site-round-seconds": statistics.median(whole),
            "site-training-seconds": statistics.median(training)}


def _baseline_run(*, sites: int, rounds: int) -> dict[str, Any]:
    from fedcare.flower_compat.simulation import run_engine
    from fedcare.research.baseline_app.client_app import app as client_app
    from fedcare.research.baseline_app.server_app import app as server_app
    from fedcare.research.run import PROJECT_ROOT, ray_backend_config

    started = time.perf_counter()
    with PeakMemory() as memory:
        # Flower's own polls, as the template app ships (no fast_polling, no project config).
        run_engine(client_app=client_app, server_app=server_app, num_sites=sites,
                   run_config={"num-rounds": rounds}, backend_config=ray_backend_config(),
                   app_dir=str(PROJECT_ROOT), is_app=False, poll_seconds=None)
    return {"wall-seconds": time.perf_counter() - started, "peak-rss-bytes": memory.peak,
            "sites": sites, "rounds": rounds}


def run_perf(*, sites: int = 4, rounds: int = 10, repeats: int = 2,
             scale_sites: Sequence[int] = (10, 50, 100), scale_rounds: int = 3,
             epoch_repeats: int = 9) -> dict[str, Any]:
    from fedcare.research.perf import epoch_costs
    from fedcare.research.run import simulation_workers

    for key, value in (("TF_CPP_MIN_LOG_LEVEL", "3"), ("TF_NUM_INTRAOP_THREADS", "1"),
                       ("TF_NUM_INTEROP_THREADS", "1")):
        os.environ.setdefault(key, value)
    epoch = epoch_costs(RunConfig(), repeats=epoch_repeats)
    fast: list[dict[str, Any]] = []
    default_poll: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedcare-perf-") as tmp:
        root = Path(tmp)
        for rep in range(repeats):  # interleaved, so a busy spell hits every variant
            logger.info("perf: repeat %d/%d", rep + 1, repeats)
            fast.append(_fedcare_run(root, sites=sites, rounds=rounds, poll=0.01))
            baseline.append(_baseline_run(sites=sites, rounds=rounds))
            default_poll.append(_fedcare_run(root, sites=sites, rounds=rounds,
                                             poll=FLOWER_DEFAULT_POLL_SECONDS))
        work = site_work(root, rounds=rounds)
        for n in scale_sites:
            logger.info("perf: scaling, %d sites", n)
            scaling.append(_fedcare_run(root, sites=n, rounds=scale_rounds, poll=0.01))

    def med(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    ratio = med(fast, "wall-seconds") / med(baseline, "wall-seconds")
    overhead = med(fast, "overhead-seconds-per-round")
    workers = simulation_workers()
    # Of the overhead: the sites' own non-training work (on the critical path: sites over
    # workers), and what is left for Flower's engine (messages, polling, serialization).
    site_extra = (work["site-round-seconds"] - work["site-training-seconds"]) * sites / workers
    flower_part = med(fast, "seconds-per-round") - work["site-round-seconds"] * sites / workers
    base = scaling[0] if scaling else None
    for row in scaling:
        assert base is not None
        row["round-time-ratio-to-smallest"] = row["seconds-per-round"] / base["seconds-per-round"]
        row["site-ratio-to-smallest"] = row["sites"] / base["sites"]
    largest = scaling[-1] if scaling else None
    goals = {
        "dp-epoch-ratio": {"value": epoch["ratio-to-plain"]["dp-bookkeeping"],
                           "goal": f"<= {GOALS['dp-epoch-ratio']}"},
        "round-overhead-seconds": {"value": overhead,
                                   "goal": f"<= {GOALS['round-overhead-seconds']}"},
        "fedcare-vs-flower-ratio": {"value": ratio,
                                    "goal": f"<= {GOALS['fedcare-vs-flower-ratio']}"},
    }
    goals["dp-epoch-ratio"]["met"] = goals["dp-epoch-ratio"]["value"] <= GOALS["dp-epoch-ratio"]
    goals["round-overhead-seconds"]["met"] = overhead <= GOALS["round-overhead-seconds"]
    goals["fedcare-vs-flower-ratio"]["met"] = ratio <= GOALS["fedcare-vs-flower-ratio"]
    if largest is not None and base is not None:
        goals[f"peak-rss-bytes-{largest['sites']}-sites"] = {
            "value": largest["peak-rss-bytes"], "goal": "<= 24 GiB",
            "met": largest["peak-rss-bytes"] <= GOALS["peak-rss-bytes-100-sites"]}
        goals["round-time-growth"] = {
            "value": largest["round-time-ratio-to-smallest"],
            "goal": f"<= {largest['site-ratio-to-smallest']:g} (linear in sites)",
            "met": largest["round-time-ratio-to-smallest"] <= largest["site-ratio-to-smallest"]}
    return {"format": PERF_FORMAT, "version": PERF_VERSION,
            "machine": {"cpus": os.cpu_count(), "workers": simulation_workers(),
                        "python": platform.python_version(), "platform": platform.platform(),
                        "load-average": list(os.getloadavg())},
            "settings": {**SIM_SETTINGS, "sites": sites, "rounds": rounds, "repeats": repeats,
                         "scale-rounds": scale_rounds},
            "dp-epoch": epoch,
            "round-overhead": {"fedcare-10ms-polls": fast,
                               "fedcare-flower-default-polls": default_poll,
                               "median-overhead-seconds": overhead,
                               "site-work": work,
                               "site-non-training-seconds-per-round": site_extra,
                               "flower-engine-seconds-per-round": flower_part,
                               "median-overhead-seconds-default-polls":
                                   med(default_poll, "overhead-seconds-per-round")},
            "versus-flower": {"fedcare": fast, "flower-template-app": baseline,
                              "fedcare-median-wall-seconds": med(fast, "wall-seconds"),
                              "flower-median-wall-seconds": med(baseline, "wall-seconds"),
                              "ratio": ratio},
            "scaling": scaling, "goals": goals}


def format_summary(result: dict[str, Any]) -> str:
    lines = []
    for name, goal in result["goals"].items():
        value = goal["value"]
        shown = (f"{value / 2**30:.2f} GiB" if name.startswith("peak-rss") else f"{value:.3f}")
        lines.append(f"{name:<28}{shown:>12}  goal {goal['goal']:<22}"
                     f"{'met' if goal['met'] else 'NOT met'}")
    vs = result["versus-flower"]
    lines.append(f"4-site wall time: fedcare {vs['fedcare-median-wall-seconds']:.1f} s, "
                 f"Flower template app {vs['flower-median-wall-seconds']:.1f} s")
    ro = result["round-overhead"]
    lines.append(f"overhead per round: {ro['median-overhead-seconds']:.3f} s (10 ms polls), "
                 f"{ro['median-overhead-seconds-default-polls']:.3f} s (Flower's 0.1 s polls); "
                 f"of it, sites' non-training work {ro['site-non-training-seconds-per-round']:.3f}"
                 f" s, Flower's engine {ro['flower-engine-seconds-per-round']:.3f} s")
    for row in result["scaling"]:
        lines.append(f"{row['sites']:>4} sites: {row['seconds-per-round']:.2f} s/round "
                     f"(x{row['round-time-ratio-to-smallest']:.2f} for x"
                     f"{row['site-ratio-to-smallest']:g} sites), peak RSS "
                     f"{row['peak-rss-bytes'] / 2**30:.2f} GiB, first round "
                     f"{row['first-round-seconds']:.1f} s")
    return "\n".join(lines)


#: ``fedcare perf-scale``: the synthetic data set (any number of sites, 200 rows each).
SCALE_SETTINGS: dict[str, Any] = {**SIM_SETTINGS, "dataset": "synthetic"}


def run_scale(*, sites: Sequence[int], rounds: int, settings: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """Peak RSS of the whole process tree and seconds per steady round at each site count
    (one simulation each, smallest first, each in its own engine session; no audit)."""
    chosen = settings or SCALE_SETTINGS
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedcare-perf-scale-") as tmp:
        for n in sites:
            logger.info("perf-scale: %d sites, %d rounds", n, rounds)
            rows.append(_fedcare_run(Path(tmp), sites=n, rounds=rounds, poll=0.01,
                                     settings=chosen))
    return {"format": "fedcare-perf-scale", "version": 1,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "settings": {**chosen, "rounds": rounds}, "scaling": rows}


def format_scale(result: dict[str, Any]) -> str:
    lines = [f"{'sites':>6}{'peak RSS':>11}{'s/round':>9}{'round 1 s':>11}{'wall s':>9}"
             f"{'  load average (1/5/15 min, at the end)'}"]
    for row in result["scaling"]:
        load = "/".join(f"{v:.1f}" for v in row["load-average"])
        lines.append(f"{row['sites']:>6}{row['peak-rss-bytes'] / 2**30:>7.2f} GiB"
                     f"{row['seconds-per-round']:>9.2f}{row['first-round-seconds']:>11.1f}"
                     f"{row['wall-seconds']:>9.1f}  {load}")
    lines.append(f"(dataset {result['settings']['dataset']}, {result['settings']['rounds']} "
                 "rounds; s/round = median of rounds 2..N; peak RSS = this process, Ray and "
                 "its workers, sampled every 0.2 s)")
    return "\n".join(lines)
