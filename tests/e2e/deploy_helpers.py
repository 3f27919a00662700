"""A fedcare deployment on 127.0.0.1 for end-to-end tests: process handling and launchers.

Every process runs in its own session (process group) so a test can kill it, with the
children Flower starts (SuperExec, ServerApp, ClientApp worker), as one unit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedcare.deploy import certs as certs_mod
from fedcare.deploy.testbed import free_ports
from fedcare.deploy.testbed import wait_until as wait_for
from fedcare.research.run import PROJECT_ROOT

BIN = Path(sys.executable).parent
START_TIMEOUT = 300.0  # generous: the test machine is often shared and busy
RUN_TIMEOUT = 300.0


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@dataclass
class Deployment:
    root: Path
    certs: Path
    env: dict[str, str]
    fleet: str
    control: str
    serverappio: str
    spare_ports: list[int]  # free when created, for ClientAppIo addresses
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path, sites: list[str], spare_ports: int) -> Deployment:
        """Certificates for ``sites`` and free loopback ports; nothing started yet."""
        certs = root / "certs"
        certs_mod.init(certs, hosts=["localhost", "127.0.0.1"], sites=sites)
        fleet, control, serverappio, *spare = free_ports(3 + spare_ports)
        env = {**os.environ, "FLWR_HOME": str(root / "flwr-home"),
               "FLWR_TELEMETRY_ENABLED": "0", "TF_CPP_MIN_LOG_LEVEL": "2",
               "PYTHONPATH": str(PROJECT_ROOT),
               "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        return cls(root=root, certs=certs, env=env, fleet=f"127.0.0.1:{fleet}",
                   control=f"127.0.0.1:{control}", serverappio=f"127.0.0.1:{serverappio}",
                   spare_ports=spare)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        out = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_superlink(self, name: str = "superlink") -> subprocess.Popen[bytes]:
        """``fedcare superlink`` (TLS, node auth, SQLite state); returns once the listed
        sites are registered. The same database on every start: a restart keeps its state."""
        proc = self.start(name, [str(BIN / "fedcare"), "superlink", "--certs", str(self.certs),
                                 "--database", str(self.root / "state" / "superlink.db"),
                                 "--fleet-address", self.fleet,
                                 "--control-address", self.control,
                                 "--serverappio-address", self.serverappio])
        wait_for("the SuperLink to register the listed sites",
                 lambda: "SuperNode registrations: registered" in self.log(name)
                 or proc.poll() is not None, START_TIMEOUT)
        assert proc.poll() is None, f"{name} exited:\n{self.log(name)[-3000:]}"
        return proc

    def start_site(self, site: str, clientappio_port: int, *,
                   epsilon_budget: float | None = 4.0, policy: str = "",
                   name: str | None = None) -> subprocess.Popen[bytes]:
        """``fedcare supernode`` for ``site`` with its CSV in ``root/data``, under a policy
        file holding ``policy`` (TOML) and, if given, ``lifetime-epsilon-budget``."""
        cmd = [str(BIN / "fedcare"), "supernode", "--site", site,
               "--csv", str(self.root / "data" / f"{site}.csv"),
               "--state-dir", str(self.root / "sites" / site),
               "--superlink", self.fleet, "--certs", str(self.certs),
               "--clientappio-address", f"127.0.0.1:{clientappio_port}"]
        if epsilon_budget is not None:
            policy = f"lifetime-epsilon-budget = {epsilon_budget!r}\n{policy}"
        if policy:
            path = self.root / "policies" / f"{name or site}.toml"
            path.parent.mkdir(exist_ok=True)
            path.write_text(policy)
            cmd += ["--policy", str(path)]
        return self.start(name or site, cmd)

    def flwr_run_args(self, run_config: str, *, stream: bool,
                      project: Path = PROJECT_ROOT) -> list[str]:
        """The arguments of ``flwr run`` (or ``fedcare submit``) against this SuperLink."""
        federation = (f'address="{self.control}" '
                      f'root-certificates="{self.certs / certs_mod.CA_CERT}"')
        return [str(project), "deployment", *(["--stream"] if stream else []),
                "--federation-config", federation, "--run-config", run_config]

    def _flwr_run_cmd(self, run_config: str, stream: bool, project: Path) -> list[str]:
        return [str(BIN / "flwr"), "run",
                *self.flwr_run_args(run_config, stream=stream, project=project)]

    def flwr_run(self, run_config: str, *, stream: bool = True, project: Path = PROJECT_ROOT,
                 timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """``flwr run <project> deployment`` against this SuperLink."""
        return subprocess.run(self._flwr_run_cmd(run_config, stream, project),
                              env=self.env, capture_output=True, text=True, timeout=timeout,
                              start_new_session=True, check=False)

    def flwr_run_background(self, run_config: str, *, project: Path = PROJECT_ROOT
                            ) -> subprocess.Popen[str]:
        """:meth:`flwr_run` without waiting (``communicate()`` for its output)."""
        return subprocess.Popen(self._flwr_run_cmd(run_config, True, project), env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    def signal(self, name: str, sig: int) -> None:
        """Send ``sig`` to a process and everything in its group."""
        _kill_group(self.procs[name], sig)

    def kill(self, name: str) -> None:
        """SIGKILL a process and everything in its group (a crash: no clean-up runs)."""
        proc = self.procs[name]
        _kill_group(proc, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            _kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            _kill_group(proc, signal.SIGKILL)
            proc.wait()
