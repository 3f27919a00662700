"""Start Flower's SuperLink (consortium) and SuperNode (hospital) the fedcare way.

Secure by default: TLS, SuperNode authentication and a persistent state database for the
SuperLink; the CA root certificate and the site's own key for a SuperNode. Plain text only
with ``insecure=True``, which logs a warning naming what is lost.

A SuperNode runs with ``--isolation process`` and this module runs the site's ClientApp
in ONE long-lived process (:func:`run_clientapp_worker`): Flower 1.23's default starts a
new ``flwr-clientapp`` process, importing TensorFlow, for every message.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedcare.common.errors import FedcareError
from fedcare.deploy import certs as certs_mod

logger = logging.getLogger(__name__)

FLEET_ADDRESS = "0.0.0.0:9092"          # hospitals connect here (open this port to them only)
CONTROL_ADDRESS = "127.0.0.1:9093"      # flwr run / node registration: operator only
SERVERAPPIO_ADDRESS = "127.0.0.1:9091"  # SuperLink <-> ServerApp: never leaves the host
CLIENTAPPIO_ADDRESS = "127.0.0.1:9094"  # SuperNode <-> ClientApp: never leaves the host
SYNC_TIMEOUT = 120.0
INSECURE_WARNING = ("INSECURE: plain-text gRPC, no TLS and no SuperNode authentication. "
                    "Model updates travel unencrypted and ANY process that reaches the port "
                    "can join as a site. Use only on a private test bed.")


class LaunchError(FedcareError):
    """A SuperLink or SuperNode cannot be started as asked."""


def _executable(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise LaunchError(f"launch: {name} must be installed (pip install flwr); not found")
    return found


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


def sync_sites(certs: Path, *, control_address: str = CONTROL_ADDRESS,
               timeout: float = 60.0) -> dict[str, list[str]]:
    """Make the SuperLink's registered SuperNodes equal ``authorized-sites.json``: register
    listed keys it lacks, unregister keys no longer listed (a removed or rotated site)."""
    from cryptography.hazmat.primitives import serialization

    from fedcare.flower_compat.control import ControlClient, ControlUnavailable

    listed = certs_mod.read_allowlist(certs)
    wanted = {site: serialization.load_ssh_public_key(entry["public-key"].encode())
              for site, entry in listed.items()}
    address = control_address.replace("0.0.0.0", "127.0.0.1")
    try:
        client = ControlClient.connect(address, (certs / certs_mod.CA_CERT).read_bytes(),
                                       timeout=timeout)
    except ControlUnavailable as err:
        raise LaunchError(f"launch: the SuperLink Control API at {address} must answer "
                          f"within {timeout:g}s; got {err}") from err
    with client:
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

    def node_config(self) -> str:
        items = {"site-name": self.site, "data-path": str(self.csv.resolve()),
                 "state-dir": str(self.state_dir.resolve()), "superlink": self.superlink,
                 "policy-path": str(self.policy.resolve()) if self.policy else ""}
        return " ".join(f'{key}="{value}"' for key, value in items.items())

    def command(self) -> list[str]:
        cmd = [_executable("flower-supernode"), "--superlink", self.superlink,
               "--node-config", self.node_config(), "--isolation", "process",
               "--clientappio-api-address", self.clientappio_address]
        if self.insecure:
            return [*cmd, "--insecure"]
        return [*cmd, "--root-certificates", str(self.root_cert),
                "--auth-supernode-private-key", str(self.private_key)]


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


def start_supernode(plan: SuperNodePlan, *, env: Mapping[str, str] | None = None
                    ) -> subprocess.Popen[bytes]:
    if plan.insecure:
        logger.warning(INSECURE_WARNING)
    plan.state_dir.mkdir(parents=True, exist_ok=True)
    cmd = plan.command()
    logger.info("starting: %s", shlex.join(cmd))
    return subprocess.Popen(cmd, env=child_env(env))


def run_clientapp_worker(clientappio_address: str) -> None:
    """Serve this site's ClientApp messages in this process, one at a time, until stopped.

    The ClientApp that runs is the fedcare installed at the site, whatever the run's
    bundle names or carries (:func:`fedcare.flower_compat.run_site_worker`): the bundle is
    hashed and inspected, never installed or imported.
    """
    from fedcare.flower_compat import run_site_worker

    def installed_app() -> object:
        from fedcare.site.app import app

        return app

    run_site_worker(clientappio_address, installed_app)


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
