"""``fedcare service install-unit supernode|superlink``: a systemd unit for a site or the
consortium, written to a file the administrator reviews and installs.

The unit runs the same ``fedcare supernode ...`` / ``fedcare superlink ...`` command a
person would type, as a dedicated user, from the folder holding ``certs/`` and
``state/``, restarts it when it fails (not when it was stopped), stops it with SIGTERM
(both commands stop cleanly on it), and turns Flower's telemetry off.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
RESTART_SECONDS = 10
STOP_SECONDS = 30
SYSTEM_UNITS = Path("/etc/systemd/system")


@dataclass(frozen=True, kw_only=True)
class Unit:
    role: str                 # "supernode" | "superlink"
    user: str
    working_dir: Path
    fedcare: Path             # the fedcare executable of the installation to run
    arguments: tuple[str, ...]

    def text(self) -> str:
        what = ("a fedcare hospital site (SuperNode + ClientApp)" if self.role == "supernode"
                else "the fedcare consortium SuperLink")
        command = shlex.join([str(self.fedcare), self.role, *self.arguments])
        return "\n".join([
            "[Unit]",
            f"Description={what}",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            f"User={self.user}",
            f"WorkingDirectory={self.working_dir}",
            "Environment=FLWR_TELEMETRY_ENABLED=0",
            "Environment=TF_CPP_MIN_LOG_LEVEL=2",
            "Environment=PYTHONUNBUFFERED=1",
            f"ExecStart={command}",
            "Restart=on-failure",
            f"RestartSec={RESTART_SECONDS}",
            "KillSignal=SIGTERM",
            "KillMode=control-group",
            f"TimeoutStopSec={STOP_SECONDS}",
            "NoNewPrivileges=true",
            "PrivateTmp=true",
            "ProtectSystem=full",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ])


def unit_problems(unit: Unit) -> list[str]:
    problems = []
    if unit.role not in ("supernode", "superlink"):
        problems.append(f"service: role must be supernode or superlink; got {unit.role!r}")
    if not unit.user or any(c.isspace() for c in unit.user):
        problems.append(f"service: --user must be a user name; got {unit.user!r}")
    if not unit.working_dir.is_absolute():
        problems.append(f"service: --working-dir must be an absolute path; got "
                        f"{unit.working_dir}")
    if unit.role == "supernode" and not {"--site", "--csv", "--state-dir",
                                         "--superlink"} <= set(unit.arguments):
        problems.append("service: a supernode unit must pass --site, --csv, --state-dir and "
                        f"--superlink after --; got {' '.join(unit.arguments) or 'none'}")
    return problems


def cmd_install_unit(args: argparse.Namespace) -> int:
    extra: Sequence[str] = shlex.split(args.args)
    unit = Unit(role=args.role, user=args.user, working_dir=Path(args.working_dir),
                fedcare=Path(args.fedcare or Path(sys.executable).parent / "fedcare"),
                arguments=tuple(extra))
    problems = unit_problems(unit)
    if problems:
        sys.stderr.write("\n".join(problems) + "\n")
        return EXIT_FAILED
    out = Path(args.out) if args.out else Path(f"fedcare-{args.role}.service")
    if args.system:
        out = SYSTEM_UNITS / out.name
    if out.exists() and not args.force:
        sys.stderr.write(f"service: {out} must not exist (use --force to replace it); "
                         "got an existing file\n")
        return EXIT_FAILED
    out.write_text(unit.text())
    sys.stdout.write(f"unit written: {out}\n")
    if not args.system:
        sys.stdout.write(f"install (as root): cp {out} {SYSTEM_UNITS}/ && systemctl "
                         f"daemon-reload && systemctl enable --now {out.name}\n")
    sys.stdout.write(f"health check for monitoring: fedcare {args.role} status ...\n")
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    service = sub.add_parser("service", help="systemd unit for a site or the SuperLink")
    steps = service.add_subparsers(dest="service_command", required=True)
    p = steps.add_parser("install-unit", help="write a systemd unit file (not installed "
                                              "system-wide unless --system)")
    p.add_argument("role", choices=("supernode", "superlink"))
    p.add_argument("--user", required=True, help="the service account that runs it")
    p.add_argument("--working-dir", required=True,
                   help="absolute folder holding certs/ and state/ (and runs/)")
    p.add_argument("--out", help="unit file to write (default ./fedcare-ROLE.service)")
    p.add_argument("--fedcare", help="fedcare executable (default: this installation's)")
    p.add_argument("--system", action="store_true",
                   help=f"write into {SYSTEM_UNITS} (needs root)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.add_argument("--args", default="",
                   help="the arguments of `fedcare ROLE`, quoted as one string, e.g. "
                        "--args '--site st-mary --csv /srv/site.csv --state-dir /srv/state "
                        "--superlink link.example:9092'")
    p.set_defaults(func=cmd_install_unit)
