"""What the ``fedcare`` commands share: exit codes, run-config flags, list parsing."""

from __future__ import annotations

import argparse
from typing import Any

from fedcare.common.config import DATASETS
from fedcare.common.errors import FedcareError
from fedcare.research.cluster import ENGINE_KEYS

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: A run the sites refused in pre-flight (too few accepted): `fedcare submit --stream`
#: and `fedcare status` exit with it; nothing was trained.
EXIT_REFUSED = 3
DEFAULT_SITES = 4
_SHORTCUTS = (("dataset", "dataset"), ("rounds", "num-rounds"), ("strategy", "strategy"),
              ("target_epsilon", "target-epsilon"), ("output_dir", "output-dir"),
              ("run_name", "run-name"), ("data_dir", "data-dir"), ("seed", "seed"))
"""Shortcut flags and the run-config key each one sets."""


def parse_value(text: str) -> Any:
    """A ``--set`` value: true/false, an int, a float, else the text (quotes stripped)."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip("\"'")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--set key=value`` pairs plus the named shortcut flags, as run-config keys."""
    out: dict[str, Any] = {}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FedcareError(f"--set must look like key=value; got {item!r}")
        if key.strip() not in ENGINE_KEYS:  # engine settings: research.cluster reads them
            out[key.strip()] = parse_value(value.strip())
    for flag, key in _SHORTCUTS:
        value = getattr(args, flag, None)
        if value is not None:
            out[key] = value
    if getattr(args, "resume", False):
        out["resume"] = True
    return out


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text!r}")
    return int(text)


def names(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: a comma-separated flag value."""
    return [part.strip() for part in text.split(",") if part.strip()]


def integers(text: str, *, flag: str = "value") -> list[int]:
    """``"43,0,1"`` -> ``[43, 0, 1]``; a part that is not a whole number is an error."""
    out = []
    for part in names(text):
        try:
            out.append(int(part))
        except ValueError:
            raise FedcareError(f"{flag} must be comma-separated whole numbers; "
                               f"got {text!r}") from None
    return out


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The run-config shortcut flags and ``--set`` (every key of pyproject.toml)."""
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--rounds", type=int)
    p.add_argument("--strategy")
    p.add_argument("--target-epsilon", type=float)
    p.add_argument("--seed", type=int, help="run seed (model init, sampling)")
    p.add_argument("--data-dir")
    p.add_argument("--output-dir")
    p.add_argument("--run-name")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any run-config key from pyproject.toml, e.g. --set batch-size=64")
