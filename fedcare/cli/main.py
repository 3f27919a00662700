"""``fedcare``: everything Flower's own ``flwr`` command does not do, one room per audience.

  at a hospital (fedcare.cli.hospital):
    check-csv, supernode [status], policy, ledger, audit-log, predict, validation-report,
    drift, serve
  at the consortium (fedcare.cli.consortium, fedcare.cli.console):
    certs, superlink [status], submit, status, service, console
  for researchers (fedcare.cli.research):
    simulate, benchmark-heart, benchmark-heart-personal, benchmark-heart-table, sweep,
    perf, perf-engine, perf-epoch, perf-csv, perf-web, perf-deploy, audit
    (on a Ray cluster: --ray-address, docs/scale.md; progress bars, logs in run.log; -v)

`fedcare COMMAND --help` describes each; docs/ has the runbooks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedcare.cli import console, consortium, hospital, research
from fedcare.cli.args import EXIT_FAILED, EXIT_USAGE
from fedcare.common.errors import FedcareError
from fedcare.research.cluster import command_engine
from fedcare.research.terminal import command_output, configure_logging, quiet_start_up


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
    quiet_start_up()  # before anything imports TensorFlow
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose, quiet=getattr(args, "quiet_terminal", False))
    if getattr(args, "flower_without_tensorflow", False):
        from fedcare.flower_compat import import_flower_without_tensorflow

        import_flower_without_tensorflow()  # a driver: TensorFlow only where code needs it
    try:
        # one Ray session for all of a command's runs; its progress bars and log file
        with command_engine(args), command_output(args):
            return int(args.func(args))
    except FedcareError as err:
        sys.stderr.write(f"fedcare: {err}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("fedcare: interrupted\n")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
