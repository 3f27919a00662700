"""Where simulations run: a private local Ray, or a Ray cluster the researcher already has.

Settings (one frozen :class:`EngineConfig`, parsed once): ``ray-address`` (``""`` =
start a private Ray on this machine; ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` =
attach to that cluster), ``cpus-per-site`` and ``gpus-per-site`` (Ray resources each
virtual-site worker holds). They come from CLI flags (``--ray-address``, ...), from
``--set ray-address=...`` and from the environment (:data:`RAY_ADDRESS_ENV`), in that
order. They are engine settings, not run settings: the sites never see them, a sweep
cell's key does not include them, and a run gives the same report wherever it ran.

:class:`EngineSession` owns one Ray connection and one pool of site workers for as long
as it is open; every simulation inside it (a sweep's cells, a benchmark's runs) reuses
both, so Ray starts and TensorFlow is imported in each worker once.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import os
import secrets
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from fedcare.common.errors import ConfigError
from fedcare.common.values import is_int, is_real
from fedcare.research.terminal import QUIET_ENV
from fedcare.research.worker_state import clear_run_state

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
RAY_ADDRESS_ENV = "FEDCARE_RAY_ADDRESS"
#: Run-config style keys (``--set KEY=VALUE``) of the engine settings.
ENGINE_KEYS = ("ray-address", "cpus-per-site", "gpus-per-site")
MAX_LOCAL_WORKERS = 8
#: Environment of every site worker, local or on a cluster's nodes: one TensorFlow
#: thread pool per worker (2 workers on 2 cores do not fight), no TensorFlow/CUDA
#: start-up chatter, and the flag that lets virtual sites run simulation-only faults.
WORKER_ENV = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
              "PYTHONWARNINGS": "ignore::DeprecationWarning", **QUIET_ENV}


def local_workers() -> int:
    """Site workers of a private local Ray: one per core, at most eight."""
    return max(1, min(os.cpu_count() or 1, MAX_LOCAL_WORKERS))


def _address_problem(address: str) -> str | None:
    if address in ("", "auto"):
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if sep and host and port.isdigit() and 0 < int(port) < 65536 and " " not in host:
        return None
    return (f"engine: ray-address must be auto, HOST:PORT or ray://HOST:PORT (or empty for "
            f"a private local Ray); got {address!r}")


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Where a simulation's virtual sites run and what each may hold."""

    ray_address: str = ""
    cpus_per_site: float = 1.0
    gpus_per_site: float = 0.0
    workers: int | None = None  # private local Ray only: CPUs it gets (default: cores, <= 8)

    def __post_init__(self) -> None:
        problems = []
        if (problem := _address_problem(self.ray_address)) is not None:
            problems.append(problem)
        if not (is_real(self.cpus_per_site) and math.isfinite(self.cpus_per_site)
                and self.cpus_per_site > 0):
            problems.append(f"engine: cpus-per-site must be a number > 0; got "
                            f"{self.cpus_per_site!r}")
        if not (is_real(self.gpus_per_site) and math.isfinite(self.gpus_per_site)
                and self.gpus_per_site >= 0):
            problems.append(f"engine: gpus-per-site must be a number >= 0; got "
                            f"{self.gpus_per_site!r}")
        if self.workers is not None and not (is_int(self.workers) and self.workers >= 1):
            problems.append(f"engine: workers must be an integer >= 1; got {self.workers!r}")
        if self.workers is not None and self.ray_address:
            problems.append("engine: workers must not be set with ray-address (the cluster's "
                            f"resources decide); got workers={self.workers}")
        if problems:
            raise ConfigError(problems)

    @property
    def on_cluster(self) -> bool:
        return bool(self.ray_address)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      env: Mapping[str, str] | None = None) -> EngineConfig:
        """From ``--set``-style keys (``ray-address``, ...), else the environment."""
        env = os.environ if env is None else env
        problems = []
        values: dict[str, Any] = {"ray_address": str(settings.get("ray-address",
                                                                  env.get(RAY_ADDRESS_ENV, "")))}
        for key in ("cpus-per-site", "gpus-per-site"):
            if key not in settings:
                continue
            try:
                values[key.replace("-", "_")] = float(settings[key])
            except (TypeError, ValueError):
                problems.append(f"engine: {key} must be a number; got {settings[key]!r}")
        if problems:
            raise ConfigError(problems)
        return cls(**values)

    def ray_init_args(self) -> dict[str, Any]:
        """``ray.init`` arguments: attach to the cluster, or start a private Ray.

        ``address="local"`` keeps a stray ``RAY_ADDRESS`` in the environment from
        silently sending a run that asked for nothing to somebody's cluster.
        """
        common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if self.on_cluster:
            return {"address": self.ray_address, **common,
                    "runtime_env": {"env_vars": worker_env()}}
        # A private Ray's daemons start from this process's environment, and their workers
        # inherit it: :meth:`EngineSession.start` sets :func:`worker_env` around
        # ``ray.init``. No runtime_env, so Ray's prestarted workers serve the sites (with
        # one, Ray starts fresh workers for them: ~1.5 s a session).
        return {"address": "local", "num_cpus": self.workers or local_workers(),
                "include_dashboard": False, **common}

    def backend_config(self) -> dict[str, Any]:
        """Flower's backend config (its ``init_args`` are unused: the session started Ray)."""
        return {"client_resources": {"num_cpus": self.cpus_per_site,
                                     "num_gpus": self.gpus_per_site},
                "init_args": {"logging_level": logging.WARNING, "log_to_driver": False}}

    def describe(self) -> dict[str, Any]:
        return {"ray-address": self.ray_address or "local", "cpus-per-site": self.cpus_per_site,
                "gpus-per-site": self.gpus_per_site}


