"""``fedcare certs ...``, ``fedcare superlink`` and ``fedcare supernode``: parsers and commands.

``fedcare.cli`` calls :func:`add_parsers`; everything else about deployment lives here.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from fedcare.deploy import certs as certs_mod
from fedcare.deploy import launch

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
STATUS_TIMEOUT = 5.0
DEFAULT_CERTS = "certs"


def cmd_certs_init(args: argparse.Namespace) -> int:
    certs_mod.init(Path(args.certs), hosts=args.host, sites=args.site, force=args.force)
    return cmd_certs_status(args)


def cmd_certs_ca(args: argparse.Namespace) -> int:
    path = certs_mod.create_ca(Path(args.certs), name=args.name, days=args.days, force=args.force)
    sys.stdout.write(f"CA certificate: {path} (give this file to every site); CA key: "
                     f"{Path(args.certs) / certs_mod.CA_KEY} (keep it offline)\n")
    return EXIT_OK


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


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(EXIT_OK)  # asked to stop: a clean stop


def _listening(address: str) -> bool:
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.replace("0.0.0.0", "127.0.0.1"), int(port)),
                                      timeout=STATUS_TIMEOUT):
            return True
    except OSError:
        return False


def cmd_supernode_status(args: argparse.Namespace) -> int:
    """Health of this site for monitoring: its process answers on the local ClientAppIo
    port, its policy loads, its ledger is readable; prints spend and budget left."""
    from fedcare.client.policy import load_policy, policy_path_for
    from fedcare.client.policy_commands import spend_lines
    from fedcare.common.errors import FedcareError

    state = Path(args.state_dir)
    problems: list[str] = []
    running = _listening(args.clientappio_address)
    sys.stdout.write(f"site {args.site}: {'running' if running else 'NOT RUNNING'} "
                     f"(local port {args.clientappio_address})\n")
    if not running:
        problems.append("the site process does not answer")
    try:
        policy = load_policy(policy_path_for(state, Path(args.policy) if args.policy
                                             else None))
        sys.stdout.write("\n".join(spend_lines(state, policy)) + "\n")
    except (FedcareError, OSError, ValueError) as err:
        problems.append(str(err))
    for problem in problems:
        sys.stdout.write(f"PROBLEM: {problem}\n")
    return EXIT_FAILED if problems else EXIT_OK


def cmd_superlink_status(args: argparse.Namespace) -> int:
    """Health of the SuperLink for monitoring: its Control API answers over TLS."""
    import grpc

    try:
        online = launch.online_nodes(Path(args.certs), args.control_address,
                                     timeout=STATUS_TIMEOUT)
    except (launch.LaunchError, OSError, grpc.RpcError) as err:
        sys.stdout.write(f"SuperLink: NOT ANSWERING ({err})\n")
        return EXIT_FAILED
    sys.stdout.write(f"SuperLink: answering at {args.control_address}; {online} site(s) "
                     "online\n")
    return EXIT_OK


def cmd_supernode(args: argparse.Namespace) -> int:
    if args.action == "status":
        return cmd_supernode_status(args)
    missing = [flag for flag, value in (("--csv", args.csv), ("--superlink", args.superlink))
               if not value]
    if missing:
        sys.stderr.write(f"supernode: {' and '.join(missing)} must be given to run a site; "
                         "got none\n")
        return EXIT_USAGE
    from fedcare.client.policy import describe, load_policy, policy_path_for, policy_warnings
    from fedcare.common.errors import ConfigError, DataValidationError

    certs = Path(args.certs)
    policy_path = policy_path_for(Path(args.state_dir),
                                  Path(args.policy) if args.policy else None)
    plan = launch.SuperNodePlan(
        site=args.site, csv=Path(args.csv), state_dir=Path(args.state_dir),
        superlink=args.superlink, dataset=args.dataset, policy=policy_path,
        root_cert=Path(args.root_cert) if args.root_cert else certs / certs_mod.CA_CERT,
        private_key=(Path(args.private_key) if args.private_key
                     else certs_mod.site_key_path(certs, args.site)),
        clientappio_address=args.clientappio_address, insecure=args.insecure,
        poll_interval=args.poll_interval, max_connect_attempts=args.max_connect_attempts)
    try:
        summary = launch.check_site(plan)
    except DataValidationError as err:
        sys.stdout.write(f"{err}\nnot starting: fix the CSV first "
                         "(`fedcare check-csv` shows the same list)\n")
        return EXIT_FAILED
    except ConfigError as err:
        sys.stdout.write(f"{err}\nnot starting: fix the site policy or the key files first "
                         "(`fedcare policy check FILE`)\n")
        return EXIT_FAILED
    sys.stdout.write(f"CSV OK: {summary}\n")
    policy = load_policy(policy_path)
    sys.stdout.write(f"site policy in force:\n{describe(policy)}\n")
    for warning in policy_warnings(policy):
        sys.stderr.write(f"WARNING: {warning}\n")
    sys.stdout.flush()
    if args.insecure:
        sys.stderr.write(f"WARNING: {launch.INSECURE_WARNING}\n")
    # Until Flower's SuperNode installs its own handlers (after the TensorFlow import),
    # a stop signal must still unwind through `finally` blocks, not kill us outright.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    from fedcare.deploy.probe import ConnectError, wait_for_superlink

    node = plan.site_node()
    try:
        wait_for_superlink(plan.superlink, node.root_certificates, plan.max_connect_attempts)
    except ConnectError as err:
        sys.stderr.write(f"{err}\nnot starting: the site could not reach its SuperLink\n")
        return EXIT_FAILED
    try:
        launch.run_site(plan)
    except SystemExit as done:  # Flower's handler: a stop signal is a clean stop
        return EXIT_OK if done.code in (None, EXIT_OK) else EXIT_FAILED
    except Exception as err:
        logger.error("the SuperNode stopped: %s: %s", type(err).__name__, err)
    sys.stderr.write("the SuperNode gave up (refused, removed or unreachable: see the log "
                     "above); this site stopped\n")
    return EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    """The per-site summary of a run folder (the same as summary.txt), at any time."""
    from fedcare.server.summary import status_text

    try:
        sys.stdout.write(status_text(Path(args.run_dir)))
    except (FileNotFoundError, ValueError) as err:
        sys.stderr.write(f"{err}\n")
        return EXIT_FAILED
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    """``flwr run ARGS`` in a process that never imports TensorFlow, telemetry off."""
    argv = [sys.executable, "-m", "fedcare.flower_compat", "flwr", "run", *args.flwr_args]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": os.environ.get("FLWR_TELEMETRY_ENABLED",
                                                                  "0")}
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)  # replaces this process: nothing after runs


def _poll_interval(text: str) -> float:
    from fedcare.flower_compat import check_poll_interval

    try:
        return check_poll_interval(float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text!r}")
    return int(text)


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

    node = sub.add_parser("supernode", help="hospital: check the CSV, then start the site; "
                                            "`supernode status`: health check, exit 0/1")
    node.add_argument("action", nargs="?", choices=("run", "status"), default="run")
    node.add_argument("--site", required=True, help="this site's name (as on the list)")
    node.add_argument("--csv", help="this site's training CSV (to run)")
    node.add_argument("--state-dir", required=True,
                      help="ledger, audit log, preprocessing (keep and back up)")
    node.add_argument("--superlink", help="SuperLink fleet address host:9092 (to run)")
    node.add_argument("--dataset", default="heart-disease",
                      choices=("breast-cancer", "heart-disease"), help="schema of the CSV")
    node.add_argument("--policy",
                      help="this site's policy (site-policy.toml; default STATE_DIR/"
                           "site-policy.toml, else the built-in default: docs/site-policy.md)")
    node.add_argument("--certs", default=DEFAULT_CERTS,
                      help="folder with ca/ca.pem and sites/SITE/auth.key")
    node.add_argument("--root-cert", help="CA certificate (default CERTS/ca/ca.pem)")
    node.add_argument("--private-key", help="site key (default CERTS/sites/SITE/auth.key)")
    node.add_argument("--clientappio-address", default=launch.CLIENTAPPIO_ADDRESS)
    node.add_argument("--poll-interval", type=_poll_interval, default=launch.POLL_INTERVAL,
                      help="seconds between polls of the SuperLink (default "
                           f"{launch.POLL_INTERVAL}; Flower's own: 3)")
    node.add_argument("--max-connect-attempts", type=_positive_int,
                      default=launch.MAX_CONNECT_ATTEMPTS,
                      help="TLS/connection attempts before the site exits 1 (default "
                           f"{launch.MAX_CONNECT_ATTEMPTS})")
    node.add_argument("--insecure", action="store_true",
                      help="plain text, no authentication (test beds only; warns)")
    node.set_defaults(func=cmd_supernode)

    submit = sub.add_parser(
        "submit", help="operator: `flwr run` without TensorFlow and with telemetry off",
        description="Submit a run: the arguments go to `flwr run` unchanged, e.g. "
                    "`fedcare submit . deployment --stream --run-config 'num-rounds=5'`.")
    submit.add_argument("flwr_args", nargs=argparse.REMAINDER,
                        help="arguments of `flwr run` (project folder, federation, options)")
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="operator: per-site summary of a run folder")
    status.add_argument("run_dir", help="runs/NAME (holds report.json)")
    status.set_defaults(func=cmd_status)
