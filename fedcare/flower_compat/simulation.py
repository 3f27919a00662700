"""Flower's simulation engine, run in this process, with shorter polls.

:func:`run_engine` runs a ServerApp and ClientApp on Flower's in-process engine
(``flwr.simulation.run_simulation._run_simulation``: the public ``run_simulation`` cannot
take a run id, a run config or a project folder), inside :func:`fast_polling`.

Shorter polling is the framework's cost per round.

In flwr 1.23 a simulated round waits on two fixed 0.1 s polls per phase (train, then
evaluate): the engine's thread that moves messages from the link state to the workers
(``vce_api.add_messages_to_queue``, ``f_stop.wait(0.1)`` between sweeps) and the
in-memory grid that the ServerApp polls for replies (``InMemoryGrid.pull_interval``).
With sites that train in milliseconds, those polls are most of a round (about 0.4 s of
it). Neither is a setting of ``run_simulation``, so :func:`fast_polling` swaps both for
the duration of one simulation and restores them after. Deployment (``flwr run`` against
a SuperLink) is untouched.

One Ray session for many runs (:class:`EnginePool`, :func:`session_backend`): Flower's
``RayBackend`` creates its actors for one run and ends the Ray session after it
(``ray.shutdown``); a sweep of 100 cells paid Ray's start and TensorFlow's import in
every worker 100 times. The session backend takes its actors from a pool the caller owns
(:mod:`fedcare.research.cluster`), and records on which Ray node each site message ran
(a record in the context's state, removed again before Flower stores the context).

A private Ray starts sooner (:func:`gcs_first_try`): Ray's head node connects to its
GCS the moment it has started the process and, when that fails, sleeps 1 s. It also
starts, stops and runs fewer processes (:func:`lean_private_ray`): a private Ray for one
session has no use for its API server, its autoscaler monitor or its log monitor.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from queue import Queue
from typing import Any

logger = logging.getLogger(__name__)

#: How long :func:`gcs_first_try` waits for the GCS's port before leaving it to Ray.
GCS_PORT_WAIT_SECONDS = 30.0
GCS_PORT_POLL_SECONDS = 0.02


@contextmanager
def gcs_first_try() -> Iterator[None]:
    """Inside this block, a private Ray's head node finds its GCS at the first try.

    Ray 2.31's ``Node`` starts the GCS server process, then connects to it at once; the
    process is not listening yet, so that try fails and Ray sleeps 1 s before the next
    (``Node._init_gcs_client``): ~1-1.5 s of every local ``ray.init`` (4.7-6.5 s measured).
    After the process starts, this waits for its port (every 20 ms, at most 30 s or until
    the process ends); Ray's own connection and its retries then run unchanged. Only this
    block's ``ray.init`` is changed: Ray is as shipped before and after it.
    """
    from ray._private import ray_constants
    from ray._private.node import Node

    started = Node.start_gcs_server

    def start_gcs_server(node: Any) -> None:
        started(node)
        host, _, port = str(node._gcs_address).rpartition(":")
        process = node.all_processes[ray_constants.PROCESS_TYPE_GCS_SERVER][0].process
        _wait_for_port(host, int(port), alive=lambda: process.poll() is None)

    Node.start_gcs_server = start_gcs_server  # type: ignore[method-assign]
    try:
        yield
    finally:
        Node.start_gcs_server = started  # type: ignore[method-assign]


@contextmanager
def lean_private_ray() -> Iterator[None]:
    """Inside this block, a private Ray's head node starts without three processes that
    a private session never uses:

    * the API server (``dashboard.py``): with ``include_dashboard=False`` Ray 2.31 still
      starts it, loads only its usage-statistics module into it, and makes ``ray.init``
      wait for its address (polled every 0.1 s);
    * the autoscaler monitor (``monitor.py``): a private Ray has a fixed size; the same
      as ``ray start --no-monitor``;
    * the log monitor (``log_monitor.py``): it streams the workers' output to a driver,
      and fedcare's drivers ask for none (``log_to_driver=False``; the workers' logs
      stay in Ray's session folder); the same as ``ray start --include-log-monitor=False``.

    Each is a Python process costing ~1 s of CPU to start (measured on 2 cores, where the
    site workers import TensorFlow at the same time), and each is stopped one after the
    other by ``ray.shutdown``: ``ray.init`` 3.85-3.92 s -> 1.86-3.00 s, ``ray.shutdown``
    1.48-1.53 s -> 0.40-0.56 s. The GCS, the raylet, its agents and the workers are
    started as shipped. Only this block's ``ray.init`` is changed.
    """
    from ray._private.node import Node

    shipped_init, shipped_api_server = Node.__init__, Node.start_api_server

    def __init__(node: Any, ray_params: Any, *args: Any, **kwargs: Any) -> None:
        ray_params.no_monitor = True
        ray_params.include_log_monitor = False
        shipped_init(node, ray_params, *args, **kwargs)

    def start_api_server(node: Any, **_: Any) -> None:
        node._webui_url = None

    Node.__init__ = __init__  # type: ignore[method-assign,assignment]
    Node.start_api_server = start_api_server  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        Node.__init__ = shipped_init  # type: ignore[method-assign]
        Node.start_api_server = shipped_api_server  # type: ignore[method-assign]


def _wait_for_port(host: str, port: int, *, alive: Callable[[], bool],
                   limit: float = GCS_PORT_WAIT_SECONDS) -> bool:
    """True once ``host:port`` accepts a TCP connection; False after ``limit`` seconds or
    when ``alive()`` turns false."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and alive():
        try:
            socket.create_connection((host, port), timeout=GCS_PORT_POLL_SECONDS * 25).close()
            return True
        except OSError:
            time.sleep(GCS_PORT_POLL_SECONDS)
    return False

