"""``fedcare``: everything Flower's own ``flwr`` command does not do.

    fedcare simulate            multi-site DP simulation (default: bundled breast-cancer data)
    fedcare benchmark-heart     the heart-disease protocol: federated vs pooled vs local-only
    fedcare benchmark-heart-personal  global vs personalised vs local-only, per site
    fedcare perf-epoch          DP vs plain local epoch cost, measured in one run
    fedcare perf                speed and scale ratios (round overhead, vs Flower, 100 sites)
    fedcare sweep               resumable epsilon x strategy x partitioning x seeds grid
    fedcare benchmark-heart-table  the heart-disease protocol laid out like FLamby's table
    fedcare check-csv FILE      a hospital's CSV: every problem, data quality, DP readiness
    fedcare perf-csv            the CSV check's time and memory vs pandas.read_csv
    fedcare ledger STATE_DIR    a site's privacy spend, recomputed from its ledger
    fedcare ledger reset ...    start a site's budget over (archived; the server is told)
    fedcare audit-log STATE_DIR verify a site's hash-chained audit log
    fedcare audit RUN_DIR       membership-inference audit of a finished simulation
    fedcare console             read-only browser views: runs folder, site state dir
    fedcare perf-web            prediction API before/after FastAPI, console render time

  at a hospital, with the global model and the site's own state dir:
    fedcare predict             risk scores + explanations for a CSV of new patients
    fedcare validation-report   the model on the site's held-out rows (HTML, PNG, JSON)
    fedcare drift               a new batch against the site's training distribution
    fedcare serve               a prediction API (localhost; token needed beyond it; TLS)

  deployment (docs/runbook-consortium.md, docs/runbook-hospital.md):
    fedcare certs ...           consortium CA, SuperLink certificate, site keys, status
    fedcare superlink           consortium: SuperLink with TLS + SuperNode authentication
    fedcare supernode           hospital: check the CSV, then join over TLS with the site key
    fedcare policy ...          hospital: check, show and pin the site policy (site-policy.toml)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedcare.client import policy_commands
from fedcare.common.errors import FedcareError

logger = logging.getLogger("fedcare")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
TOKEN_ENV = "FEDCARE_API_TOKEN"
DEFAULT_SITES = 4


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip("\"'")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--set key=value`` pairs plus the named shortcut flags, as run-config keys."""
    out: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FedcareError(f"--set must look like key=value; got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    for flag, key in (("dataset", "dataset"), ("rounds", "num-rounds"), ("strategy", "strategy"),
                      ("target_epsilon", "target-epsilon"), ("output_dir", "output-dir"),
                      ("run_name", "run-name"), ("data_dir", "data-dir"), ("seed", "seed")):
        value = getattr(args, flag, None)
        if value is not None:
            out[key] = value
    if getattr(args, "resume", False):
        out["resume"] = True
    return out


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedcare.common.config import RunConfig
    from fedcare.simulations.run import run_simulation

    overrides = _overrides(args)
    if overrides.get("dataset") == "heart-disease" and "partitioning" not in overrides:
        overrides["partitioning"] = "natural"
    sites = DEFAULT_SITES if args.sites is None else args.sites  # 0 is an error, not 4
    if str(overrides.get("site-dp", "")).lower() == "true":
        overrides.setdefault("min-sites", sites)  # site-level DP's fixed denominator
    config = RunConfig.from_mapping(overrides)
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
        assumption = ("assuming Poisson sampling as implemented" if config["sampling"] == "poisson"
                      else "shuffled batches, no amplification by sampling claimed")
        out.write(f"privacy: per site, 'eps run' is this run's figure and 'eps life' the "
                  f"lifetime figure at that site (every run in its ledger), at "
                  f"delta={config['delta']} ({config['accountant'].upper()} accountant, "
                  f"add/remove-one adjacency, {assumption}); never averaged across sites.\n")
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
    from fedcare.simulations.audit import audit_run

    report = audit_run(Path(args.run_dir), num_sites=args.sites)
    _print_audit(report)
    violated = [a for a in report["membership-audit"].values() if a.get("violates_claim")]
    return EXIT_FAILED if violated else EXIT_OK


def cmd_audit_log(args: argparse.Namespace) -> int:
    from fedcare.client.audit import verify_log

    result = verify_log(args.path)
    if result.ok:
        sys.stdout.write(f"{args.path}: audit log intact ({result.entries} entries, "
                         "hash chain verified)\n")
        return EXIT_OK
    sys.stdout.write(f"{args.path}: audit log NOT intact: {result.reason}\n")
    return EXIT_FAILED


