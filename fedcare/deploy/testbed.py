"""A whole fedcare deployment on 127.0.0.1, for benchmarks and rehearsals.

TLS with SuperNode authentication, SQLite SuperLink state, one ``fedcare supernode``
process per site on synthetic heart-disease CSVs, jobs submitted through the
TensorFlow-free ``flwr`` wrapper (``python -m fedcare.flower_compat flwr run``). Every
process runs in its own session so it can be stopped, with whatever it started, as one.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedcare.data.datasets import schema_for
from fedcare.data.schema import Column
from fedcare.deploy import certs as certs_mod

PROJECT_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 180.0
STOP_GRACE = 10.0
HOSTS = ("localhost", "127.0.0.1")
#: A site's policy on the test bed: room for a few DP runs.
TESTBED_POLICY = "lifetime-epsilon-budget = 20.0\n"
SICK_SHARE = 0.45


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def _draw(column: Column, rng: np.random.Generator, n: int) -> list[str]:
    if column.kind == "binary":
        return [str(v) for v in rng.integers(0, 2, n)]
    if column.kind == "categorical":
        return [str(int(v)) for v in rng.choice(column.categories, n)]
    low = 0.0 if column.minimum is None else column.minimum
    high = low + 100.0 if column.maximum is None else column.maximum
    low, high = low + 0.2 * (high - low), high - 0.2 * (high - low)  # plausible middle
    return [f"{v:.1f}" for v in rng.uniform(low, high, n)]


def write_synthetic_heart(path: Path, rows: int, seed: int) -> Path:
    """``rows`` random, valid heart-disease rows (schema ranges; no real patient)."""
    schema = schema_for("heart-disease")
    rng = np.random.default_rng(seed)
    columns = {c.name: _draw(c, rng, rows) for c in schema.features}
    sick = rng.random(rows) < SICK_SHARE
    columns[schema.label.name] = [str(int(v)) if s else "0"
                                  for v, s in zip(rng.integers(1, 5, rows), sick, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values(), strict=True))
    return path


def wait_until(what: str, check: Callable[[], object], timeout: float,
               interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"testbed: timed out after {timeout:g}s waiting for {what}")


@dataclass
class Streamed:
    """A process whose output lines are kept with the time each arrived."""

    proc: subprocess.Popen[str]
    lines: list[tuple[float, str]] = field(default_factory=list)

    def first(self, needle: str) -> float | None:
        return next((t for t, line in list(self.lines) if needle in line), None)


@dataclass
class Testbed:
    """The processes of one loopback deployment, and where their logs go."""

    root: Path
    fleet: str        # SuperNodes connect here
    control: str      # flwr run / node registration
    serverappio: str  # SuperLink <-> ServerApp
    certs: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path, sites: Sequence[str]) -> Testbed:
        certs = root / "certs"
        certs_mod.init(certs, hosts=list(HOSTS), sites=list(sites))
        fleet, control, serverappio = free_ports(3)
        env = {**os.environ, "FLWR_HOME": str(root / "flwr-home"),
               "FLWR_TELEMETRY_ENABLED": "0", "TF_CPP_MIN_LOG_LEVEL": "2",
               "PYTHONPATH": os.pathsep.join(
                   [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        return cls(root=root, certs=certs, env=env, fleet=f"127.0.0.1:{fleet}",
                   control=f"127.0.0.1:{control}", serverappio=f"127.0.0.1:{serverappio}")

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def start(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        out = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "fedcare.cli", *args], cwd=self.root,
                                env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_superlink(self) -> subprocess.Popen[bytes]:
        proc = self.start("superlink", [
            "superlink", "--certs", str(self.certs),
            "--database", str(self.root / "state" / "superlink.db"),
            "--fleet-address", self.fleet, "--control-address", self.control,
            "--serverappio-address", self.serverappio])
        wait_until("the SuperLink to register the listed sites",
                   lambda: "SuperNode registrations: registered" in self.log("superlink")
                   or proc.poll() is not None, START_TIMEOUT)
        if proc.poll() is not None:
            raise RuntimeError(f"testbed: the SuperLink exited:\n{self.log('superlink')[-3000:]}")
        return proc

    def start_site(self, site: str, csv_path: Path, *, poll_interval: float | None = None
                   ) -> subprocess.Popen[bytes]:
        policy = self.root / "policies" / f"{site}.toml"
        policy.parent.mkdir(exist_ok=True)
        policy.write_text(TESTBED_POLICY)
        (clientappio,) = free_ports(1)
        args = ["supernode", "--site", site, "--csv", str(csv_path),
                "--state-dir", str(self.root / "sites" / site), "--superlink", self.fleet,
                "--certs", str(self.certs), "--policy", str(policy),
                "--clientappio-address", f"127.0.0.1:{clientappio}"]
        if poll_interval is not None:
            args += ["--poll-interval", str(poll_interval)]
        return self.start(site, args)

    def exited(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def online_nodes(self) -> int:
        from fedcare.deploy.launch import online_nodes

        return online_nodes(self.certs, self.control)

    def submit(self, run_config: str) -> Streamed:
        """``flwr run PROJECT deployment --stream`` through the TensorFlow-free wrapper."""
        federation = (f'address="{self.control}" '
                      f'root-certificates="{self.certs / certs_mod.CA_CERT}"')
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedcare.flower_compat", "flwr", "run", str(PROJECT_ROOT),
             "deployment", "--stream", "--federation-config", federation,
             "--run-config", run_config],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        streamed = Streamed(proc)
        log = (self.root / f"flwr-run-{len(self.procs)}.log").open("w")
        self.procs[f"flwr-run-{len(self.procs)}"] = proc  # type: ignore[assignment]

        def _read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                streamed.lines.append((time.monotonic(), line))
                log.write(line)
                log.flush()

        threading.Thread(target=_read, daemon=True).start()
        return streamed

    def kill(self, name: str) -> None:
        """SIGKILL a process with everything it started (a crash: nothing cleans up)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
