"""The researcher's commands: simulations, benchmarks, sweeps, speed and audits.

    fedcare simulate            multi-site DP simulation (default: bundled breast-cancer data)
    fedcare benchmark-heart     the heart-disease protocol: federated vs pooled vs local-only
    fedcare benchmark-heart-personal  global vs personalised vs local-only, per site
    fedcare benchmark-heart-table  the heart-disease protocol laid out like FLamby's table
    fedcare sweep               resumable epsilon x strategy x partitioning x seeds grid
    fedcare perf-epoch          DP vs plain local epoch cost, measured in one run
    fedcare perf                speed and scale ratios (round overhead, vs Flower, 100 sites)
    fedcare perf-scale          peak memory and s/round at 10, 100, 1000 virtual sites
    fedcare perf-csv            the CSV check's time and memory vs pandas.read_csv
    fedcare perf-web            prediction API before/after FastAPI, console render time
    fedcare perf-deploy         a real TLS loopback federation: s/round, memory, idle CPU, dead site
    fedcare audit RUN_DIR       membership-inference audit of a finished simulation
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedcare.cli.args import (
    DEFAULT_SITES,
    EXIT_FAILED,
    EXIT_OK,
    add_run_flags,
    integers,
    names,
    overrides,
)
from fedcare.research.cluster import add_engine_flags


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedcare.common.config import RunConfig
    from fedcare.research.heart_plan import with_plan_defaults
    from fedcare.research.run import run_simulation

    # Heart-disease under a target epsilon: what the user did not set comes from the plan.
    settings, planned = with_plan_defaults(overrides(args))
    if settings.get("dataset") == "heart-disease" and "partitioning" not in settings:
        settings["partitioning"] = "natural"
    sites = DEFAULT_SITES if args.sites is None else args.sites  # 0 is an error, not 4
    if str(settings.get("site-dp", "")).lower() == "true":
        settings.setdefault("min-sites", sites)  # site-level DP's fixed denominator
    config = RunConfig.from_mapping(settings)
    if planned is not None:
        sys.stdout.write(planned.describe() + "\n")
    report = run_simulation(config, num_sites=sites)
    from fedcare.server.report import STATUS_REFUSED

    if report.get("status") == STATUS_REFUSED:
        if "refusals" in report:  # accepted in pre-flight, then no site trained in the rounds
            _print_summary(report)
        else:
            _print_refusal(report)
        return EXIT_FAILED
    _print_summary(report)
    return EXIT_OK


def _print_refusal(report: dict[str, Any]) -> None:
    from fedcare.common.preflight import PreflightAnswer

    config = report["config"]
    out = sys.stdout
    out.write(f"\nfedcare run {report['run']}: REFUSED in pre-flight: fewer than min-sites="
              f"{config['min-sites']} site(s) accepted; nothing was trained, no model written.\n")
    for site, record in sorted(report.get("preflight", {}).get("sites", {}).items()):
        out.write("  " + PreflightAnswer.from_record(record, fallback_site=site).line() + "\n")
    run_dir = Path(config["output-dir"]) / report["run"]
    out.write(f"report: {run_dir / 'report.json'}\n")


def _print_summary(report: dict[str, Any]) -> None:
    from fedcare.server.report import STATUS_REFUSED, format_global, format_site_table

    config = report["config"]
    out = sys.stdout
    out.write(f"\nfedcare run {report['run']}: {config['dataset']}, {len(report['sites'])} sites, "
              f"{config['num-rounds']} rounds, {config['strategy']}\n\n")
    out.write(format_site_table(report) + "\n\n")
    if report.get("status") == STATUS_REFUSED:
        out.write(f"RUN REFUSED: {report['refusal-reason']}\n")
        for site, reasons in report.get("refusals", {}).items():
            out.write(f"  {site}: {'; '.join(reasons)}\n")
        out.write(f"report: {Path(config['output-dir']) / report['run'] / 'report.json'}\n")
        return
    out.write("global model: " + format_global(report["final"]) + "\n")
    if config["dp-mode"] == "off":
        out.write("privacy: DP was OFF for this run; no guarantee.\n")
    else:
        from fedcare.privacy.statement import run_scope_note

        note = run_scope_note(delta=config["delta"], accountant=config["accountant"],
                              sampling=config["sampling"])
        out.write(f"privacy: {note}\n")
        for site, text in report["privacy"].items():
            out.write(f"  {site}: {text}\n")
    if "site-level-privacy" in report:
        out.write(f"and for whole sites: {report['site-level-privacy']['short']}\n")
    _print_audit(report)
    run_dir = Path(config["output-dir"]) / report["run"]
    out.write(f"\nreport: {run_dir / 'report.json'} (plots beside it); model: "
              f"{run_dir / 'model.keras'}\n")


def _print_audit(report: dict[str, Any]) -> None:
    audits = report.get("membership-audit") or {}
    if not audits:
        return
    sys.stdout.write("empirical audit (membership inference on each site's train vs held-out "
                     "rows; a lower bound: it can expose a broken claim, never prove privacy):\n")
    for audit in audits.values():
        sys.stdout.write(f"  {audit['summary']}\n")


def cmd_audit(args: argparse.Namespace) -> int:
    from fedcare.research.audit import audit_run

    report = audit_run(Path(args.run_dir), num_sites=args.sites)
    _print_audit(report)
    violated = [a for a in report["membership-audit"].values() if a.get("violates_claim")]
    return EXIT_FAILED if violated else EXIT_OK


def cmd_benchmark_heart(args: argparse.Namespace) -> int:
    from fedcare.research.heart_benchmark import run_benchmark

    result = run_benchmark(overrides(args), split_seed=args.split_seed,
                           seeds=integers(args.seeds, flag="--seeds"),
                           with_dp=not args.no_dp, output=Path(args.out) if args.out else None)
    sys.stdout.write(result["table"] + "\n")
    runs = [row["run-dir"] for row in result["rows"] if "run-dir" in row]
    sys.stdout.write("run folders:\n" + "".join(f"  {run}\n" for run in runs))
    return EXIT_OK


def cmd_benchmark_heart_personal(args: argparse.Namespace) -> int:
    from fedcare.common.errors import FedcareError
    from fedcare.research.heart_personalisation import run_personalisation_benchmark
    from fedcare.research.sweep import parse_epsilon

    if args.merge:  # no runs: the parts' rows, each run once, and the tables
        from fedcare.common.files import write_json_atomic
        from fedcare.research.heart_personalisation import merge_result_files

        merged = merge_result_files([Path(p) for p in args.merge])
        if args.out:
            write_json_atomic(Path(args.out), merged)
        for key in merged["differing-copies"]:
            sys.stderr.write(f"benchmark-heart-personal: kept the first of differing copies "
                             f"of {key}\n")
        sys.stdout.write(merged["runs"] + "\n\n" + merged["table"] + "\n")
        return EXIT_OK
    epsilons: list[float | None] = [parse_epsilon(e) for e in names(args.epsilons)]
    if None in epsilons:
        raise FedcareError(f"--epsilons must be comma-separated numbers > 0 (each budget is a "
                           f"DP run); got {args.epsilons!r}")
    result = run_personalisation_benchmark(
        overrides(args), split_seeds=integers(args.split_seeds, flag="--split-seeds"),
        seeds=integers(args.seeds, flag="--seeds"),
        output=Path(args.out) if args.out else None, epsilons=epsilons or [None])
    sys.stdout.write(result["table"] + "\n")
    return EXIT_OK


def cmd_perf_epoch(args: argparse.Namespace) -> int:
    from fedcare.common.config import RunConfig
    from fedcare.research.perf import epoch_costs

    config = RunConfig.from_mapping(overrides(args))
    result = epoch_costs(config, repeats=args.repeats)
    for name, seconds in result["seconds-per-epoch"].items():
        sys.stdout.write(f"{name:<22}{seconds * 1000:9.2f} ms/epoch  "
                         f"{result['ratio-to-plain'][name]:5.2f}x plain\n")
    data = result["data"]
    sys.stdout.write(f"({data['dataset']} {data['site']}: {data['rows']} rows, batch "
                     f"{data['batch-size']}, hidden {data['hidden-units']}; medians of "
                     f"{result['repeats']} interleaved samples)\n")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    from fedcare.research.sweep import parse_epsilon, run_sweep

    result = run_sweep(overrides(args), epsilons=[parse_epsilon(e) for e in names(args.epsilons)],
                       strategies=names(args.strategies), partitionings=names(args.partitionings),
                       split_seeds=integers(args.split_seeds, flag="--split-seeds"),
                       seeds=integers(args.seeds, flag="--seeds"), num_sites=args.sites,
                       out_dir=Path(args.out_dir), keep_runs=args.keep_runs)
    sys.stdout.write(f"{result['cells']} cells; wrote:\n" +
                     "".join(f"  {f}\n" for f in result["files"]))
    return EXIT_OK


def cmd_benchmark_heart_table(args: argparse.Namespace) -> int:
    from fedcare.research.flamby_table import heart_table

    command = "fedcare " + " ".join(sys.argv[1:]) if args.record_command else ""
    recorded = None
    if args.recorded:  # our own results JSON (strict: never pickle or eval)
        from fedcare.common.files import strict_json_loads

        recorded = strict_json_loads(Path(args.recorded).read_text())
    result = heart_table(overrides(args), rows=names(args.rows), recorded=recorded,
                         split_seeds=integers(args.split_seeds, flag="--split-seeds"),
                         seeds=integers(args.seeds, flag="--seeds"), cache_dir=Path(args.cache_dir),
                         out=Path(args.out) if args.out else None,
                         markdown=Path(args.markdown) if args.markdown else None,
                         plots_dir=Path(args.plots_dir) if args.plots_dir else None,
                         command=command)
    sys.stdout.write(result["table"] + "\n")
    return EXIT_OK


def cmd_perf(args: argparse.Namespace) -> int:
    from fedcare.common.files import write_json_atomic
    from fedcare.research.perf_suite import format_summary, run_perf

    result = run_perf(sites=args.sites, rounds=args.rounds or 10, repeats=args.repeats,
                      scale_sites=integers(args.scale_sites, flag="--scale-sites"),
                      scale_rounds=args.scale_rounds, epoch_repeats=args.epoch_repeats)
    sys.stdout.write(format_summary(result) + "\n")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out), result)
    return EXIT_OK


def cmd_perf_scale(args: argparse.Namespace) -> int:
    from fedcare.common.files import write_json_atomic
    from fedcare.research.perf_suite import SCALE_SETTINGS, format_scale, run_scale

    result = run_scale(sites=integers(args.sites, flag="--sites"), rounds=args.rounds,
                       settings={**SCALE_SETTINGS, **overrides(args)})
    sys.stdout.write(format_scale(result) + "\n")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out), result)
    return EXIT_OK


def cmd_perf_csv(args: argparse.Namespace) -> int:
    from fedcare.common.files import write_json_atomic
    from fedcare.research.perf_csv import format_result, run_csv_benchmark

    result = run_csv_benchmark(megabytes=args.megabytes, repeats=args.repeats,
                               work_dir=Path(args.work_dir) if args.work_dir else None)
    sys.stdout.write(format_result(result) + "\n")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out), result)
    return EXIT_OK


def _stop_perf_deploy(signum: int, frame: object) -> None:
    raise SystemExit(1)


def cmd_perf_deploy(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _stop_perf_deploy)  # unwind: stop the test bed's processes
    from fedcare.flower_compat import keep_training_stack_out

    # the driver only watches: with TensorFlow mapped here too, the sites' pages of it
    # would be shared with this process, and a site could not release them
    keep_training_stack_out()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fedcare-perf-"))
    root.mkdir(parents=True, exist_ok=True)
    from fedcare.deploy.perf import run_perf

    result = run_perf(root, sites=args.sites, rounds=args.rounds,
                      poll_interval=args.poll_interval, dead_site=not args.no_dead_site)
    sys.stdout.write(result.table() + f"\nlogs: {root}\n")
    return 0


def _add_perf_deploy_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("perf-deploy", help="benchmark: a real TLS loopback federation, "
                                           "measured (s/round, memory, idle CPU, dead site)")
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--poll-interval", type=float, default=None,
                   help="the sites' poll interval (default: fedcare supernode's)")
    p.add_argument("--keep", help="folder for logs, certs and runs (default: a temp folder)")
    p.add_argument("--no-dead-site", action="store_true",
                   help="skip the kill-a-site measurement")
    p.set_defaults(func=cmd_perf_deploy)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = sub.add_parser("simulate", help="multi-site DP simulation on Flower's engine")
    add_run_flags(sim)
    sim.add_argument("--sites", type=int, help="number of virtual sites (default 4)")
    sim.add_argument("--resume", action="store_true",
                     help="continue run --run-name from its last completed round")
    sim.set_defaults(func=cmd_simulate)

    bench = sub.add_parser("benchmark-heart", help="heart-disease protocol (BENCHMARK.md)")
    add_run_flags(bench)
    bench.add_argument("--split-seed", type=int, default=43)
    bench.add_argument("--seeds", default="0", help="run seeds, comma-separated (e.g. 0,1,2)")
    bench.add_argument("--no-dp", action="store_true", help="skip the DP federated run")
    bench.add_argument("--out", help="write the results JSON here")
    bench.set_defaults(func=cmd_benchmark_heart)

    bpers = sub.add_parser("benchmark-heart-personal",
                           help="heart-disease: global vs personalised vs local-only models")
    add_run_flags(bpers)
    bpers.add_argument("--split-seeds", default="43", help="comma-separated, e.g. 43,0,1,2,3")
    bpers.add_argument("--seeds", default="0", help="run seeds, comma-separated (e.g. 0,1,2)")
    bpers.add_argument("--out", help="write the results JSON here")
    bpers.add_argument("--epsilons", default="", help="budgets, e.g. 0.1,0.5,1,3: each runs "
                       "`fedcare plan`'s settings with site-only refinement (default: none)")
    bpers.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                       help="run nothing: merge these results files of the command (each "
                       "run once), write --out and print the tables")
    bpers.set_defaults(func=cmd_benchmark_heart_personal)

    table = sub.add_parser("benchmark-heart-table",
                           help="heart-disease table laid out like FLamby's (BENCHMARK.md)")
    add_run_flags(table)
    table.add_argument("--split-seeds", default="43,0,1,2,3")
    table.add_argument("--seeds", default="0", help="run seeds, comma-separated")
    table.add_argument("--cache-dir", default="runs/heart-table",
                       help="cell cache (a rerun resumes)")
    table.add_argument("--out", help="write the results JSON here")
    table.add_argument("--markdown", help="write the table and its command as Markdown here")
    table.add_argument("--plots-dir", help="write the sweep's tidy CSV and plots here")
    table.add_argument("--rows", default="baselines,strategies,dp,plan,prior",
                       help="row groups to run (the others: none, or from --recorded)")
    table.add_argument("--recorded", metavar="RESULTS_JSON",
                       help="an earlier --out of this command (same split seeds, seeds and "
                       "settings): rows outside --rows are taken from it, each naming the "
                       "command and accountant that made it")
    table.add_argument("--no-record-command", dest="record_command", action="store_false",
                       help="leave the command out of the outputs")
    table.set_defaults(func=cmd_benchmark_heart_table)

    perf = sub.add_parser("perf-epoch", help="DP vs plain local epoch cost, measured in one run")
    add_run_flags(perf)
    perf.add_argument("--repeats", type=int, default=15)
    perf.add_argument("--out", help="write the results JSON here")
    perf.set_defaults(func=cmd_perf_epoch)

    sweep = sub.add_parser("sweep", help="resumable grid: epsilon x strategy x partitioning x "
                                         "seeds; tidy CSV and privacy-utility plots")
    add_run_flags(sweep)
    sweep.add_argument("--epsilons", default="none,1,3,10",
                       help="target epsilons per site for each run (this run); 'none' = no DP")
    sweep.add_argument("--strategies", default="fedavg")
    sweep.add_argument("--partitionings", default="iid",
                       help="natural, iid, dirichlet:ALPHA (comma-separated)")
    sweep.add_argument("--split-seeds", default="43")
    sweep.add_argument("--seeds", default="0", help="run seeds")
    sweep.add_argument("--sites", type=int, default=DEFAULT_SITES)
    sweep.add_argument("--out-dir", required=True, help="sweep folder (cache, tables, plots)")
    sweep.add_argument("--keep-runs", action="store_true", help="keep each run's folder")
    sweep.set_defaults(func=cmd_sweep)

    speed = sub.add_parser("perf", help="speed and scale: DP epoch, round overhead, fedcare "
                                        "vs a Flower template app, 10-100 sites")
    speed.add_argument("--sites", type=int, default=DEFAULT_SITES)
    speed.add_argument("--rounds", type=int, default=10)
    speed.add_argument("--repeats", type=int, default=2, help="interleaved repeats")
    speed.add_argument("--scale-sites", default="10,50,100")
    speed.add_argument("--scale-rounds", type=int, default=3)
    speed.add_argument("--epoch-repeats", type=int, default=9)
    speed.add_argument("--out", help="write the results JSON here")
    speed.set_defaults(func=cmd_perf)

    scale = sub.add_parser("perf-scale", help="peak memory and s/round at 10, 100, 1000 "
                                              "virtual sites (synthetic data)")
    add_run_flags(scale)
    scale.add_argument("--sites", default="10,100,1000", help="site counts, comma-separated")
    scale.add_argument("--out", help="write the results JSON here")
    scale.set_defaults(func=cmd_perf_scale, rounds=3)

    perf = sub.add_parser("perf-csv", help="time and peak memory of the CSV check vs "
                                           "pandas.read_csv on a generated file")
    perf.add_argument("--megabytes", type=float, default=50.0)
    perf.add_argument("--repeats", type=int, default=3)
    perf.add_argument("--work-dir", help="where the generated file goes (default: a temp dir)")
    perf.add_argument("--out", help="write the results JSON here")
    perf.set_defaults(func=cmd_perf_csv)

    from fedcare.research.web_bench import add_parsers as add_web_bench_parsers

    add_web_bench_parsers(sub)  # perf-web

    audit = sub.add_parser("audit", help="membership-inference audit of a finished simulation")
    audit.add_argument("run_dir")
    audit.add_argument("--sites", type=int,
                       help="number of virtual sites the run had (default: as recorded in "
                            "its report.json; a different number is refused)")
    audit.set_defaults(func=cmd_audit)

    _add_perf_deploy_parser(sub)  # perf-deploy: a real TLS loopback federation
    from fedcare.research.engine_bench import add_parsers as add_engine_bench_parsers

    add_engine_bench_parsers(sub)  # perf-engine
    for simulating in (sim, bench, bpers, table, sweep):
        add_engine_flags(simulating)  # --ray-address, --cpus-per-site, --gpus-per-site
    for research in (sim, bench, bpers, table, sweep, speed, scale):
        research.set_defaults(quiet_terminal=True)  # bars + answer; logs to files (-v: all)
    for driver in (sim, bench, bpers, table, sweep, speed, scale, audit):
        driver.set_defaults(flower_without_tensorflow=True)  # the sites train in workers
    from fedcare.research.heart_plan import add_parsers as add_plan_parsers

    add_plan_parsers(sub)  # plan, plan-tune (budget-aware settings, tuned on split 43)