# Seconds between polls. 0.01 s keeps the idle cost of the two polling threads small
# (one state look-up per site per poll) while taking ~0.35 s off every round.
FAST_POLL_SECONDS = 0.01


def _make_extractor(interval: float) -> Any:
    def add_messages_to_queue(state: Any, queue: Queue[Any], nodes_mapping: Any,
                              f_stop: threading.Event) -> None:
        """``vce_api.add_messages_to_queue`` with ``interval`` between sweeps."""
        while not f_stop.is_set():
            for node_id in nodes_mapping:
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
            f_stop.wait(interval)
    return add_messages_to_queue


@contextmanager
def fast_polling(interval: float = FAST_POLL_SECONDS) -> Iterator[None]:
    """Poll every ``interval`` seconds instead of 0.1 s inside Flower's simulation."""
    if not 0 < interval <= 1:
        raise ValueError(f"simulation: poll interval must be in (0, 1] seconds; got {interval}")
    from flwr.server.grid.inmemory_grid import InMemoryGrid
    from flwr.server.superlink.fleet.vce import vce_api

    # The module, not the function of the same name that flwr.simulation exports.
    sim: Any = importlib.import_module("flwr.simulation.run_simulation")

    saved = (vce_api.add_messages_to_queue, sim.InMemoryGrid)
    vce_api.add_messages_to_queue = _make_extractor(interval)  # type: ignore[assignment]
    sim.InMemoryGrid = functools.partial(InMemoryGrid, pull_interval=interval)
    try:
        yield
    finally:
        vce_api.add_messages_to_queue, sim.InMemoryGrid = saved


