"""Engine settings (where virtual sites run) and a real two-node Ray cluster on loopback."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcare.common.errors import ConfigError
from fedcare.research.cluster import (
    RAY_ADDRESS_ENV,
    EngineConfig,
    EngineSession,
    add_engine_flags,
    engine_from_args,
    engine_session,
    split_engine_settings,
)
from tests.report_views import science

ROOT = Path(__file__).resolve().parents[2]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", action="append")
    add_engine_flags(parser)
    return parser.parse_args(list(argv))


def test_default_engine_is_a_private_local_ray_even_when_ray_address_is_in_the_env(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")  # Ray's own variable: not ours
    args = EngineConfig.from_settings({}, env={}).ray_init_args()
    assert args["address"] == "local"
    assert args["num_cpus"] >= 1


def test_cluster_engine_attaches_without_claiming_cpus() -> None:
    config = EngineConfig.from_settings({"ray-address": "10.0.0.9:6379", "cpus-per-site": "2",
                                         "gpus-per-site": "0.5"}, env={})
    args = config.ray_init_args()
    assert args["address"] == "10.0.0.9:6379" and "num_cpus" not in args
    assert config.backend_config()["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.5}


def test_cluster_site_workers_get_the_simulation_flag_and_quiet_tensorflow() -> None:
    config = EngineConfig.from_settings({"ray-address": "10.0.0.9:6379"}, env={})
    env = config.ray_init_args()["runtime_env"]["env_vars"]
    assert env["FEDCARE_SIMULATION"] == "1"
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "3"


def test_a_private_ray_starts_in_the_workers_environment_without_a_runtime_env(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.delenv("FEDCARE_SIMULATION", raising=False)
    seen: dict[str, object] = {}

    def fake_init(**kwargs: object) -> None:
        seen.update(kwargs=kwargs, simulation=os.environ.get("FEDCARE_SIMULATION"),
                    pythonpath=os.environ.get("PYTHONPATH"))
        raise _Stop

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    with pytest.raises(_Stop):
        EngineSession(EngineConfig()).start()
    assert "runtime_env" not in seen["kwargs"]  # type: ignore[operator]
    assert seen["simulation"] == "1"
    assert str(seen["pythonpath"]).split(os.pathsep) == [p for p in sys.path if p]
    assert "FEDCARE_SIMULATION" not in os.environ  # only for the daemons Ray starts


class _Stop(Exception):
    """Ends the test at ray.init."""


def test_flag_beats_set_beats_environment() -> None:
    env = {RAY_ADDRESS_ENV: "envhost:1"}
    assert EngineConfig.from_settings({}, env=env).ray_address == "envhost:1"
    args = _args("--set", "ray-address=sethost:2", "--set", "batch-size=8")
    assert engine_from_args(args) == EngineConfig(ray_address="sethost:2")
    args = _args("--set", "ray-address=sethost:2", "--ray-address", "flaghost:3")
    assert engine_from_args(args) == EngineConfig(ray_address="flaghost:3")


def test_engine_keys_are_taken_out_of_run_settings() -> None:
    overrides = {"ray-address": "auto", "gpus-per-site": 1, "num-rounds": 3}
    assert split_engine_settings(overrides) == {"ray-address": "auto", "gpus-per-site": 1}
    assert overrides == {"num-rounds": 3}


def test_every_bad_engine_setting_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        EngineConfig(ray_address="no port here", cpus_per_site=0.0, gpus_per_site=-1.0)
    assert len(err.value.problems) == 3
    assert "ray-address must be auto, HOST:PORT" in str(err.value)
    assert "cpus-per-site must be a number > 0; got 0.0" in str(err.value)


@pytest.mark.parametrize("address", ["auto", "127.0.0.1:6379", "ray://head.example:10001"])
def test_cluster_address_forms_are_accepted(address: str) -> None:
    assert EngineConfig(ray_address=address).on_cluster


def test_a_run_inside_a_session_cannot_ask_for_another_engine() -> None:
    with engine_session(EngineConfig()), pytest.raises(ConfigError, match="engine session"), \
            engine_session(EngineConfig(ray_address="127.0.0.1:1")):
        pass


def _simulate(out: Path, name: str, *extra: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-m", "fedcare.cli", "simulate", "--sites", "4",
                           "--rounds", "2", "--output-dir", str(out), "--run-name", name,
                           "--set", "secure-noise=false", *extra],
                          env=env, cwd=out, timeout=900, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return dict(json.loads((out / name / "report.json").read_text()))


@pytest.fixture
def two_node_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A head node and a worker node, one CPU each, on this machine; torn down by handle.

    (Nodes bound to 127.0.0.1 cannot be attached to with Ray 2.31: the driver looks for a
    raylet at the machine's own address; so they use it, and nothing leaves the machine.)
    RAY_TMPDIR keeps the cluster's address file out of /tmp/ray, so a plain
    ``ray.init()`` elsewhere on this machine never attaches to it.
    """
    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory(prefix="fcr-", dir="/tmp") as tmp:
        monkeypatch.setenv("RAY_TMPDIR", tmp)
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False})
        try:
            cluster.add_node(num_cpus=1)
            yield cluster
        finally:
            cluster.shutdown()
            _end_leftovers(tmp)


def _processes_using(folder: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if folder in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _end_leftovers(folder: str, wait: float = 10.0) -> None:
    """Ray's node teardown can leave a worker node's dashboard agent behind: end what still
    runs from this cluster's own temp folder (by pid: nothing else on the machine)."""
    deadline = time.monotonic() + wait
    while _processes_using(folder) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _processes_using(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_simulation_on_a_two_node_cluster_uses_both_nodes_and_matches_a_local_run(
        two_node_cluster: Any, tmp_path: Path) -> None:
    node_ids = {node.node_id for node in two_node_cluster.list_all_nodes()}

    remote = _simulate(tmp_path, "on-cluster", "--ray-address", two_node_cluster.address)
    local = _simulate(tmp_path, "local")

    placement = remote["engine"]
    assert set(placement["site-messages-by-node"]) == node_ids  # both nodes did site work
    assert sum(placement["site-messages-by-node"].values()) == \
        sum(local["engine"]["site-messages-by-node"].values())
    assert local["engine"]["ray-address"] == "local"
    assert science(remote) == science(local)
    # Round 1 starts from the same global model: the same training, bit for bit. (Later
    # global models may differ in the last bit: FedAvg sums replies in arrival order.)
    assert {s: m["update-sha256"] for s, m in remote["rounds"][0]["train"].items()} == \
        {s: m["update-sha256"] for s, m in local["rounds"][0]["train"].items()}
