"""Start Flower's SuperLink (consortium) and SuperNode (hospital) the fedcare way.

Secure by default: TLS, SuperNode authentication and a persistent state database for the
SuperLink; the CA root certificate and the site's own key for a SuperNode. Plain text only
with ``insecure=True``, which logs a warning naming what is lost.

A site is ONE process (:func:`run_site`): Flower's SuperNode and the site's installed
ClientApp, so TensorFlow is imported once per site (Flower 1.23's default is a
``flower-supernode`` process, a ``flower-superexec`` and a new ``flwr-clientapp`` process,
each importing TensorFlow, for every message), polling every ``poll_interval`` seconds
instead of Flower's fixed 3 s.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedcare.common.errors import FedcareError
from fedcare.deploy import certs as certs_mod

if TYPE_CHECKING:
    from fedcare.flower_compat import SiteNode
    from fedcare.flower_compat.control import ControlClient

logger = logging.getLogger(__name__)

FLEET_ADDRESS = "0.0.0.0:9092"          # hospitals connect here (open this port to them only)
CONTROL_ADDRESS = "127.0.0.1:9093"      # flwr run / node registration: operator only
SERVERAPPIO_ADDRESS = "127.0.0.1:9091"  # SuperLink <-> ServerApp: never leaves the host
CLIENTAPPIO_ADDRESS = "127.0.0.1:9094"  # SuperNode <-> ClientApp: never leaves the host
SYNC_TIMEOUT = 120.0
#: Seconds between a site's polls of the SuperLink (Flower's SuperNode: a fixed 3 s).
POLL_INTERVAL = 0.1
#: The site's own Flower folder inside its state dir (never shared with another site).
FLOWER_DIR = "flower"
#: Connection attempts (TLS, authentication) before a site gives up and exits 1.
MAX_CONNECT_ATTEMPTS = 5
INSECURE_WARNING = ("INSECURE: plain-text gRPC, no TLS and no SuperNode authentication. "
                    "Model updates travel unencrypted and ANY process that reaches the port "
                    "can join as a site. Use only on a private test bed.")


class LaunchError(FedcareError):
    """A SuperLink or SuperNode cannot be started as asked."""


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Flower starts its helpers (flower-superexec, flwr-serverapp) by name: put this
    environment's scripts first on PATH so they are the same installation."""
    out = dict(os.environ if env is None else env)
    out["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), out.get("PATH", "")])
    out.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    return out


def _check_certs_fresh(rows: Sequence[certs_mod.CertStatus]) -> None:
    bad = [r for r in rows if r.problem and r.problem != "MISSING" and
           not r.problem.startswith("EXPIRES SOON")]
    missing = [r for r in rows if r.problem == "MISSING"]
    for row in rows:
        if row.problem and row.problem.startswith("EXPIRES SOON"):
            logger.warning("%s %s: %s", row.what, row.path, row.problem)
    if bad or missing:
        raise LaunchError("launch: certificates must exist, be in date and chain to the CA; "
                          "got " + "; ".join(f"{r.path}: {r.problem}" for r in bad + missing))


@dataclass(frozen=True, kw_only=True)
class SuperLinkPlan:
    certs: Path
    database: Path
    storage_dir: Path
    fleet_address: str = FLEET_ADDRESS
    control_address: str = CONTROL_ADDRESS
    serverappio_address: str = SERVERAPPIO_ADDRESS
    insecure: bool = False

    def command(self) -> list[str]:
        # Flower's SuperLink, run through fedcare's seam (one ordering fix: flower_compat)
        cmd = [sys.executable, "-m", "fedcare.flower_compat", "superlink",
               "--database", str(self.database),
               "--storage-dir", str(self.storage_dir),
               "--fleet-api-address", self.fleet_address,
               "--control-api-address", self.control_address,
               "--serverappio-api-address", self.serverappio_address]
        if self.insecure:
            return [*cmd, "--insecure"]
        return [*cmd, "--ssl-ca-certfile", str(self.certs / certs_mod.CA_CERT),
                "--ssl-certfile", str(self.certs / certs_mod.SERVER_CERT),
                "--ssl-keyfile", str(self.certs / certs_mod.SERVER_KEY),
                "--enable-supernode-auth"]


def start_superlink(plan: SuperLinkPlan, *, env: Mapping[str, str] | None = None
                    ) -> subprocess.Popen[bytes]:
    """Check certificates, start flower-superlink, register exactly the listed sites."""
    if plan.insecure:
        logger.warning(INSECURE_WARNING)
    else:
        _check_certs_fresh(certs_mod.status(plan.certs))
    plan.database.parent.mkdir(parents=True, exist_ok=True)
    plan.storage_dir.mkdir(parents=True, exist_ok=True)
    cmd = plan.command()
    logger.info("starting: %s", shlex.join(cmd))
    proc = subprocess.Popen(cmd, env=child_env(env))
    if not plan.insecure:
        # in a child process: Flower's gRPC client imports TensorFlow (~600 MB), and this
        # process only waits for the SuperLink afterwards
        sync = subprocess.run([sys.executable, "-m", "fedcare.cli", "certs", "sync",
                               "--certs", str(plan.certs),
                               "--control-address", plan.control_address],
                              env=child_env(env), check=False, timeout=SYNC_TIMEOUT)
        if sync.returncode != 0:
            stop(proc)
            raise LaunchError(f"launch: the listed sites must be registered with the "
                              f"SuperLink; `fedcare certs sync` exited {sync.returncode}")
    return proc


def _control_client(certs: Path, control_address: str, timeout: float) -> ControlClient:
    """A connected client of the SuperLink's Control API (waits up to ``timeout`` s)."""
    from fedcare.flower_compat.control import ControlClient, ControlUnavailable

    address = control_address.replace("0.0.0.0", "127.0.0.1")
    try:
        return ControlClient.connect(address, (certs / certs_mod.CA_CERT).read_bytes(),
                                     timeout=timeout)
    except ControlUnavailable as err:
        raise LaunchError(f"launch: the SuperLink Control API at {address} must answer "
                          f"within {timeout:g}s; got {err}") from err


def online_nodes(certs: Path, control_address: str = CONTROL_ADDRESS,
                 timeout: float = 10.0) -> int:
    """How many SuperNodes the SuperLink sees online now (Control API ``ListNodes``)."""
    with _control_client(certs, control_address, timeout) as client:
        return client.online_count()


def sync_sites(certs: Path, *, control_address: str = CONTROL_ADDRESS,
               timeout: float = 60.0) -> dict[str, list[str]]:
    """Make the SuperLink's registered SuperNodes equal ``authorized-sites.json``: register
    listed keys it lacks, unregister keys no longer listed (a removed or rotated site)."""
    from cryptography.hazmat.primitives import serialization

    listed = certs_mod.read_allowlist(certs)
    wanted = {site: serialization.load_ssh_public_key(entry["public-key"].encode())
              for site, entry in listed.items()}
    with _control_client(certs, control_address, timeout) as client:
        done = client.sync(wanted)
    logger.info("SuperNode registrations: registered %s; unregistered node ids %s; kept %s",
                done["registered"] or "none", done["unregistered"] or "none",
                done["kept"] or "none")
    return done


@dataclass(frozen=True, kw_only=True)
class SuperNodePlan:
    site: str
    csv: Path
    state_dir: Path
    superlink: str
    dataset: str = "heart-disease"
    policy: Path | None = None  # the site policy file; None = the built-in default
    root_cert: Path | None = None
    private_key: Path | None = None
    clientappio_address: str = CLIENTAPPIO_ADDRESS
    insecure: bool = False
    strict: bool = False  # data-quality warnings stop the site (DataValidationError)
    poll_interval: float = POLL_INTERVAL
    max_connect_attempts: int = MAX_CONNECT_ATTEMPTS

    def node_config_items(self) -> dict[str, str]:
        return {"site-name": self.site, "data-path": str(self.csv.resolve()),
                "state-dir": str(self.state_dir.resolve()), "superlink": self.superlink,
                "policy-path": str(self.policy.resolve()) if self.policy else ""}

    def node_config(self) -> str:
        """The node config as ``flower-supernode --node-config`` takes it."""
        return " ".join(f'{key}="{value}"' for key, value in self.node_config_items().items())

    def site_node(self) -> SiteNode:
        from fedcare.flower_compat import SiteNode

        return SiteNode(
            superlink=self.superlink, node_config=self.node_config_items(),
            clientappio_address=self.clientappio_address,
            root_certificates=(None if self.insecure or self.root_cert is None
                               else self.root_cert.read_bytes()),
            private_key=None if self.insecure else self.private_key,
            poll_interval=self.poll_interval,
            flower_dir=self.state_dir.resolve() / FLOWER_DIR)


def check_site(plan: SuperNodePlan) -> str:
    """Everything a site can check before it connects: its policy, its CSV (every problem
    listed), and its certificate and key files."""
    from fedcare.common.errors import ConfigError
    from fedcare.data.datasets import schema_for
    from fedcare.data.validate import load_site_csv
    from fedcare.site.policy import load_policy

    problems: list[str] = []
    try:
        load_policy(plan.policy)
    except ConfigError as err:
        problems.extend(err.problems)
    if not plan.insecure:
        for what, path in (("root certificate", plan.root_cert),
                           ("private key", plan.private_key)):
            if path is None or not path.is_file():
                problems.append(f"supernode: {what} must be a readable file; got {path}")
    if problems:
        raise ConfigError(problems)
    table = load_site_csv(plan.csv, schema_for(plan.dataset), missing="drop")  # raises
    from fedcare.data.site_check import joining_site_lines  # quality, DP readiness

    return "\n".join([table.report.summary(), *joining_site_lines(
        plan.site, table, dataset=plan.dataset, strict=plan.strict)])


def run_site(plan: SuperNodePlan) -> None:
    """The whole site in this process: Flower's SuperNode and the installed ClientApp
    (:func:`fedcare.flower_compat.run_site`). The bundle the run names is hashed and
    inspected, never installed or imported."""
    from fedcare.deploy.memory import (
        ReleasingFilePages,
        ReturningFreeMemory,
        limit_malloc_arenas,
    )
    from fedcare.flower_compat import run_site as run_in_process

    if plan.insecure:
        logger.warning(INSECURE_WARNING)
    plan.state_dir.mkdir(parents=True, exist_ok=True)
    limit_malloc_arenas()  # before TensorFlow and gRPC start their threads

    def installed_app() -> object:
        from fedcare.site.app import app

        return ReturningFreeMemory(app)

    run_in_process(plan.site_node(), installed_app, loading=ReleasingFilePages)


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
