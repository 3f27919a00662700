"""``fedcare console``: its command-line flags and the command itself."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fedcare.common.errors import ConfigError, describe_value
from fedcare.common.web import add_server_flags
from fedcare.privacy.config import ACCOUNTANTS, DEFAULT_ACCOUNTANT

CONSOLE_TOKEN_ENV = "FEDCARE_CONSOLE_TOKEN"
DEFAULT_PORT = 8090
WHERE = "console"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "console", help="read-only browser views: a runs folder (consortium) and/or a site "
                        "state dir (hospital)",
        description="Serve the consortium view of --runs and/or the hospital view of "
                    "--site-dir. Binds 127.0.0.1 by default; any other --host needs a token.")
    p.add_argument("--runs", help="runs folder (each run in its own sub-folder), e.g. runs/")
    p.add_argument("--site-dir", help="this site's state dir (ledger, audit log)")
    p.add_argument("--policy", help="the site policy in force (site-policy.toml), shown as is")
    p.add_argument("--model", help="global model.keras: enables the prediction form "
                                   "(needs --site-dir for the site's preprocessor)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--drift-csv", help="a batch of new patients (CSV) to check against the "
                                       "site's training profile (needs --model)")
    p.add_argument("--validation-report", help="folder holding validation-report.json "
                                               "(default: the site dir)")
    p.add_argument("--epsilon-budget", type=float,
                   help="lifetime budget to show when the policy names none")
    p.add_argument("--delta", type=float, default=1e-3, help="delta for the site's epsilon")
    p.add_argument("--accountant", default=DEFAULT_ACCOUNTANT, choices=ACCOUNTANTS)
    p.add_argument("--refresh", type=int, default=3,
                   help="seconds between a running run's page updates (>= 1)")
    add_server_flags(p, port=DEFAULT_PORT, token_env=CONSOLE_TOKEN_ENV)
    p.set_defaults(func=cmd_console)


def _problems(args: argparse.Namespace) -> list[str]:
    problems = []
    if not args.runs and not args.site_dir:
        problems.append(f"{WHERE}: --runs or --site-dir must be given; got neither")
    for flag, value in (("--runs", args.runs), ("--site-dir", args.site_dir),
                        ("--validation-report", args.validation_report)):
        if value and not Path(value).is_dir():
            problems.append(f"{WHERE}: {flag} must be an existing folder; "
                            f"got {describe_value(value)}")
    for flag, value in (("--policy", args.policy), ("--model", args.model),
                        ("--drift-csv", args.drift_csv)):
        if value and not Path(value).is_file():
            problems.append(f"{WHERE}: {flag} must be an existing file; "
                            f"got {describe_value(value)}")
    if args.model and not args.site_dir:
        problems.append(f"{WHERE}: --model needs --site-dir (the site's preprocessor); "
                        "got no --site-dir")
    if args.drift_csv and not args.model:
        problems.append(f"{WHERE}: --drift-csv needs --model (its encoding); got no --model")
    if args.epsilon_budget is not None and not args.epsilon_budget > 0:
        problems.append(f"{WHERE}: --epsilon-budget must be > 0; got {args.epsilon_budget}")
    if args.refresh < 1:
        problems.append(f"{WHERE}: --refresh must be at least 1 second; got {args.refresh}")
    if not 0 < args.delta < 1:
        problems.append(f"{WHERE}: --delta must be in (0, 1); got {args.delta}")
    return problems


def cmd_console(args: argparse.Namespace) -> int:
    from fedcare.common.web import read_token
    from fedcare.console.app import ConsoleSettings, serve

    problems = _problems(args)
    if problems:
        raise ConfigError(problems)
    predictor = None
    if args.model:
        from fedcare.hospital.bundle import ModelBundle
        from fedcare.site.site import PREPROCESSOR_FILENAME

        predictor = ModelBundle.load(model_path=args.model,
                                     preprocessor_path=Path(args.site_dir) / PREPROCESSOR_FILENAME,
                                     threshold=args.threshold, site_dir=args.site_dir)
    settings = ConsoleSettings(
        runs_dir=Path(args.runs) if args.runs else None,
        site_dir=Path(args.site_dir) if args.site_dir else None,
        policy=Path(args.policy) if args.policy else None,
        validation_dir=Path(args.validation_report) if args.validation_report else None,
        epsilon_budget=args.epsilon_budget, delta=args.delta, accountant=args.accountant,
        refresh_seconds=args.refresh,
        drift_csv=Path(args.drift_csv) if args.drift_csv else None)
    logging.getLogger(__name__).info("console: runs %s, site %s", settings.runs_dir,
                                     settings.site_dir)
    serve(settings, host=args.host, port=args.port, token=read_token(args.token_file,
                                                                     CONSOLE_TOKEN_ENV),
          predictor=predictor, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    return 0
