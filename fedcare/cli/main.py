"""``fedcare``: everything Flower's own ``flwr`` command does not do, one room per audience.

  at a hospital (fedcare.cli.hospital):
    check-csv, supernode, policy, ledger, audit-log, predict, validation-report, drift, serve
  at the consortium (fedcare.cli.consortium, fedcare.cli.console):
    certs, superlink, console
  for researchers (fedcare.cli.research):
    simulate, benchmark-heart, benchmark-heart-personal, benchmark-heart-table, sweep,
    perf, perf-epoch, perf-csv, perf-web, audit

`fedcare COMMAND --help` describes each; docs/ has the runbooks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from fedcare.cli import console, consortium, hospital, research
from fedcare.cli.args import EXIT_FAILED, EXIT_USAGE
from fedcare.common.errors import FedcareError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedcare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    research.add_parsers(sub)
    hospital.add_parsers(sub)
    consortium.add_parsers(sub)
    console.add_parsers(sub)
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