def split_engine_settings(overrides: MutableMapping[str, Any]) -> dict[str, Any]:
    """Take the engine keys out of run-config overrides (they are not run settings)."""
    return {key: overrides.pop(key) for key in ENGINE_KEYS if key in overrides}


def worker_env() -> dict[str, str]:
    """What every site worker's process environment gets (local and cluster alike)."""
    from fedcare.common.config import SIMULATION_ENV

    return {**WORKER_ENV, SIMULATION_ENV: "1",
            # Flower's own runtime_env: the driver's import path, so workers import the
            # same fedcare (on a cluster: installed at the same path on every node).
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in this process's environment inside the block (for the processes it
    starts), the environment as it was after it."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class EngineSession:
    """One Ray connection and one pool of site workers, shared by the runs inside it."""

    config: EngineConfig
    pool: Any = None  # fedcare.flower_compat.EnginePool, once started
    started_ray: bool = False
    checked_dirs: set[Path] = field(default_factory=set)

    def placement(self) -> dict[str, Any]:
        """Where the last run's site messages ran, for the report."""
        by_node = dict(sorted(self.pool.messages_by_node.items()))
        return {**self.config.describe(), "site-workers": self.pool.num_workers,
                "nodes-used": len(by_node), "site-messages-by-node": by_node}

    def start(self) -> None:
        """Start (or attach to) Ray, once per session, when the first run needs it."""
        import ray

        from fedcare.flower_compat.simulation import (
            EnginePool,
            gcs_first_try,
            lean_private_ray,
        )

        if self.pool is not None:
            return
        if not ray.is_initialized():
            for key, value in WORKER_ENV.items():  # a local Ray's daemons inherit these
                os.environ.setdefault(key, value)
            logger.info("engine: %s", f"attaching to the Ray cluster at "
                        f"{self.config.ray_address}" if self.config.on_cluster
                        else "starting a private local Ray")
            with contextlib.ExitStack() as private:
                if not self.config.on_cluster:  # the workers' environment; a quick GCS;
                    private.enter_context(environment(worker_env()))  # no unused daemons
                    private.enter_context(gcs_first_try())
                    private.enter_context(lean_private_ray())
                ray.init(**self.config.ray_init_args())
            self.started_ray = True
        self.pool = EnginePool()

    @contextlib.contextmanager
    def run(self, listener: Callable[[Any], None] | None = None
            ) -> Iterator[dict[str, Any]]:
        """One simulation inside the session: Flower's engine on this session's pool;
        ``listener`` gets every site reply (:class:`fedcare.flower_compat.SiteReply`)."""
        from fedcare.common.preflight import REQUEST_RECORD
        from fedcare.flower_compat.simulation import session_engine

        self.start()
        self.pool.reset_counts()
        # Kept workers keep the compiled training steps and the site data; what belongs
        # to one run (its sites' state folders, calibrated noise) is dropped first.
        self.pool.run_on_workers(clear_run_state)
        self.pool.listener, self.pool.request_record = listener, REQUEST_RECORD
        try:
            with session_engine(self.pool):
                yield self.config.backend_config()
        finally:
            self.pool.listener = None

    def check_shared_folder(self, folder: Path) -> None:
        """On a cluster, every node must see ``folder`` (the virtual sites' ledgers live
        there: a site whose rounds land on two nodes must find its own earlier spend)."""
        folder = folder.resolve()
        if not self.config.on_cluster or folder in self.checked_dirs:
            return
        self.start()
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".fedcare-shared-{secrets.token_hex(6)}"
        probe.write_text(probe.name)
        try:
            missing = _nodes_without(probe)
        finally:
            probe.unlink(missing_ok=True)
        if missing:
            raise ConfigError([f"engine: output-dir must be one shared folder that every Ray "
                               f"node sees at the same path (virtual sites keep their privacy "
                               f"ledgers there); got {folder}, not visible on node(s) "
                               f"{', '.join(missing)}"])
        self.checked_dirs.add(folder)

    def close(self) -> None:
        import ray

        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if ray.is_initialized() and self.started_ray:
            ray.shutdown()
        self.started_ray = False