def run_engine(*, client_app: Any, server_app: Any, num_sites: int, run_config: Mapping[str, Any],
               backend_config: Mapping[str, Any], app_dir: str, is_app: bool = True,
               poll_seconds: float | None = FAST_POLL_SECONDS) -> None:
    """Run one simulation of ``num_sites`` virtual sites to its end, in this process.

    ``run_config`` is the run's kebab-case config: the ServerApp's context gets it, and with
    ``is_app`` the sites read the project's defaults fused with it, as under ``flwr run``
    (without it Flower gives them an empty run config). Exceptions of the ServerApp come
    back as Flower raises them (a ``RuntimeError``). ``poll_seconds=None`` keeps Flower's
    own polls (as a template app runs).
    """
    import secrets

    from flwr.app import Context, RecordDict
    from flwr.common.constant import RUN_ID_NUM_BYTES
    from flwr.common.telemetry import EventType
    from flwr.common.typing import Run
    from flwr.simulation.run_simulation import _run_simulation

    overrides = dict(run_config)
    run = Run.create_empty(run_id=int.from_bytes(secrets.token_bytes(RUN_ID_NUM_BYTES), "little")
                           >> 1)
    run.override_config = overrides
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=overrides)
    polls = nullcontext() if poll_seconds is None else fast_polling(poll_seconds)
    with polls:
        _run_simulation(num_supernodes=num_sites,
                        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                        client_app=client_app, server_app=server_app,
                        backend_config=dict(backend_config),  # type: ignore[arg-type]
                        server_app_context=context, app_dir=app_dir,
                        run=run if is_app else None, is_app=is_app)


def _load_attribute(module: str, attribute: str) -> Any:
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class AppByName:
    """A ClientApp named by module and attribute, loaded where it runs.

    Flower's engine ships the ClientApp to the Ray workers with every message and only
    passes it along in the driver. Pickled, this is its name: a worker unpickles the real
    app (importing its module once), while the driver never imports the site's code and
    with it TensorFlow (~420 MB, seconds of CPU beside the workers). Called in a process,
    it loads the app there and calls it."""

    module: str
    attribute: str

    @classmethod
    def of(cls, component: str) -> AppByName:
        """From Flower's ``module:attribute`` reference (as in ``pyproject.toml``)."""
        module, _, attribute = component.partition(":")
        if not module or not attribute:
            raise ValueError(f"simulation: app must be MODULE:ATTRIBUTE; got {component!r}")
        return cls(module, attribute)

    def load(self) -> Any:
        return _load_attribute(self.module, self.attribute)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return _load_attribute, (self.module, self.attribute)


#: Context-state record that carries the Ray node a message ran on back to the driver.
ENGINE_RECORD = "fedcare-engine"
NODE_ID_KEY = "node-id"


def _tagged_call(app: Any, message: Any, context: Any) -> Any:
    """Runs in a Ray worker: the site's ClientApp, then where it ran."""
    import ray
    from flwr.app import ConfigRecord

    reply = app(message=message, context=context)
    context.state[ENGINE_RECORD] = ConfigRecord(
        {NODE_ID_KEY: ray.get_runtime_context().get_node_id()})
    return reply


@dataclass(frozen=True)
class _NodeTaggedApp:
    """A ClientApp loader (shipped to the worker) whose app also names the worker's node."""

    app_fn: Callable[[], Any]

    def __call__(self) -> Callable[..., Any]:
        return functools.partial(_tagged_call, self.app_fn())


@dataclass(frozen=True)
class SiteReply:
    """One site's answer as the engine saw it: what was asked, in which round, whether it
    was an error, and the reply's numbers (its first metric record)."""

    kind: str  # Flower's message type: train, evaluate, query.preflight, train.finetune
    server_round: int
    error: bool
    metrics: Mapping[str, Any]


def site_reply(message: Any, reply: Any, request_record: str) -> SiteReply:
    request = message.content.config_records.get(request_record) or {}
    metrics: Mapping[str, Any] = {}
    if not reply.has_error():
        records = list(reply.content.metric_records.values())
        metrics = dict(records[0]) if records else {}
    return SiteReply(kind=str(message.metadata.message_type),
                     server_round=int(request.get("server-round", 0)),
                     error=bool(reply.has_error()), metrics=metrics)


@dataclass(frozen=True)
class _CallInWorker:
    """A ClientApp loader whose "app" calls ``fn`` in the worker and answers None."""

    fn: Callable[[], None]

    def __call__(self) -> Callable[..., None]:
        def call(message: Any, context: Any) -> None:
            self.fn()
        return call


