"""The consortium's commands: certificates and the SuperLink.

    fedcare certs ...           consortium CA, SuperLink certificate, site keys, status
    fedcare superlink [status]  the SuperLink with TLS + SuperNode authentication; health check
    fedcare submit ARGS         `flwr run ARGS` without TensorFlow, telemetry off
    fedcare status RUN_DIR      the per-site summary of a run folder
    fedcare service install-unit supernode|superlink   a systemd unit file

(``fedcare console``, read-only browser views of runs and site state, is in
:mod:`fedcare.cli.console`; the site's own ``fedcare supernode`` in :mod:`fedcare.cli.hospital`.)
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from fedcare.cli.args import EXIT_FAILED, EXIT_OK, EXIT_REFUSED
from fedcare.deploy import certs as certs_mod
from fedcare.deploy import launch, service

logger = logging.getLogger(__name__)

STATUS_TIMEOUT = 5.0
DEFAULT_CERTS = "certs"


def cmd_certs_init(args: argparse.Namespace) -> int:
    certs_mod.init(Path(args.certs), hosts=args.host, sites=args.site, force=args.force)
    return cmd_certs_status(args)


def cmd_certs_ca(args: argparse.Namespace) -> int:
    path = certs_mod.create_ca(Path(args.certs), name=args.name, days=args.days, force=args.force)
    sys.stdout.write(f"CA certificate: {path} (give this file to every site); CA key: "
                     f"{Path(args.certs) / certs_mod.CA_KEY} (keep it offline)\n"
                     f"{_ca_fingerprint_line(path)}\n")
    return EXIT_OK


def _ca_fingerprint_line(path: Path) -> str:
    return (f"{'CA fingerprint':<22} SHA256 {certs_mod.certificate_fingerprint(path)} (read it "
            "to each hospital over another channel; they compare it with "
            "`openssl x509 -in certs/ca/ca.pem -noout -fingerprint -sha256`)")


def cmd_certs_server(args: argparse.Namespace) -> int:
    path = certs_mod.issue_server_cert(Path(args.certs), hosts=args.host, days=args.days,
                                       force=args.force)
    hosts = ", ".join(certs_mod.server_hosts(Path(args.certs)))
    sys.stdout.write(f"SuperLink certificate: {path} for {hosts}\n")
    return EXIT_OK


def cmd_certs_site_key(args: argparse.Namespace) -> int:
    pub = certs_mod.create_site_key(Path(args.certs), args.site, force=args.force)
    key = certs_mod.site_key_path(Path(args.certs), args.site)
    sys.stdout.write(f"site {args.site}: private key {key} (stays at the site); send {pub} "
                     "to the consortium operator\n")
    return EXIT_OK


def cmd_certs_allow(args: argparse.Namespace) -> int:
    entry = certs_mod.allow_site(Path(args.certs), args.site,
                                 Path(args.public_key) if args.public_key else None,
                                 force=args.force)
    sys.stdout.write(f"site {args.site} allowed ({entry['fingerprint']}); registered with the "
                     "SuperLink at its next start or `fedcare certs sync`\n")
    return EXIT_OK


def cmd_certs_remove(args: argparse.Namespace) -> int:
    certs_mod.remove_site(Path(args.certs), args.site)
    sys.stdout.write(f"site {args.site} removed from the list; run `fedcare certs sync` (or "
                     "restart `fedcare superlink`) to unregister its key now\n")
    return EXIT_OK


def cmd_certs_sync(args: argparse.Namespace) -> int:
    from fedcare.flower_compat import keep_training_stack_out

    keep_training_stack_out()  # Flower's gRPC client would load both; this call trains nothing
    done = launch.sync_sites(Path(args.certs), control_address=args.control_address)
    sys.stdout.write(f"registered: {', '.join(done['registered']) or 'none'}; unregistered "
                     f"node ids: {', '.join(done['unregistered']) or 'none'}; kept: "
                     f"{', '.join(done['kept']) or 'none'}\n")
    return EXIT_OK


def cmd_certs_status(args: argparse.Namespace) -> int:
    certs = Path(args.certs)
    rows = certs_mod.status(certs, warn_days=args.warn_days)
    now = certs_mod._now()
    for row in rows:
        sys.stdout.write(row.line(now) + "\n")
    if (certs / certs_mod.CA_CERT).exists():
        sys.stdout.write(_ca_fingerprint_line(certs / certs_mod.CA_CERT) + "\n")
    if (certs / certs_mod.SERVER_CERT).exists():
        hosts = ", ".join(certs_mod.server_hosts(certs))
        sys.stdout.write(f"{'SuperLink host names':<22} {hosts}\n")
    for site, entry in certs_mod.read_allowlist(certs).items():
        sys.stdout.write(f"{'allowed site':<22} {site}: {entry['fingerprint']} (added "
                         f"{entry['added']}; keys do not expire: rotate by policy)\n")
    bad = [r for r in rows if r.problem]
    if bad:
        sys.stdout.write(f"{len(bad)} certificate problem(s): "
                         + "; ".join(f"{r.what}: {r.problem}" for r in bad) + "\n")
        return EXIT_FAILED
    return EXIT_OK


def _wait(procs: list[launch.subprocess.Popen[bytes]]) -> int:
    """Run until a child exits or we are told to stop; stop every child either way."""
    stopping = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        while not stopping.wait(0.5):
            for proc in procs:
                if proc.poll() is not None:
                    logger.error("%s exited with code %s", proc.args, proc.returncode)
                    return EXIT_FAILED
        return EXIT_OK
    finally:
        for proc in procs:
            launch.stop(proc)


def cmd_superlink(args: argparse.Namespace) -> int:
    if args.action == "status":
        return cmd_superlink_status(args)
    state = Path(args.database).parent
    plan = launch.SuperLinkPlan(
        certs=Path(args.certs), database=Path(args.database),
        storage_dir=Path(args.storage_dir) if args.storage_dir else state / "ffs",
        fleet_address=args.fleet_address, control_address=args.control_address,
        serverappio_address=args.serverappio_address, insecure=args.insecure)
    if args.insecure:
        sys.stderr.write(f"WARNING: {launch.INSECURE_WARNING}\n")
    proc = launch.start_superlink(plan)
    return _wait([proc])


def cmd_superlink_status(args: argparse.Namespace) -> int:
    """Health of the SuperLink for monitoring: its Control API answers over TLS."""
    import grpc

    from fedcare.flower_compat import keep_training_stack_out

    keep_training_stack_out()  # a check run every minute by monitoring: no TensorFlow

    try:
        online = launch.online_nodes(Path(args.certs), args.control_address,
                                     timeout=STATUS_TIMEOUT)
    except (launch.LaunchError, OSError, grpc.RpcError) as err:
        sys.stdout.write(f"SuperLink: NOT ANSWERING ({err})\n")
        return EXIT_FAILED
    sys.stdout.write(f"SuperLink: answering at {args.control_address}; {online} site(s) "
                     "online\n")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """The per-site summary of a run folder (the same as summary.txt), at any time; exit
    :data:`EXIT_REFUSED` for a refused run."""
    from fedcare.server.summary import REFUSED_MARKER, status_text

    try:
        text = status_text(Path(args.run_dir))
    except (FileNotFoundError, ValueError) as err:
        sys.stderr.write(f"{err}\n")
        return EXIT_FAILED
    sys.stdout.write(text)
    return EXIT_REFUSED if f"\n{REFUSED_MARKER}: " in text else EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    """``flwr run ARGS`` in a process that never imports TensorFlow, telemetry off. With
    ``--stream``: exit :data:`EXIT_REFUSED` when the run was refused (``flwr run`` itself
    exits 0 whatever became of the run)."""
    from fedcare.deploy import submit

    if submit.STREAM_FLAG not in args.flwr_args:
        submit.exec_flwr_run(args.flwr_args)  # replaces this process: nothing after runs
    outcome = submit.relay_stream(submit.flwr_run_command(args.flwr_args),
                                  submit.submit_env(os.environ))
    if outcome.returncode == EXIT_OK and outcome.refused:
        return EXIT_REFUSED
    return outcome.returncode


def cmd_install_unit(args: argparse.Namespace) -> int:
    """A systemd unit for ``fedcare supernode|superlink`` written to a file."""
    extra: Sequence[str] = shlex.split(args.args)
    unit = service.Unit(role=args.role, user=args.user, working_dir=Path(args.working_dir),
                fedcare=Path(args.fedcare or Path(sys.executable).parent / "fedcare"),
                arguments=tuple(extra))
    problems = service.unit_problems(unit)
    if problems:
        sys.stderr.write("\n".join(problems) + "\n")
        return EXIT_FAILED
    out = Path(args.out) if args.out else Path(f"fedcare-{args.role}.service")
    if args.system:
        out = service.SYSTEM_UNITS / out.name
    if out.exists() and not args.force:
        sys.stderr.write(f"service: {out} must not exist (use --force to replace it); "
                         "got an existing file\n")
        return EXIT_FAILED
    out.write_text(unit.text())
    sys.stdout.write(f"unit written: {out}\n")
    if not args.system:
        sys.stdout.write(f"install (as root): cp {out} {service.SYSTEM_UNITS}/ && systemctl "
                         f"daemon-reload && systemctl enable --now {out.name}\n")
    sys.stdout.write(f"health check for monitoring: fedcare {args.role} status ...\n")
    return EXIT_OK


def _add_service_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    units = sub.add_parser("service", help="systemd unit for a site or the SuperLink")
    steps = units.add_subparsers(dest="service_command", required=True)
    p = steps.add_parser("install-unit", help="write a systemd unit file (not installed "
                                              "system-wide unless --system)")
    p.add_argument("role", choices=("supernode", "superlink"))
    p.add_argument("--user", required=True, help="the service account that runs it")
    p.add_argument("--working-dir", required=True,
                   help="absolute folder holding certs/ and state/ (and runs/)")
    p.add_argument("--out", help="unit file to write (default ./fedcare-ROLE.service)")
    p.add_argument("--fedcare", help="fedcare executable (default: this installation's)")
    p.add_argument("--system", action="store_true",
                   help=f"write into {service.SYSTEM_UNITS} (needs root)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.add_argument("--args", default="",
                   help="the arguments of `fedcare ROLE`, quoted as one string, e.g. "
                        "--args '--site st-mary --csv /srv/site.csv --state-dir /srv/state "
                        "--superlink link.example:9092'")
    p.set_defaults(func=cmd_install_unit)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = sub.add_parser("certs", help="consortium CA, SuperLink certificate, site keys")
    steps = certs.add_subparsers(dest="certs_command", required=True)

    def step(name: str, helptext: str) -> argparse.ArgumentParser:
        p = steps.add_parser(name, help=helptext)
        p.add_argument("--certs", default=DEFAULT_CERTS, help="certificate folder (certs/)")
        return p

    p = step("init", "test bed in one go: CA, SuperLink cert, a key pair per site, the list")
    p.add_argument("--host", action="append", required=True, help="SuperLink host name or IP")
    p.add_argument("--site", action="append", default=[], help="site name (repeat)")
    p.add_argument("--force", action="store_true", help="replace existing keys")
    p.add_argument("--warn-days", type=int, default=certs_mod.WARN_DAYS)
    p.set_defaults(func=cmd_certs_init)
    p = step("ca", "create the consortium CA")
    p.add_argument("--name", default="fedcare consortium CA")
    p.add_argument("--days", type=int, default=certs_mod.CA_DAYS)
    p.add_argument("--force", action="store_true", help="replace an existing CA key")
    p.set_defaults(func=cmd_certs_ca)
    p = step("server", "issue the SuperLink TLS certificate")
    p.add_argument("--host", action="append", required=True,
                   help="host name or IP the sites use to reach the SuperLink (repeat)")
    p.add_argument("--days", type=int, default=certs_mod.SERVER_DAYS)
    p.add_argument("--force", action="store_true", help="replace an existing server key")
    p.set_defaults(func=cmd_certs_server)
    p = step("site-key", "create a site's SuperNode authentication key pair (at the site)")
    p.add_argument("site")
    p.add_argument("--force", action="store_true", help="replace the key (rotation)")
    p.set_defaults(func=cmd_certs_site_key)
    p = step("allow", "put a site's public key on the SuperLink's list")
    p.add_argument("site")
    p.add_argument("--public-key", help="the site's auth.pub (default certs/sites/SITE/auth.pub)")
    p.add_argument("--force", action="store_true", help="replace the site's listed key")
    p.set_defaults(func=cmd_certs_allow)
    p = step("remove", "take a site off the SuperLink's list")
    p.add_argument("site")
    p.set_defaults(func=cmd_certs_remove)
    p = step("sync", "make a running SuperLink's registered sites equal the list")
    p.add_argument("--control-address", default=launch.CONTROL_ADDRESS)
    p.set_defaults(func=cmd_certs_sync)
    p = step("status", "expiry of the CA and SuperLink certificates; exit 1 if any problem")
    p.add_argument("--warn-days", type=int, default=certs_mod.WARN_DAYS)
    p.set_defaults(func=cmd_certs_status)

    link = sub.add_parser("superlink", help="consortium: start the SuperLink (TLS, node auth); "
                                            "`superlink status`: health check, exit 0/1")
    link.add_argument("action", nargs="?", choices=("run", "status"), default="run")
    link.add_argument("--certs", default=DEFAULT_CERTS)
    link.add_argument("--database", default="state/superlink.db",
                      help="persistent SuperLink state (SQLite)")
    link.add_argument("--storage-dir", help="Flower file store (default beside the database)")
    link.add_argument("--fleet-address", default=launch.FLEET_ADDRESS,
                      help="where SuperNodes connect (open to the sites)")
    link.add_argument("--control-address", default=launch.CONTROL_ADDRESS,
                      help="flwr run / registration (operator only)")
    link.add_argument("--serverappio-address", default=launch.SERVERAPPIO_ADDRESS)
    link.add_argument("--insecure", action="store_true",
                      help="plain text, no node authentication (test beds only; warns)")
    link.set_defaults(func=cmd_superlink)

    submit = sub.add_parser(
        "submit", help="operator: `flwr run` without TensorFlow and with telemetry off",
        description="Submit a run: the arguments go to `flwr run` unchanged, e.g. "
                    "`fedcare submit . deployment --stream --run-config 'num-rounds=5'`. "
                    "With --stream it exits 3 when the run was refused.")
    submit.add_argument("flwr_args", nargs=argparse.REMAINDER,
                        help="arguments of `flwr run` (project folder, federation, options)")
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="operator: per-site summary of a run folder "
                                           "(exit 3: the run was refused)")
    status.add_argument("run_dir", help="runs/NAME (holds report.json)")
    status.set_defaults(func=cmd_status)

    _add_service_parsers(sub)  # service install-unit supernode|superlink