def _bundle(args: argparse.Namespace) -> Any:
    from fedcare.client.bundle import ModelBundle
    from fedcare.client.site import PREPROCESSOR_FILENAME

    # The site's personalised model when it has a private part from this run (else global).
    return ModelBundle.load(model_path=args.model,
                            preprocessor_path=Path(args.site_dir) / PREPROCESSOR_FILENAME,
                            threshold=args.threshold, site_dir=args.site_dir)


def cmd_predict(args: argparse.Namespace) -> int:
    from fedcare.client.bundle import predict_csv
    from fedcare.common.errors import DataValidationError

    bundle = _bundle(args)
    try:
        rows = predict_csv(bundle, args.csv, args.out)
    except DataValidationError as err:
        sys.stdout.write(f"{err}\nnothing written\n")
        return EXIT_FAILED
    sys.stdout.write(f"{rows} patients scored: {args.out} (risk, label at threshold "
                     f"{bundle.threshold:g}, features that pushed each score up and down)\n")
    return EXIT_OK


def cmd_validation_report(args: argparse.Namespace) -> int:
    from fedcare.client.validation_report import HTML_FILENAME, build_validation_report
    from fedcare.common.data import load_site_csv
    from fedcare.common.errors import DataValidationError

    bundle = _bundle(args)
    try:
        table = load_site_csv(args.csv, bundle.schema, missing="keep")
    except DataValidationError as err:
        sys.stdout.write(f"{err}\n")
        return EXIT_FAILED
    run_report = json.loads(Path(args.run_report).read_text()) if args.run_report else None
    privacy = (bundle.manifest.get("privacy") or {}).get(args.site) or {}
    build_validation_report(
        site=args.site, features=table.features, labels=table.labels,
        risks=bundle.predict_encoded(bundle.encode(table.features)), threshold=bundle.threshold,
        model_info=bundle.describe(), privacy_statement=privacy.get("statement"),
        run_report=run_report, out_dir=args.out)
    sys.stdout.write(f"validation report: {Path(args.out) / HTML_FILENAME} (stays at the site: "
                     "it is computed from patient rows without DP)\n")
    return EXIT_OK


