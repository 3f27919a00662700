"""``fedcare check-csv`` and ``fedcare perf-csv``: a hospital file's checks, and their speed.

``fedcare.cli`` calls :func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
DATASET_CHOICES = ("breast-cancer", "heart-disease")


def run_config_for_check(args: argparse.Namespace) -> Any:
    """The run settings the DP-readiness estimate assumes: project defaults, then flags."""
    from fedcare.cli import _overrides
    from fedcare.common.config import RunConfig

    overrides = _overrides(args)  # --set pairs, --dataset, --target-epsilon, --rounds
    return RunConfig.from_mapping(overrides)


def cmd_check_csv(args: argparse.Namespace) -> int:
    from fedcare.common.errors import DataValidationError
    from fedcare.common.site_check import check_csv_file

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


def cmd_perf_csv(args: argparse.Namespace) -> int:
    from fedcare.common.files import write_json_atomic
    from fedcare.simulations.perf_csv import format_result, run_csv_benchmark

    result = run_csv_benchmark(megabytes=args.megabytes, repeats=args.repeats,
                               work_dir=Path(args.work_dir) if args.work_dir else None)
    sys.stdout.write(format_result(result) + "\n")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out), result)
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser(
        "check-csv", help="validate a site's CSV; data-quality and DP-readiness report")
    check.add_argument("path")
    check.add_argument("--dataset", default="heart-disease", choices=DATASET_CHOICES)
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

    perf = sub.add_parser("perf-csv", help="time and peak memory of the CSV check vs "
                                           "pandas.read_csv on a generated file")
    perf.add_argument("--megabytes", type=float, default=50.0)
    perf.add_argument("--repeats", type=int, default=3)
    perf.add_argument("--work-dir", help="where the generated file goes (default: a temp dir)")
    perf.add_argument("--out", help="write the results JSON here")
    perf.set_defaults(func=cmd_perf_csv)
