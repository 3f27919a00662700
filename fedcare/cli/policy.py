"""``fedcare policy check|show|hash``: the hospital's commands for its site policy.

``fedcare.cli`` calls :func:`add_parsers`; the policy itself lives in
:mod:`fedcare.site.policy` (docs/site-policy.md). The policy and privacy modules load
dp-accounting (seconds), so they are imported when a command runs, not when every
``fedcare`` command builds its parser.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedcare.cli.args import EXIT_FAILED, EXIT_OK
from fedcare.common.errors import ConfigError, LedgerCorrupted
from fedcare.common.files import strict_json_loads

if TYPE_CHECKING:
    from fedcare.site.policy import SitePolicy

POLICY_FILE_HELP = "site-policy.toml"  # fedcare.site.policy.POLICY_FILENAME (a test checks)


def _problems(err: ConfigError) -> str:
    return f"{len(err.problems)} problem(s):\n" + "".join(f"  {p}\n" for p in err.problems)


def _with_warnings(policy: SitePolicy) -> str:
    from fedcare.site.policy import describe, policy_warnings

    return describe(policy) + "\n" + "".join(f"# WARNING: {w}\n"
                                              for w in policy_warnings(policy))


def cmd_policy_check(args: argparse.Namespace) -> int:
    from fedcare.site.policy import load_policy

    path = Path(args.file)
    try:
        policy = load_policy(path)
    except ConfigError as err:
        sys.stdout.write(f"{path}: NOT a valid site policy; {_problems(err)}")
        return EXIT_FAILED
    sys.stdout.write(f"{_with_warnings(policy)}{path}: valid site policy\n")
    return EXIT_OK


def cmd_policy_show(args: argparse.Namespace) -> int:
    from fedcare.site.policy import (
        BUILT_IN_SOURCE,
        POLICY_FILENAME,
        load_policy,
        policy_path_for,
    )

    state_dir = Path(args.state_dir)
    if not state_dir.is_dir():
        sys.stderr.write(f"fedcare policy show: --state-dir must be an existing folder (the "
                         f"site's state dir); got {str(state_dir)!r}\n")
        return EXIT_FAILED
    try:
        policy = load_policy(policy_path_for(state_dir, Path(args.policy) if args.policy
                                             else None))
        lines = spend_lines(state_dir, policy)
    except ConfigError as err:
        sys.stderr.write(f"fedcare policy show: {_problems(err)}")
        return EXIT_FAILED
    except LedgerCorrupted as err:
        sys.stderr.write(f"fedcare policy show: {err}\n")
        return EXIT_FAILED
    sys.stdout.write(_with_warnings(policy))
    if policy.source == BUILT_IN_SOURCE:
        sys.stdout.write(f"# (no policy file: write {state_dir / POLICY_FILENAME} or start the "
                         "site with --policy FILE to change it)\n")
    sys.stdout.write("\n" + "\n".join(lines) + "\n")
    return EXIT_OK


def spend_lines(state_dir: Path, policy: SitePolicy) -> list[str]:
    """The site's lifetime spend from its ledger, at the policy's max-delta, and what is left
    of its lifetime budget, by each accountant.

    Raises:
        LedgerCorrupted: the ledger file exists but cannot be trusted.
    """
    from fedcare.privacy import PrivacyLedger
    from fedcare.privacy.config import ACCOUNTANTS
    from fedcare.privacy.ledger import LEDGER_FILENAME
    from fedcare.privacy.statement import (
        ADJACENCY,
        format_delta,
        format_epsilon,
        statement_from_entries,
    )
    from fedcare.site.policy import format_left

    ledger_path = state_dir / LEDGER_FILENAME
    budget = policy.lifetime_epsilon_budget
    delta = format_delta(policy.max_delta)
    if not ledger_path.exists():
        return [f"privacy spent at this site: none yet ({ledger_path} does not exist); "
                f"lifetime at this site (0 runs): eps 0.00; budget "
                f"{format_epsilon(budget)}, all of it left"]
    ledger = PrivacyLedger(state_dir, site=_ledger_site(ledger_path))
    entries = ledger.entries
    runs = len({entry.run_id for entry in entries})
    scope = f"lifetime at this site ({runs} run{'s' if runs != 1 else ''})"
    lines = [f"privacy spent at site {ledger.site!r}: {len(entries)} round(s) in {runs} "
             f"run(s), from {ledger_path}"]
    if not entries:
        return [*lines, f"  {scope}: eps 0.00; budget {format_epsilon(budget)}, all of it left"]
    sampling = statement_from_entries(entries, delta=policy.max_delta).sampling_label()
    for accountant in ACCOUNTANTS:
        eps = ledger.epsilon(delta=policy.max_delta, accountant=accountant)
        left = format_left(max(budget - eps, 0.0))
        lines.append(f"  {scope}: eps {format_epsilon(eps)} at delta={delta} "
                     f"({accountant.upper()}, {ADJACENCY}, {sampling}); budget "
                     f"{format_epsilon(budget)}, {left} left")
    lines.append("  (delta is the policy's max-delta; the budget in force for a run is the "
                 "lower of lifetime-epsilon-budget and the run's epsilon-budget; the run's "
                 "accountant decides which line applies)")
    return lines


def _ledger_site(ledger_path: Path) -> str:
    """The site name a ledger file records (PrivacyLedger then checks the whole file)."""
    try:
        data = strict_json_loads(ledger_path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise LedgerCorrupted(f"privacy ledger {ledger_path}: must be a readable JSON "
                              f"ledger; got {err}") from None
    site = data.get("site") if isinstance(data, dict) else None
    if not isinstance(site, str):
        raise LedgerCorrupted(f"privacy ledger {ledger_path}: site must be a site name; "
                              f"got {site!r}")
    return site


def cmd_policy_hash(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # importing flwr imports TensorFlow
    from fedcare.site.policy import project_hash

    try:
        digest = project_hash(Path(args.folder))
    except ConfigError as err:
        sys.stderr.write(f"fedcare policy hash: {_problems(err)}")
        return EXIT_FAILED
    except ValueError as err:  # Flower's build: FAB too large, no pyproject.toml
        sys.stderr.write(f"fedcare policy hash: {args.folder}: {err}\n")
        return EXIT_FAILED
    sys.stdout.write(f"{digest}\n")
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pol = sub.add_parser("policy", help="hospital: check, show and pin the site policy")
    steps = pol.add_subparsers(dest="policy_command", required=True)
    p = steps.add_parser("check", help="validate a site-policy.toml; print it; exit 1 if bad")
    p.add_argument("file", help="the policy file")
    p.set_defaults(func=cmd_policy_check)
    p = steps.add_parser("show", help="the policy in force at a site and the privacy left")
    p.add_argument("--state-dir", required=True, help="the site's state dir (ledger)")
    p.add_argument("--policy", help=f"policy file (default STATE_DIR/{POLICY_FILE_HELP} if it "
                                    "exists, else the built-in default)")
    p.set_defaults(func=cmd_policy_show)
    p = steps.add_parser("hash", help="sha256 of a project folder as `flwr run DIR` ships it "
                                      "(for allowed-bundles)")
    p.add_argument("folder", help="the Flower project folder (with pyproject.toml)")
    p.set_defaults(func=cmd_policy_hash)
