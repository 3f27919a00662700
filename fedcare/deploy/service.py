"""A systemd unit for a site or the consortium (``fedcare service install-unit``, in
:mod:`fedcare.cli.consortium`), written to a file the administrator reviews and installs.

The unit runs the same ``fedcare supernode ...`` / ``fedcare superlink ...`` command a
person would type, as a dedicated user, from the folder holding ``certs/`` and
``state/``, restarts it when it fails (not when it was stopped), stops it with SIGTERM
(both commands stop cleanly on it), and turns Flower's telemetry off.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

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
