"""``fedcare ledger [show] STATE_DIR`` and ``fedcare ledger reset``: parsers and commands.

``fedcare.cli`` calls :func:`add_parsers`. The old form ``fedcare ledger STATE_DIR
--site NAME`` keeps working (it is ``show``)::

    fedcare ledger STATE_DIR [--site NAME]            show the spend, lifetime at this site
    fedcare ledger show STATE_DIR [--site NAME]       the same
    fedcare ledger reset --state-dir DIR --reason TEXT
                                                      start the budget over (archived, reported)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedcare.cli.args import EXIT_FAILED, EXIT_OK
from fedcare.common.errors import ConfigError
from fedcare.privacy.config import ACCOUNTANTS, DEFAULT_ACCOUNTANT

SHOW_DEFAULT_DELTA = 1e-3  # the run config's default delta
ACTIONS = ("show", "reset")


def add_parsers(sub: Any) -> None:
    """Add the ``ledger`` command to ``fedcare``'s subparsers."""
    led = sub.add_parser(
        "ledger", help="a site's privacy ledger: show it, or reset its budget",
        description="fedcare ledger [show] STATE_DIR [--site NAME]: the site's spend, "
                    "recomputed from its ledger (lifetime at this site, and every budget "
                    "reset). fedcare ledger reset --state-dir DIR --reason TEXT: the only "
                    "way to start a site's budget over; the old ledger, audit log and "
                    "marker are archived in DIR/archive/<UTC stamp>/ and the reset is "
                    "recorded in the new ledger and audit log, and reported to the server.")
    led.add_argument("words", nargs="*", metavar="[show|reset] STATE_DIR",
                     help="the site's state dir (show is the default action)")
    led.add_argument("--state-dir", help="the site's state dir (instead of the positional)")
    led.add_argument("--site", help="the site's name (default: the one its files carry)")
    led.add_argument("--delta", type=float, default=None,
                     help=f"delta to state epsilon at (show: default {SHOW_DEFAULT_DELTA:g}; "
                          "reset: default the last one the audit log recorded)")
    led.add_argument("--accountant", default=None, choices=ACCOUNTANTS,
                     help=f"show: default {DEFAULT_ACCOUNTANT}")
    led.add_argument("--json", action="store_true", help="show: JSON instead of text")
    led.add_argument("--reason", help="reset: why the budget starts over (required)")
    led.set_defaults(func=cmd_ledger)


def _runs(count: int) -> str:
    return f"{count} run{'' if count == 1 else 's'}"


def _parse_words(args: argparse.Namespace) -> tuple[str, str]:
    words = list(args.words)
    action = words.pop(0) if words and words[0] in ACTIONS else "show"
    if len(words) > 1:
        raise ConfigError([f"fedcare ledger: must be given one state dir; got {words!r}"])
    if words and args.state_dir and words[0] != args.state_dir:
        raise ConfigError([f"fedcare ledger: the state dir must be given once; got "
                           f"{words[0]!r} and --state-dir {args.state_dir!r}"])
    state_dir = words[0] if words else args.state_dir
    if not state_dir:
        raise ConfigError(["fedcare ledger: a state dir must be given (STATE_DIR or "
                           "--state-dir); got none"])
    return action, state_dir


def cmd_ledger(args: argparse.Namespace) -> int:
    action, state_dir = _parse_words(args)
    if action == "reset":
        return cmd_ledger_reset(args, state_dir)
    return cmd_ledger_show(args, state_dir)


def cmd_ledger_reset(args: argparse.Namespace, state_dir: str) -> int:
    from fedcare.site.site_state import reset_site_state

    reset = reset_site_state(state_dir, reason=args.reason or "", site=args.site,
                             delta=args.delta, accountant=args.accountant)
    sys.stdout.write(f"{state_dir}: {reset.describe()}\n"
                     f"new ledger and audit chain started; the server will see the reset "
                     f"(a consortium admits a reset site only with accept-site-resets = "
                     f"true)\n")
    return EXIT_OK


def cmd_ledger_show(args: argparse.Namespace, state_dir: str) -> int:
    from fedcare.common.runid import run_of
    from fedcare.privacy import PrivacyLedger, statement_from_entries
    from fedcare.privacy.ledger import LEDGER_FILENAME
    from fedcare.site.site_state import site_of_state_dir

    if not (Path(state_dir) / LEDGER_FILENAME).is_file():  # never create a folder here
        sys.stderr.write(f"fedcare: ledger: state_dir must be a site state folder holding "
                         f"{LEDGER_FILENAME}; got "
                         f"{'no such folder' if not Path(state_dir).is_dir() else 'none'} "
                         f"at {state_dir}\n")
        return EXIT_FAILED
    site = args.site or site_of_state_dir(state_dir)
    if site is None:
        raise ConfigError([f"fedcare ledger: --site must be given for {state_dir!r}; got a "
                           "state dir whose files name no site"])
    delta = SHOW_DEFAULT_DELTA if args.delta is None else args.delta
    accountant = args.accountant or DEFAULT_ACCOUNTANT
    ledger = PrivacyLedger(state_dir, site=site)
    eps = ledger.epsilon(delta=delta, accountant=accountant)
    runs = len({run_of(e.run_id) for e in ledger.entries})
    rows = [{"run": e.run_id, "round": e.server_round, "at": e.recorded_at,
             **e.spend.to_dict()} for e in ledger.entries]
    resets = [reset.describe() for reset in ledger.resets]
    if args.json:
        sys.stdout.write(json.dumps({"site": site, "epsilon": eps,
                                     "scope": f"lifetime at this site ({_runs(runs)})",
                                     "delta": delta, "accountant": accountant, "entries": rows,
                                     "resets": [r.to_dict() for r in ledger.resets]},
                                    indent=2))
        sys.stdout.write("\n")
        return EXIT_OK
    for row in rows:
        sys.stdout.write(f"{row['at']}  run {row['run']} round {row['round']}: "
                         f"q={row['sampling_rate']:.4f} sigma={row['noise_multiplier']:.4f} "
                         f"steps={row['steps']}\n")
    since = " since the last budget reset" if resets else ""
    sys.stdout.write(f"{site}: {len(rows)} rounds recorded; epsilon = {eps:.4f} at "
                     f"delta = {delta:g} ({accountant.upper()}, lifetime at this site "
                     f"({_runs(runs)}){since})\n")
    if ledger.entries:  # the statement names its scope, delta, accountant and sampling
        statement = statement_from_entries(ledger.entries, delta=delta, accountant=accountant)
        sys.stdout.write(f"{statement.short()}\n")
    for text in resets:
        sys.stdout.write(f"{text}\n")
    return EXIT_OK