def _nodes_without(probe: Path) -> list[str]:
    """Ray node ids (alive nodes with CPUs) on which ``probe`` cannot be read."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def sees(path: str, expected: str) -> bool:
        try:
            return Path(path).read_text() == expected
        except OSError:
            return False

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU")]
    pinned = [sees.options(  # type: ignore[attr-defined]
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)) for node in nodes]
    answers = ray.get([task.remote(str(probe), probe.name) for task in pinned])
    return [node for node, ok in zip(nodes, answers, strict=True) if not ok]


_ACTIVE: list[EngineSession] = []


def active_session() -> EngineSession | None:
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def engine_session(config: EngineConfig | None = None) -> Iterator[EngineSession]:
    """The open session (when ``config`` is None or the same), else a new one for this
    block. Ray starts (or is attached to) when the first run needs it, once; the site
    workers are kept for every run inside; both end with the block."""
    current = active_session()
    if current is not None:
        if config is not None and replace(config, workers=current.config.workers) != \
                current.config:
            raise ConfigError([f"engine: a run inside an engine session must use its "
                               f"settings {current.config.describe()}; got "
                               f"{config.describe()}"])
        yield current
        return
    session = EngineSession(config or EngineConfig())
    _ACTIVE.append(session)
    try:
        yield session
    finally:
        _ACTIVE.pop()
        session.close()


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """``--ray-address``, ``--cpus-per-site``, ``--gpus-per-site`` for a command that
    simulates (also ``--set ray-address=...`` and ``FEDCARE_RAY_ADDRESS``)."""
    group = parser.add_argument_group("engine (where the virtual sites run; docs/scale.md)")
    group.add_argument("--ray-address", metavar="ADDRESS",
                       help=f"attach to this Ray cluster (auto, HOST:PORT, ray://HOST:PORT) "
                            f"instead of starting a private local Ray (env {RAY_ADDRESS_ENV})")
    group.add_argument("--cpus-per-site", type=float,
                       help="CPUs each virtual-site worker holds (default 1)")
    group.add_argument("--gpus-per-site", type=float,
                       help="GPUs each virtual-site worker holds (default 0; fractions share)")


def engine_from_args(args: argparse.Namespace) -> EngineConfig | None:
    """The engine settings of a command with engine flags (flags > --set > environment);
    None for a command without them."""
    if not hasattr(args, "ray_address"):
        return None
    settings: dict[str, Any] = {}
    for item in getattr(args, "set", None) or []:
        key, _, value = item.partition("=")
        if key.strip() in ENGINE_KEYS:
            settings[key.strip()] = value.strip().strip("\"'")
    for key in ENGINE_KEYS:
        value = getattr(args, key.replace("-", "_"), None)
        if value is not None:
            settings[key] = value
    return EngineConfig.from_settings(settings)


@contextlib.contextmanager
def command_engine(args: argparse.Namespace) -> Iterator[None]:
    """One engine session for the whole command (every run of a sweep or benchmark)."""
    config = engine_from_args(args)
    if config is None:
        yield
        return
    with engine_session(config):
        yield


def one_engine_session(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` inside an engine session (the open one, else one for the call): every
    simulation it makes shares Ray and the site workers."""
    @functools.wraps(fn)
    def within(*args: P.args, **kwargs: P.kwargs) -> R:
        with engine_session():
            return fn(*args, **kwargs)
    return within
