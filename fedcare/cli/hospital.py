"""The hospital's commands: check a CSV, run the site, and use the model at the bedside.

    fedcare check-csv FILE      every problem in a site's CSV, data quality, DP readiness
    fedcare supernode           check the CSV and the policy, then join over TLS with the site key
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
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from fedcare.cli import ledger, policy
from fedcare.cli.args import EXIT_FAILED, EXIT_OK, overrides
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


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(EXIT_FAILED)


def cmd_supernode(args: argparse.Namespace) -> int:
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
        clientappio_address=args.clientappio_address, insecure=args.insecure,
        strict=args.strict)
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
    policy = load_policy(policy_path)
    sys.stdout.write(f"site policy in force:\n{describe(policy)}\n")
    for warning in policy_warnings(policy):
        sys.stderr.write(f"WARNING: {warning}\n")
    sys.stdout.flush()
    if args.insecure:
        sys.stderr.write(f"WARNING: {launch.INSECURE_WARNING}\n")
    # Until Flower's worker loop installs its own handlers (after the TensorFlow import),
    # a stop signal must still unwind through the `finally` below, not kill us outright:
    # otherwise a SuperNode refused within seconds left this command dead by SIGTERM.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    proc = launch.start_supernode(plan)
    node_gave_up = threading.Event()

    def _watch() -> None:  # the SuperNode gave up (refused, removed): stop the worker too
        code = proc.wait()
        if not stopping.is_set():
            node_gave_up.set()
            logger.error("flower-supernode exited with code %s (refused, removed or "
                         "unreachable: see above); stopping this site", code)
            os.kill(os.getpid(), signal.SIGTERM)

    stopping = threading.Event()
    threading.Thread(target=_watch, daemon=True).start()
    try:
        launch.run_clientapp_worker(plan.clientappio_address)
    except SystemExit:  # Flower's signal handler exits; we decide the exit code
        pass
    finally:
        stopping.set()
        launch.stop(proc)
    return EXIT_FAILED if node_gave_up.is_set() else EXIT_OK


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


    node = sub.add_parser("supernode", help="hospital: check the CSV, then start the SuperNode")
    node.add_argument("--site", required=True, help="this site's name (as on the list)")
    node.add_argument("--csv", required=True, help="this site's training CSV")
    node.add_argument("--state-dir", required=True,
                      help="ledger, audit log, preprocessing (keep and back up)")
    node.add_argument("--superlink", required=True, help="SuperLink fleet address host:9092")
    node.add_argument("--dataset", default="heart-disease",
                      choices=("breast-cancer", "heart-disease"), help="schema of the CSV")
    node.add_argument("--policy",
                      help="this site's policy (site-policy.toml; default STATE_DIR/"
                           "site-policy.toml, else the built-in default: docs/site-policy.md)")
    node.add_argument("--certs", default=DEFAULT_CERTS,
                      help="folder with ca/ca.pem and sites/SITE/auth.key")
    node.add_argument("--root-cert", help="CA certificate (default CERTS/ca/ca.pem)")
    node.add_argument("--private-key", help="site key (default CERTS/sites/SITE/auth.key)")
    node.add_argument("--clientappio-address", default=launch.CLIENTAPPIO_ADDRESS)
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
