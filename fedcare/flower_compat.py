"""The one place where fedcare reaches past Flower's public API (written for flwr 1.23.0).

What lives here, and why:

* :func:`run_site_worker`: a hospital site's ClientApp worker. Flower's own
  ``run_clientapp`` installs whatever bundle (FAB) the SuperLink serves, puts it first on
  the import path and loads the ClientApp the bundle names: the consortium decides what
  code runs on patient data. This worker pulls the same inputs over the SuperNode's
  ClientAppIo API but never installs, extracts or imports anything from the bundle: it
  calls the ClientApp of the fedcare installed at the site, and tells it (through the
  message's node config) the bundle's hash and every reason the bundle is not acceptable
  (:func:`bundle_problems`), so that the site's own policy code refuses before any data
  file is opened.
* :class:`ReplyPoller`: a ``send_and_receive`` with a short pull interval (Flower's gRPC
  grid sleeps a fixed 3 s between pulls).
* :class:`EnginePool` and :func:`session_backend`: Flower's Ray backend kept alive for
  many simulations. Flower's ``RayBackend`` creates its actors for one run and ends the
  Ray session after it (``ray.shutdown``); a sweep of 100 cells paid Ray's start and
  TensorFlow's import in every worker 100 times. The session backend takes its actors
  from a pool the caller owns (:mod:`fedcare.research.cluster`), and records on which
  Ray node each site message ran (a record in the context's state, removed again before
  Flower stores the context).
* :func:`run_superlink`: Flower's SuperLink with one ordering fix. Its Fleet API stores a
  site's reply in the link state *before* it registers the reply's object tree; a
  ServerApp pull that falls between the two loses the reply for good (the SuperLink
  deletes the instruction and answers "Message Unavailable"). Flower's 3 s pull makes
  that rare; fedcare's short pull made it visible. The fix registers the tree first.

Everything else in fedcare uses Flower's public API. On another Flower version
:func:`check_flower_version` fails loudly instead of misbehaving quietly.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import sys
import threading
import time
import tomllib
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: The Flower release this module was written and tested against.
FLOWER_VERSION = "1.23.0"
#: The ClientApp a fedcare bundle must name: the site runs its installed copy of it.
CLIENTAPP_COMPONENT = "fedcare.client.app:app"
#: Node-config keys the worker adds to every message's context (site-local, never sent).
BUNDLE_HASH_KEY = "bundle-hash"
BUNDLE_PROBLEMS_KEY = "bundle-problems"
PROBLEM_SEPARATOR = "\n"
#: Bytes a bundle may hold once unpacked (Flower caps the packed FAB at 10 MB).
MAX_BUNDLE_UNPACKED = 64 * 1024 * 1024
PACKAGE = "fedcare"
#: Files that carry code in a bundle (Flower ships **/*.py, **/*.toml, **/*.md).
CODE_SUFFIX = ".py"
MAX_LISTED_FILES = 5


class FlowerVersionError(RuntimeError):
    """The installed Flower is not the release this seam was written for."""


def check_flower_version() -> str:
    import flwr

    version = str(getattr(flwr, "__version__", "unknown"))
    if version != FLOWER_VERSION:
        raise FlowerVersionError(
            f"flower_compat: flwr must be {FLOWER_VERSION} (this module reaches into its "
            f"internals); got {version}. Re-check every function in fedcare/flower_compat.py "
            "against the new release before changing the pin.")
    return version


@cache
def installed_code() -> dict[str, str]:
    """sha256 of every Python file of the fedcare installed here, by bundle path."""
    root = Path(__file__).resolve().parent
    return {f"{PACKAGE}/{path.relative_to(root).as_posix()}":
            hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob(f"*{CODE_SUFFIX}"))
            if "__pycache__" not in path.parts}


def _listed(paths: list[str]) -> str:
    shown = ", ".join(paths[:MAX_LISTED_FILES])
    more = len(paths) - MAX_LISTED_FILES
    return shown + (f" and {more} more" if more > 0 else "")


def bundle_problems(content: bytes, installed: Mapping[str, str] | None = None) -> list[str]:
    """Every reason a bundle does not match the fedcare installed at this site.

    The bundle is read as data (zip directory, ``pyproject.toml`` as TOML, file hashes):
    nothing in it is extracted, installed or imported. It must name fedcare's ClientApp,
    and every ``fedcare/*.py`` it carries must equal the installed file (the consortium's
    release and the site's are the same code). Other files (tests, docs) are never
    imported at a site and are not compared.
    """
    installed = installed_code() if installed is None else installed
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        members = [m for m in archive.infolist() if not m.is_dir()]
        if sum(m.file_size for m in members) > MAX_BUNDLE_UNPACKED:
            return [f"bundle: unpacked size must be <= {MAX_BUNDLE_UNPACKED} bytes; got more"]
        files = {m.filename: archive.read(m) for m in members}
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as err:
        return [f"bundle: must be a readable Flower app bundle (zip); got {type(err).__name__}"]
    problems: list[str] = []
    try:
        project = tomllib.loads(files.get("pyproject.toml", b"").decode("utf-8"))
        component = project["tool"]["flwr"]["app"]["components"]["clientapp"]
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        component = None
    if component != CLIENTAPP_COMPONENT:
        problems.append(f"bundle: clientapp must be {CLIENTAPP_COMPONENT!r} (this site runs "
                        f"only its installed fedcare); got {component!r}")
    carried = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()
               if name.startswith(f"{PACKAGE}/") and name.endswith(CODE_SUFFIX)}
    differ = sorted(n for n, digest in carried.items() if installed.get(n) != digest)
    if differ:
        problems.append(f"bundle: fedcare code must equal the fedcare installed at this site; "
                        f"got {len(differ)} file(s) that differ or are not installed here: "
                        f"{_listed(differ)}")
    return problems


@dataclass(frozen=True)
class BundleVerdict:
    """What the worker tells the installed ClientApp about a message's bundle."""

    bundle_hash: str
    problems: tuple[str, ...]

    def node_config(self) -> dict[str, str]:
        return {BUNDLE_HASH_KEY: self.bundle_hash,
                BUNDLE_PROBLEMS_KEY: PROBLEM_SEPARATOR.join(self.problems)}


def judge_bundle(fab_content: bytes | None, declared_hash: str) -> BundleVerdict:
    """Hash the bundle ourselves (never trust the declared hash alone) and list problems."""
    if not fab_content:
        return BundleVerdict(declared_hash, ("bundle: the SuperNode must hand the site the "
                                             "run's bundle; got none",))
    digest = hashlib.sha256(fab_content).hexdigest()
    problems = bundle_problems(fab_content)
    if declared_hash and declared_hash != digest:
        problems.append(f"bundle: its hash must be the one the run declares; got {digest} "
                        f"for declared {declared_hash}")
    return BundleVerdict(digest, tuple(problems))


@dataclass
class _VerdictCache:
    """One verdict per bundle hash: a run's messages all carry the same bundle."""

    verdicts: dict[str, BundleVerdict]

    def get(self, fab_content: bytes | None, declared_hash: str) -> BundleVerdict:
        key = hashlib.sha256(fab_content).hexdigest() if fab_content else declared_hash
        if key not in self.verdicts:
            self.verdicts[key] = judge_bundle(fab_content, declared_hash)
            verdict = self.verdicts[key]
            if verdict.problems:
                logger.warning("bundle %s is not acceptable here: %s", key[:12],
                               "; ".join(verdict.problems))
            else:
                logger.info("bundle %s matches the fedcare installed at this site", key[:12])
        return self.verdicts[key]


def serve_one_message(clientappio_address: str, token: str, app: Any,
                      verdicts: _VerdictCache) -> None:
    """Pull one message over ClientAppIo, answer it with the installed ``app``, push back.

    Flower's ``run_clientapp`` minus the FAB install and the app loading: the bundle is
    only hashed and inspected.
    """
    import grpc
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode
    from flwr.common.grpc import create_channel
    from flwr.common.retry_invoker import _make_simple_grpc_retry_invoker, _wrap_stub
    from flwr.proto.clientappio_pb2_grpc import ClientAppIoStub
    from flwr.supernode.runtime.run_clientapp import (
        pull_clientappinputs,
        push_clientappoutputs,
    )

    channel = create_channel(server_address=clientappio_address, insecure=True)
    try:
        stub = ClientAppIoStub(channel)
        _wrap_stub(stub, _make_simple_grpc_retry_invoker())
        message, context, run, fab = pull_clientappinputs(stub=stub, token=token)
        verdict = verdicts.get(fab.content if fab else None, run.fab_hash)
        context.node_config.update(verdict.node_config())
        try:
            reply = app(message=message, context=context)
        except Exception as err:
            logger.exception("the site's ClientApp raised")
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                  reason=f"{type(err).__name__}: {err}"), reply_to=message)
        push_clientappoutputs(stub=stub, token=token, message=reply, context=context)
    except grpc.RpcError as err:
        logger.error("ClientAppIo gRPC error: %s", err)
    finally:
        channel.close()


def run_site_worker(clientappio_address: str, app_loader: Callable[[], Any]) -> None:
    """Serve this site's messages in this process, one at a time, until stopped.

    Flower's own SuperExec loop (poll the SuperNode's ClientAppIo API for a token) with a
    plugin that answers each message with ``app_loader()`` (the installed ClientApp),
    in this process: TensorFlow is imported and the training step compiled once per site.
    """
    from flwr.proto.clientappio_pb2_grpc import ClientAppIoStub
    from flwr.supercore.superexec.plugin import ClientAppExecPlugin
    from flwr.supercore.superexec.run_superexec import run_superexec

    check_flower_version()
    app = app_loader()  # warm: TensorFlow and the app, once
    verdicts = _VerdictCache({})

    class InstalledClientApp(ClientAppExecPlugin):  # type: ignore[misc]
        def launch_app(self, token: str, run_id: int) -> None:
            serve_one_message(clientappio_address, token, app, verdicts)

    run_superexec(plugin_class=InstalledClientApp, stub_class=ClientAppIoStub,
                  appio_api_address=clientappio_address)


class ReplyPoller:
    """``Grid.send_and_receive`` with a short pull interval.

    Flower 1.23's gRPC grid sleeps a fixed 3 s between pulls, most of a deployed round
    when sites train in a second; this pushes through the grid's public ``push_messages``
    and pulls every ``interval`` seconds instead.
    """

    def __init__(self, grid: Any, interval: float) -> None:
        if not 0 < interval <= 3:
            raise ValueError(f"grid: pull interval must be in (0, 3] seconds; got {interval}")
        self._grid = grid
        self._interval = interval

    def send_and_receive(self, messages: Iterable[Any], *,
                         timeout: float | None = None) -> list[Any]:
        pending = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Any] = []
        while pending and (end is None or time.monotonic() < end):
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if pending:
                time.sleep(self._interval)
        return replies


def deployment_poller(grid: Any, interval: float) -> ReplyPoller | None:
    """A short-interval poller for a deployed run's gRPC grid; ``None`` in simulation,
    whose in-memory grid already polls fast (fedcare.simulations.engine)."""
    from flwr.server.grid.grpc_grid import GrpcGrid

    return ReplyPoller(grid, interval) if isinstance(grid, GrpcGrid) else None


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


def _register_objects_first(push_messages: Callable[..., Any]) -> Callable[..., Any]:
    from flwr.supercore.object_store.utils import store_mapping_and_register_objects

    def push_registered(request: Any, state: Any, store: Any) -> Any:
        # Registering is idempotent (Flower's handler registers again, changing nothing).
        store_mapping_and_register_objects(store, request=request)
        return push_messages(request=request, state=state, store=store)

    return push_registered


def run_superlink(argv: Sequence[str]) -> None:
    """``flower-superlink ARGV`` in this process, with the reply-ordering fix above."""
    check_flower_version()
    from flwr.server.app import run_superlink as flower_superlink
    from flwr.server.superlink.fleet.message_handler import message_handler

    message_handler.push_messages = _register_objects_first(  # type: ignore[assignment]
        message_handler.push_messages)
    sys.argv = ["flower-superlink", *argv]
    flower_superlink()


if __name__ == "__main__":  # python -m fedcare.flower_compat superlink ARGS
    if sys.argv[1:2] != ["superlink"]:
        raise SystemExit("usage: python -m fedcare.flower_compat superlink [flower-superlink "
                         "arguments]")
    run_superlink(sys.argv[2:])