def cmd_drift(args: argparse.Namespace) -> int:
    from fedcare.client.drift import check_drift
    from fedcare.client.site import PROFILE_FILENAME
    from fedcare.common.data import load_features_csv
    from fedcare.common.errors import DataValidationError
    from fedcare.common.files import strict_json_loads

    bundle = _bundle(args)
    profile = strict_json_loads((Path(args.site_dir) / PROFILE_FILENAME).read_text())
    try:
        batch = load_features_csv(args.csv, bundle.schema)
    except DataValidationError as err:
        sys.stdout.write(f"{err}\n")
        return EXIT_FAILED
    report = check_drift(profile, bundle.encode(batch.features),
                         feature_names=bundle.feature_names)
    sys.stdout.write(report.summary() + "\n")
    return EXIT_FAILED if report.flagged() else EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from fedcare.client.api import serve
    from fedcare.common.web import read_token

    token = read_token(args.token_file, TOKEN_ENV)  # owner-only file, else a message, rc 2
    serve(_bundle(args), host=args.host, port=args.port, token=token,
          ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    return EXIT_OK


def cmd_benchmark_heart(args: argparse.Namespace) -> int:
    from fedcare.simulations.heart_benchmark import run_benchmark

    overrides = _overrides(args)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    result = run_benchmark(overrides, split_seed=args.split_seed, seeds=seeds,
                           with_dp=not args.no_dp, output=Path(args.out) if args.out else None)
    sys.stdout.write(result["table"] + "\n")
    runs = [row["run-dir"] for row in result["rows"] if "run-dir" in row]
    sys.stdout.write("run folders:\n" + "".join(f"  {run}\n" for run in runs))
    return EXIT_OK


def cmd_benchmark_heart_personal(args: argparse.Namespace) -> int:
    from fedcare.simulations.heart_personalisation import run_personalisation_benchmark

    def ints(text: str) -> list[int]:
        return [int(s) for s in text.split(",") if s.strip()]

    epsilons: list[float | None] = [float(e) for e in args.epsilons.split(",") if e.strip()]
    result = run_personalisation_benchmark(
        _overrides(args), split_seeds=ints(args.split_seeds), seeds=ints(args.seeds),
        output=Path(args.out) if args.out else None, epsilons=epsilons or [None])
    sys.stdout.write(result["table"] + "\n")
    return EXIT_OK


def cmd_perf_epoch(args: argparse.Namespace) -> int:
    from fedcare.common.config import RunConfig
    from fedcare.simulations.perf import epoch_costs

    config = RunConfig.from_mapping(_overrides(args))
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
    from fedcare.simulations.sweep import parse_epsilon, run_sweep

    def items(text: str) -> list[str]:
        return [t.strip() for t in text.split(",") if t.strip()]

    overrides = _overrides(args)
    result = run_sweep(overrides, epsilons=[parse_epsilon(e) for e in items(args.epsilons)],
                       strategies=items(args.strategies), partitionings=items(args.partitionings),
                       split_seeds=[int(s) for s in items(args.split_seeds)],
                       seeds=[int(s) for s in items(args.seeds)], num_sites=args.sites,
                       out_dir=Path(args.out_dir), keep_runs=args.keep_runs)
    sys.stdout.write(f"{result['cells']} cells; wrote:\n" +
                     "".join(f"  {f}\n" for f in result["files"]))
    return EXIT_OK


def cmd_benchmark_heart_table(args: argparse.Namespace) -> int:
    from fedcare.simulations.flamby_table import heart_table

    def seeds(text: str) -> list[int]:
        return [int(s) for s in text.split(",") if s.strip()]

    command = "fedcare " + " ".join(sys.argv[1:]) if args.record_command else ""
    result = heart_table(_overrides(args), split_seeds=seeds(args.split_seeds),
                         seeds=seeds(args.seeds), cache_dir=Path(args.cache_dir),
                         out=Path(args.out) if args.out else None,
                         markdown=Path(args.markdown) if args.markdown else None,
                         plots_dir=Path(args.plots_dir) if args.plots_dir else None,
                         command=command)
    sys.stdout.write(result["table"] + "\n")
    return EXIT_OK


def cmd_perf(args: argparse.Namespace) -> int:
    from fedcare.common.files import write_json_atomic
    from fedcare.simulations.perf_suite import format_summary, run_perf

    result = run_perf(sites=args.sites, rounds=args.rounds or 10, repeats=args.repeats,
                      scale_sites=[int(s) for s in args.scale_sites.split(",") if s.strip()],
                      scale_rounds=args.scale_rounds, epoch_repeats=args.epoch_repeats)
    sys.stdout.write(format_summary(result) + "\n")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out), result)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedcare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def run_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", choices=("breast-cancer", "heart-disease"))
        p.add_argument("--rounds", type=int)
        p.add_argument("--strategy")
        p.add_argument("--target-epsilon", type=float)
        p.add_argument("--seed", type=int, help="run seed (model init, sampling)")
        p.add_argument("--data-dir")
        p.add_argument("--output-dir")
        p.add_argument("--run-name")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="any run-config key from pyproject.toml, e.g. --set batch-size=64")

    sim = sub.add_parser("simulate", help="multi-site DP simulation on Flower's engine")
    run_flags(sim)
    sim.add_argument("--sites", type=int, help="number of virtual sites (default 4)")
    sim.add_argument("--resume", action="store_true",
                     help="continue run --run-name from its last completed round")
    sim.set_defaults(func=cmd_simulate)

    bench = sub.add_parser("benchmark-heart", help="heart-disease protocol (BENCHMARK.md)")
    run_flags(bench)
    bench.add_argument("--split-seed", type=int, default=43)
    bench.add_argument("--seeds", default="0", help="run seeds, comma-separated (e.g. 0,1,2)")
    bench.add_argument("--no-dp", action="store_true", help="skip the DP federated run")
    bench.add_argument("--out", help="write the results JSON here")
    bench.set_defaults(func=cmd_benchmark_heart)

    bpers = sub.add_parser("benchmark-heart-personal",
                           help="heart-disease: global vs personalised vs local-only models")
    run_flags(bpers)
    bpers.add_argument("--split-seeds", default="43", help="comma-separated, e.g. 43,0,1,2,3")
    bpers.add_argument("--seeds", default="0", help="run seeds, comma-separated (e.g. 0,1,2)")
    bpers.add_argument("--out", help="write the results JSON here")
    bpers.add_argument("--epsilons", default="", help="budgets, e.g. 0.1,0.5,1,3: each runs "
                       "`fedcare plan`'s settings with site-only refinement (default: none)")
    bpers.set_defaults(func=cmd_benchmark_heart_personal)

    table = sub.add_parser("benchmark-heart-table",
                           help="heart-disease table laid out like FLamby's (BENCHMARK.md)")
    run_flags(table)
    table.add_argument("--split-seeds", default="43,0,1,2,3")
    table.add_argument("--seeds", default="0", help="run seeds, comma-separated")
    table.add_argument("--cache-dir", default="runs/heart-table",
                       help="cell cache (a rerun resumes)")
    table.add_argument("--out", help="write the results JSON here")
    table.add_argument("--markdown", help="write the table and its command as Markdown here")
    table.add_argument("--plots-dir", help="write the sweep's tidy CSV and plots here")
    table.add_argument("--no-record-command", dest="record_command", action="store_false",
                       help="leave the command out of the outputs")
    table.set_defaults(func=cmd_benchmark_heart_table)

    perf = sub.add_parser("perf-epoch", help="DP vs plain local epoch cost, measured in one run")
    run_flags(perf)
    perf.add_argument("--repeats", type=int, default=15)
    perf.add_argument("--out", help="write the results JSON here")
    perf.set_defaults(func=cmd_perf_epoch)

    sweep = sub.add_parser("sweep", help="resumable grid: epsilon x strategy x partitioning x "
                                         "seeds; tidy CSV and privacy-utility plots")
    run_flags(sweep)
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

    from fedcare.data_commands import add_parsers as add_data_parsers

    add_data_parsers(sub)  # check-csv, perf-csv

    def bundle_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="the global model.keras (model.json "
                                                     "beside it)")
        p.add_argument("--site-dir", required=True,
                       help="this site's state dir (preprocessor.json, training-profile.json)")
        p.add_argument("--threshold", type=float, default=0.5)

    pred = sub.add_parser("predict", help="risk + explanation for each patient in a CSV")
    bundle_flags(pred)
    pred.add_argument("--csv", required=True)
    pred.add_argument("--out", required=True)
    pred.set_defaults(func=cmd_predict)

    val = sub.add_parser("validation-report", help="the model on this site's held-out rows")
    bundle_flags(val)
    val.add_argument("--csv", required=True, help="held-out rows with the label column")
    val.add_argument("--site", required=True, help="this site's name (for its privacy figure)")
    val.add_argument("--run-report", help="the run's report.json (metrics by round)")
    val.add_argument("--out", required=True, help="output folder")
    val.set_defaults(func=cmd_validation_report)

    drift = sub.add_parser("drift", help="compare new patients with the training rows")
    bundle_flags(drift)
    drift.add_argument("--csv", required=True)
    drift.set_defaults(func=cmd_drift)

    srv = sub.add_parser("serve", help="prediction API: /predict, /health, /model")
    bundle_flags(srv)
    from fedcare.common.web import add_server_flags

    add_server_flags(srv, port=8080, token_env=TOKEN_ENV)
    srv.set_defaults(func=cmd_serve)
    from fedcare.console.commands import add_parsers as add_console_parsers

    add_console_parsers(sub)  # console
    from fedcare.simulations.web_bench import add_parsers as add_web_bench_parsers

    add_web_bench_parsers(sub)  # perf-web

    audit = sub.add_parser("audit", help="membership-inference audit of a finished simulation")
    audit.add_argument("run_dir")
    audit.add_argument("--sites", type=int,
                       help="number of virtual sites the run had (default: as recorded in "
                            "its report.json; a different number is refused)")
    audit.set_defaults(func=cmd_audit)

    audit_log = sub.add_parser("audit-log", help="verify a site's hash-chained audit log")
    audit_log.add_argument("path", help="the site's state dir or its audit-log.jsonl")
    audit_log.set_defaults(func=cmd_audit_log)

    from fedcare.deploy.commands import add_parsers as add_deploy_parsers

    add_deploy_parsers(sub)  # certs ..., superlink, supernode
    policy_commands.add_parsers(sub)  # policy check|show|hash

    from fedcare.client.ledger_commands import add_parsers as add_ledger_parsers

    add_ledger_parsers(sub)  # ledger [show] STATE_DIR, ledger reset
    from fedcare.research.heart_plan import add_parsers as add_plan_parsers

    add_plan_parsers(sub)  # plan, plan-tune (budget-aware settings, tuned on split 43)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("flwr").propagate = False  # Flower logs through its own handler
    try:
        return int(args.func(args))
    except FedcareError as err:
        sys.stderr.write(f"fedcare: {err}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("fedcare: interrupted\n")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
