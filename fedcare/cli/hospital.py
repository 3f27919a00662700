"""The hospital's commands: check a CSV, run the site, and use the model at the bedside.

    fedcare check-csv FILE      every problem in a site's CSV, data quality, DP readiness
    fedcare supernode           check the CSV and the policy, then join over TLS with the site key
    fedcare supernode status    health of the running site (exit 0/1, for monitoring)
    fedcare policy ...          check, show and pin the site policy (site-policy.toml)
    fedcare ledger ...          the site's privacy spend; start its budget over
    fedcare audit-log DIR       verify the site's hash-chained audit log
    fedcare predict             risk scores + explanations for a CSV of new patients
    fedcare validation-report   the model on the site's held-out rows (HTML, PNG, JSON)
    fedcare drift               a new batch against the site's training distribution
    fedcare serve               a prediction API (localhost; token needed beyond it; TLS)
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from fedcare.cli import ledger, policy
from fedcare.cli.args import EXIT_FAILED, EXIT_OK, EXIT_USAGE, overrides, positive_int
from fedcare.common.config import DATASETS
from fedcare.deploy import certs as certs_mod
from fedcare.deploy import launch

logger = logging.getLogger(__name__)

TOKEN_ENV = "FEDCARE_API_TOKEN"
DEFAULT_CERTS = "certs"


def run_config_for_check(args: argparse.Namespace) -> Any:
    """The run settings the DP-readiness estimate assumes: project defaults, then flags."""
    from fedcare.common.config import RunConfig

    # --set pairs, --dataset, --target-epsilon, --rounds
    return RunConfig.from_mapping(overrides(args))


def cmd_check_csv(args: argparse.Namespace) -> int:
    from fedcare.common.errors import DataValidationError
    from fedcare.data.site_check import check_csv_file

    config = run_config_for_check(args)
    try:
        check = check_csv_file(args.path, config, missing=args.missing,
                               allow_symlinks=args.allow_symlinks)
        sys.stdout.write(f"{args.path}: valid ({check.quality.rows_kept} rows left after "
                         "cleaning)\n" + "\n".join(check.lines()) + "\n")
        if args.strict:
            check.quality.raise_if_warned()
    except DataValidationError as err:
        sys.stdout.write(f"{err}\n")
        if args.strict:
            sys.stdout.write("--strict: data-quality warnings count as problems\n")
        return EXIT_FAILED
    verdict = "OK" if not check.quality.warned else (
        f"OK with {len(check.quality.findings)} data-quality warning(s) (not blocking; "
        "--strict makes them errors)")
    sys.stdout.write(f"{args.path}: {verdict}\n")
    return EXIT_OK


def cmd_audit_log(args: argparse.Namespace) -> int:
    from fedcare.site.audit import verify_log

    result = verify_log(args.path)
    if result.ok:
        sys.stdout.write(f"{args.path}: audit log intact ({result.entries} entries, "
                         "hash chain verified)\n")
        return EXIT_OK
    sys.stdout.write(f"{args.path}: audit log NOT intact: {result.reason}\n")
    return EXIT_FAILED


def _bundle(args: argparse.Namespace) -> Any:
    from fedcare.hospital.bundle import ModelBundle
    from fedcare.site.site import PREPROCESSOR_FILENAME

    # The site's personalised model when it has a private part from this run (else global).
    return ModelBundle.load(model_path=args.model,
                            preprocessor_path=Path(args.site_dir) / PREPROCESSOR_FILENAME,
                            threshold=args.threshold, site_dir=args.site_dir)


def cmd_predict(args: argparse.Namespace) -> int:
    from fedcare.common.errors import DataValidationError
    from fedcare.hospital.bundle import predict_csv

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
    from fedcare.common.errors import DataValidationError
    from fedcare.data.validate import load_site_csv
    from fedcare.hospital.validation_report import HTML_FILENAME, build_validation_report

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
    from fedcare.common.errors import DataValidationError
    from fedcare.common.files import strict_json_loads
    from fedcare.data.validate import load_features_csv
    from fedcare.hospital.drift import check_drift
    from fedcare.site.site import PROFILE_FILENAME

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
    from fedcare.common.web import read_token
    from fedcare.hospital.api import serve

    token = read_token(args.token_file, TOKEN_ENV)  # owner-only file, else a message, rc 2
    serve(_bundle(args), host=args.host, port=args.port, token=token,
          ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    return EXIT_OK


STATUS_TIMEOUT = 5.0


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(EXIT_OK)  # asked to stop: a clean stop


def _listening(address: str) -> bool:
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.replace("0.0.0.0", "127.0.0.1"), int(port)),
                                      timeout=STATUS_TIMEOUT):
            return True
    except OSError:
        return False


def cmd_supernode_status(args: argparse.Namespace) -> int:
    """Health of this site for monitoring: the process its state folder records is alive
    and answers on its local ClientAppIo port, its policy loads, its ledger is readable;
    prints spend and budget left."""
    from fedcare.common.errors import FedcareError
    from fedcare.deploy import site_process
    from fedcare.site.policy import load_policy, policy_path_for

    state = Path(args.state_dir)
    problems: list[str] = []
    try:
        record = site_process.read_record(state)
    except FedcareError as err:
        problems.append(str(err))
        record = None
    address = args.clientappio_address or (record.clientappio_address if record
                                           else launch.CLIENTAPPIO_ADDRESS)
    if record is None:  # a site started before the record existed, or none at all
        running = _listening(address)
        where = f"local port {address}; no {site_process.SITE_PROCESS_FILENAME} in {state}, " \
                "so only the port was checked"
        if not running:
            problems.append("the site process does not answer")
    else:
        if record.site != args.site:
            problems.append(f"{site_process.record_path(state)} is site {record.site!r}'s, "
                            f"not {args.site!r}'s: check --site and --state-dir")
        alive = site_process.process_alive(record.pid)
        running = alive and _listening(address)
        where = f"pid {record.pid}, local port {address}, started {record.started}"
        if not alive:
            problems.append(f"its process (pid {record.pid}) has ended without stopping "
                            "cleanly")
        elif not running:
            problems.append(f"its process (pid {record.pid}) does not answer on {address}")
    sys.stdout.write(f"site {args.site}: {'running' if running else 'NOT RUNNING'} "
                     f"({where})\n")
    try:
        site_policy = load_policy(policy_path_for(state, Path(args.policy) if args.policy
                                                  else None))
        sys.stdout.write("\n".join(policy.spend_lines(state, site_policy)) + "\n")
    except (FedcareError, OSError, ValueError) as err:
        problems.append(str(err))
    for problem in problems:
        sys.stdout.write(f"PROBLEM: {problem}\n")
    return EXIT_FAILED if problems else EXIT_OK


def cmd_supernode(args: argparse.Namespace) -> int:
    if args.action == "status":
        return cmd_supernode_status(args)
    missing = [flag for flag, value in (("--csv", args.csv), ("--superlink", args.superlink))
               if not value]
    if missing:
        sys.stderr.write(f"supernode: {' and '.join(missing)} must be given to run a site; "
                         "got none\n")
        return EXIT_USAGE
    from fedcare.common.errors import ConfigError, DataValidationError
    from fedcare.site.policy import describe, load_policy, policy_path_for, policy_warnings

    certs = Path(args.certs)
    policy_path = policy_path_for(Path(args.state_dir),
                                  Path(args.policy) if args.policy else None)
    plan = launch.SuperNodePlan(
        site=args.site, csv=Path(args.csv), state_dir=Path(args.state_dir),
        superlink=args.superlink, dataset=args.dataset, policy=policy_path,
        root_cert=Path(args.root_cert) if args.root_cert else certs / certs_mod.CA_CERT,
        private_key=(Path(args.private_key) if args.private_key
                     else certs_mod.site_key_path(certs, args.site)),
        clientappio_address=args.clientappio_address or launch.CLIENTAPPIO_ADDRESS,
        insecure=args.insecure,
        strict=args.strict, poll_interval=args.poll_interval,
        max_connect_attempts=args.max_connect_attempts)
    try:
        summary = launch.check_site(plan)
    except DataValidationError as err:
        sys.stdout.write(f"{err}\nnot starting: fix the CSV first "
                         "(`fedcare check-csv` shows the same list)\n")
        return EXIT_FAILED
    except ConfigError as err:
        sys.stdout.write(f"{err}\nnot starting: fix the site policy or the key files first "
                         "(`fedcare policy check FILE`)\n")
        return EXIT_FAILED
    sys.stdout.write(f"CSV OK: {summary}\n")
    site_policy = load_policy(policy_path)
    sys.stdout.write(f"site policy in force:\n{describe(site_policy)}\n")
    for warning in policy_warnings(site_policy):
        sys.stderr.write(f"WARNING: {warning}\n")
    sys.stdout.flush()
    if args.insecure:
        sys.stderr.write(f"WARNING: {launch.INSECURE_WARNING}\n")
    # Until Flower's SuperNode installs its own handlers (after the TensorFlow import),
    # a stop signal must still unwind through `finally` blocks, not kill us outright.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    from fedcare.deploy import probe

    node = plan.site_node()
    try:
        probe.wait_for_superlink(plan.superlink, node.root_certificates,
                                 plan.max_connect_attempts)
    except probe.ConnectError as err:
        sys.stderr.write(f"{err}\nnot starting: the site could not reach its SuperLink\n")
        return EXIT_FAILED
    from fedcare.deploy import site_process

    site_process.write_record(plan.state_dir, site=plan.site,
                              clientappio_address=plan.clientappio_address)
    try:
        launch.run_site(plan)
    except SystemExit as done:  # Flower's handler: a stop signal is a clean stop
        return EXIT_OK if done.code in (None, EXIT_OK) else EXIT_FAILED
    except Exception as err:
        logger.error("the SuperNode stopped: %s: %s", type(err).__name__, err)
    finally:
        site_process.remove_record(plan.state_dir)
    sys.stderr.write("the SuperNode gave up (refused, removed or unreachable: see the log "
                     "above); this site stopped\n")
    return EXIT_FAILED


def _poll_interval(text: str) -> float:
    from fedcare.flower_compat import check_poll_interval

    try:
        return check_poll_interval(float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser(
        "check-csv", help="validate a site's CSV; data-quality and DP-readiness report")
    check.add_argument("path")
    check.add_argument("--dataset", default="heart-disease", choices=DATASETS)
    check.add_argument("--missing", default="drop", choices=("drop", "keep"))
    check.add_argument("--strict", action="store_true",
                       help="data-quality warnings are errors (exit 1)")
    check.add_argument("--allow-symlinks", action="store_true",
                       help="read a symbolic link that leads out of the file's folder")
    check.add_argument("--target-epsilon", type=float,
                       help="the run's whole-run epsilon per site (DP-readiness estimate)")
    check.add_argument("--rounds", type=int, help="the run's rounds (DP-readiness estimate)")
    check.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="any other run-config key, e.g. --set batch-size=64")
    check.set_defaults(func=cmd_check_csv)


    node = sub.add_parser("supernode", help="hospital: check the CSV, then start the site; "
                                            "`supernode status`: health check, exit 0/1")
    node.add_argument("action", nargs="?", choices=("run", "status"), default="run")
    node.add_argument("--site", required=True, help="this site's name (as on the list)")
    node.add_argument("--csv", help="this site's training CSV (to run)")
    node.add_argument("--state-dir", required=True,
                      help="ledger, audit log, preprocessing (keep and back up)")
    node.add_argument("--superlink", help="SuperLink fleet address host:9092 (to run)")
    node.add_argument("--dataset", default="heart-disease",
                      choices=("breast-cancer", "heart-disease"), help="schema of the CSV")
    node.add_argument("--policy",
                      help="this site's policy (site-policy.toml; default STATE_DIR/"
                           "site-policy.toml, else the built-in default: docs/site-policy.md)")
    node.add_argument("--certs", default=DEFAULT_CERTS,
                      help="folder with ca/ca.pem and sites/SITE/auth.key")
    node.add_argument("--root-cert", help="CA certificate (default CERTS/ca/ca.pem)")
    node.add_argument("--private-key", help="site key (default CERTS/sites/SITE/auth.key)")
    node.add_argument("--clientappio-address",
                      help="the local port between the SuperNode and its ClientApp (default "
                           f"{launch.CLIENTAPPIO_ADDRESS}; `status` reads the running site's "
                           "from STATE_DIR/site-process.json)")
    node.add_argument("--poll-interval", type=_poll_interval, default=launch.POLL_INTERVAL,
                      help="seconds between polls of the SuperLink (default "
                           f"{launch.POLL_INTERVAL}; Flower's own: 3)")
    node.add_argument("--max-connect-attempts", type=positive_int,
                      default=launch.MAX_CONNECT_ATTEMPTS,
                      help="TLS/connection attempts before the site exits 1 (default "
                           f"{launch.MAX_CONNECT_ATTEMPTS})")
    node.add_argument("--insecure", action="store_true",
                      help="plain text, no authentication (test beds only; warns)")
    node.add_argument("--strict", action="store_true",
                      help="do not start when the CSV has data-quality warnings")
    node.set_defaults(func=cmd_supernode)

    policy.add_parsers(sub)  # policy check|show|hash
    ledger.add_parsers(sub)  # ledger [show] STATE_DIR, ledger reset

    audit_log = sub.add_parser("audit-log", help="verify a site's hash-chained audit log")
    audit_log.add_argument("path", help="the site's state dir or its audit-log.jsonl")
    audit_log.set_defaults(func=cmd_audit_log)

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