class EnginePool:
    """Flower's Ray actor pool, kept for as long as its owner's session lasts.

    ``pool_for`` hands out the existing pool when it has the same per-site resources and
    every actor is idle (a run that ended normally leaves none busy); otherwise the old
    actors are killed and a new pool is built. ``messages_by_node`` counts, per Ray node
    id, the site messages answered since the last ``reset_counts``.
    """

    def __init__(self) -> None:
        self._pool: Any = None
        self._resources: dict[str, float] = {}
        self._lock = threading.Lock()
        self.messages_by_node: Counter[str] = Counter()
        self.pools_built = 0
        #: Called with each :class:`SiteReply` (a progress display), from engine threads.
        self.listener: Callable[[SiteReply], None] | None = None
        self.request_record = ""

    def pool_for(self, client_resources: Mapping[str, float], actor_kwargs: Any) -> Any:
        from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor

        pool = self._pool
        if (pool is not None and dict(client_resources) == self._resources
                and len(pool.pool) == pool.num_actors and not pool._future_to_actor):
            return pool
        self.close()
        pool = BasicActorPool(actor_type=ClientAppActor, client_resources=dict(client_resources),
                              actor_kwargs=actor_kwargs)
        pool.add_actors_to_pool(pool.actors_capacity)
        self._pool, self._resources = pool, dict(client_resources)
        self.pools_built += 1
        logger.info("simulation engine: %d site workers (%s each)", pool.num_actors,
                    dict(client_resources))
        return pool

    def run_on_workers(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once in every site worker of the pool (all idle between runs)."""
        import ray

        pool = self._pool
        if pool is None:
            return
        ray.get([actor.run.remote(_CallInWorker(fn), None, "engine", None)
                 for actor in pool.pool])

    @property
    def num_workers(self) -> int:
        return int(self._pool.num_actors) if self._pool is not None else 0

    def count(self, node_id: str) -> None:
        with self._lock:
            self.messages_by_node[node_id] += 1

    def reset_counts(self) -> None:
        with self._lock:
            self.messages_by_node = Counter()

    def close(self) -> None:
        """Kill this pool's actors (by handle; nothing else on the cluster is touched)."""
        import ray

        pool, self._pool = self._pool, None
        if pool is None or not ray.is_initialized():
            return
        for actor in [*pool.pool, *pool._future_to_actor.values()]:
            with contextlib.suppress(Exception):  # an actor that is gone already
                ray.kill(actor)


def session_backend(pool: EnginePool) -> type:
    """Flower's ``RayBackend`` taking its actors from ``pool`` and leaving Ray running."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    class SessionRayBackend(RayBackend):  # type: ignore[misc]
        def build(self, app_fn: Callable[[], Any]) -> None:
            self.pool = pool.pool_for(self.client_resources, self.actor_kwargs)
            self.app_fn = _NodeTaggedApp(app_fn)  # type: ignore[assignment]

        def process_message(self, message: Any, context: Any) -> tuple[Any, Any]:
            reply, updated = super().process_message(message, context)
            record = updated.state.pop(ENGINE_RECORD, None)
            if record is not None:
                pool.count(str(record.get(NODE_ID_KEY, "")))
            listener = pool.listener
            if listener is not None:
                listener(site_reply(message, reply, pool.request_record))
            return reply, updated

        def terminate(self) -> None:
            """The session ends actors and Ray, not the run."""

    return SessionRayBackend


@contextmanager
def session_engine(pool: EnginePool) -> Iterator[None]:
    """Inside this block Flower's simulation engine uses ``pool``'s session backend."""
    from flwr.server.superlink.fleet.vce.backend import supported_backends

    saved = supported_backends["ray"]
    supported_backends["ray"] = session_backend(pool)
    try:
        yield
    finally:
        supported_backends["ray"] = saved
