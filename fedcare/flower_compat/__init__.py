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
* :func:`run_superlink`: Flower's SuperLink with two ordering fixes. Its Fleet API stores
  a site's reply in the link state *before* it registers the reply's object tree; a
  ServerApp pull that falls between the two loses the reply for good (the SuperLink
  deletes the instruction and answers "Message Unavailable"). Its ServerAppIo API does the
  same with the ServerApp's instructions, which a site polling every 0.1 s can pull in
  that window. Flower's 3 s polls make both rare; fedcare's short polls made them
  visible. The fixes register the tree first. A late reply (a site paused past its
  heartbeats answers a message the SuperLink no longer awaits) is refused with a clear
  status, and registering a message's objects survives a concurrent deletion of an
  object it shares (SQLite's "FOREIGN KEY constraint failed", which ended the site).
  The SuperExec the SuperLink starts runs through :func:`run_superexec` (no TensorFlow,
  a short poll).
* :func:`run_site`: a whole site in one process (Flower's SuperNode, its sleeps capped at
  a fedcare poll interval, and the site worker); a reply the SuperLink refuses is logged
  and dropped instead of ending the site.
* :func:`run_flwr_cli`: Flower's ``flwr`` command without TensorFlow.

Beside this module, the same room holds the other uses of Flower internals:

* :mod:`fedcare.flower_compat.simulation`: Flower's simulation engine run in this process
  (``_run_simulation``) with shorter polls than its fixed 0.1 s;
* :mod:`fedcare.flower_compat.control`: the SuperLink's Control API (list, register and
  unregister SuperNodes) for ``fedcare certs sync``;
* :mod:`fedcare.flower_compat.legacy`: the record keys and converters of Flower's legacy
  SecAgg+ API (site adapter and server workflow), and the bundle build used to hash a project.

Everything else in fedcare uses Flower's public API (``flwr.app``, ``flwr.clientapp``,
``flwr.serverapp``, ``flwr.server``, ``flwr.common``, ``flwr.client.mod``; a test holds every
other module to that). On another Flower version :func:`check_flower_version` fails loudly
instead of misbehaving quietly.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import sys
import threading
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: The Flower release this module was written and tested against.
FLOWER_VERSION = "1.23.0"
#: The ClientApp a fedcare bundle must name: the site runs its installed copy of it.
CLIENTAPP_COMPONENT = "fedcare.site.app:app"
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
#: Bounds of the site's poll interval (Flower's SuperNode sleeps a fixed 3 s).
MIN_POLL_INTERVAL = 0.01
MAX_POLL_INTERVAL = 3.0
#: A site with no message for ACTIVE_WINDOW seconds polls every IDLE_POLL_INTERVAL.
IDLE_POLL_INTERVAL = 3.0
ACTIVE_WINDOW = 60.0
#: Sleeps this long or longer in Flower's loops are polls for new work.
IDLE_SLEEP = 1.0
TENSORFLOW = "tensorflow"
RAY = "ray"
TELEMETRY_ENV = "FLWR_TELEMETRY_ENABLED"
SUPEREXEC = "flower-superexec"
SERVERAPP_COMMAND = "flwr-serverapp"
#: The node id Flower's SuperLink uses for the errors it writes itself.
SUPERLINK_NODE_ID = 1
#: Seconds a site may take to stop once told to (SIGTERM/SIGINT). Flower's SuperNode
#: deactivates itself at the SuperLink on the way out, retrying without limit: with the
#: SuperLink gone too, a stopped site kept retrying for ever.
STOP_GRACE = 10.0
#: Seconds between the consortium SuperExec's looks for a new run (Flower's own: 1 s;
#: shorter costs the SuperLink CPU all day for a second saved once per run).
SUPEREXEC_POLL_INTERVAL = 1.0
#: First wait before pulling again an object that is not there yet, and the longest
#: wait (Flower: 1 s, doubling to 10 s, at most 500 tries). The objects of a message
#: arrive within a second or two; a doubling wait that had reached 0.64 s when they did
#: cost a site most of that, twice a round.
FAST_PULL_BACKOFF = 0.02
FAST_PULL_BACKOFF_CAP = 0.1
#: Seconds a pull keeps retrying objects that do not come (a sender that died mid-push)
#: instead of a try limit: Flower's 500 tries of up to 10 s waited ~83 min, and 500 tries
#: of 0.1 s would give up after 50 s on a large model still being pushed.
FAST_PULL_MAX_TIME = 600.0
#: Seconds a site declares between its heartbeats (Flower: 30; its minimum, 10). The
#: SuperLink counts a node gone after twice that without one: a killed site was listed
#: online for up to 60 s, so the round after the one it died in was sent to it too and
#: waited until then (58 s after the kill, runbook rehearsal 2026-12-01). With 10 s it is
#: gone within 20 s, before a round-timeout of 30 s. Flower sends one every ~4 s then.
SITE_HEARTBEAT_SECONDS = 10
#: Why the SuperLink refuses a site's late reply (the gRPC status details the site logs).
LATE_REPLY_REFUSED = ("reply refused by the SuperLink: message {message} it answers is no "
                      "longer awaited (the node was reported gone to the ServerApp after "
                      "missed heartbeats, the message expired, or its run moved on)")
#: Attempts at registering a message's objects when a concurrent deletion of an object it
#: shares (content-addressed) breaks the SQLite foreign key in between.
REGISTER_ATTEMPTS = 3


class FlowerVersionError(RuntimeError):
    """The installed Flower is not the release this seam was written for."""


def check_flower_version() -> str:
    import flwr

    version = str(getattr(flwr, "__version__", "unknown"))
    if version != FLOWER_VERSION:
        raise FlowerVersionError(
            f"flower_compat: flwr must be {FLOWER_VERSION} (this module reaches into its "
            f"internals); got {version}. Re-check every function in fedcare/flower_compat/ "
            "against the new release before changing the pin.")
    return version


@cache
def installed_code() -> dict[str, str]:
    """sha256 of every Python file of the fedcare installed here, by bundle path."""
    root = Path(__file__).resolve().parents[1]  # fedcare/, above this flower_compat/
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
                      verdicts: _VerdictCache) -> bool:
    """Pull one message over ClientAppIo, answer it with the installed ``app``, push back;
    whether the reply was handed to the SuperNode.

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
        return True
    except grpc.RpcError as err:
        logger.error("ClientAppIo gRPC error: %s", err)
        return False
    finally:
        channel.close()


def _serve_or_log(clientappio_address: str, token: str, app: Any,
                  verdicts: _VerdictCache, abandoned: Abandoned | None = None,
                  run_id: int = 0) -> None:
    """:func:`serve_one_message`, logging whatever stops it (e.g. the objects of a
    message never arrived): the worker thread must outlive one message it cannot serve,
    or the site stops answering for good while its SuperNode still looks connected.
    ``abandoned`` notes ``run_id`` when no reply went to the SuperNode, which waits for
    one."""
    from flwr.common.inflatable_utils import (
        ObjectIdNotPreregisteredError,
        ObjectUnavailableError,
    )

    try:
        served = serve_one_message(clientappio_address, token, app, verdicts)
    except (ObjectIdNotPreregisteredError, ObjectUnavailableError) as err:
        logger.warning("this site skipped a message whose contents never arrived (its run "
                       "ended meanwhile): %s; it goes on with the next", err)
        served = False
    except Exception:
        logger.exception("this site could not serve a message; it goes on with the next")
        served = False
    if not served and abandoned is not None:
        abandoned.add(run_id)


class PollPace:
    """How long a site waits between polls: ``fast`` while a run is active (a message
    handled within the last ``window`` seconds), ``idle`` otherwise, so that short polls
    cost CPU (the site's and the SuperLink's) only while there is work."""

    def __init__(self, fast: float, idle: float = IDLE_POLL_INTERVAL,
                 window: float = ACTIVE_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fast = fast
        self.idle = max(idle, fast)
        self.window = window
        self._clock = clock
        self._last = -math.inf

    def mark(self) -> None:
        self._last = self._clock()

    def current(self) -> float:
        return self.fast if self._clock() - self._last < self.window else self.idle


def _serve_messages(clientappio_address: str, app: Any, pace: PollPace,
                    stopping: threading.Event,
                    abandoned: Abandoned | None = None) -> None:
    """Flower's SuperExec loop (ask the SuperNode's ClientAppIo API for a run to serve and
    a token) at ``pace`` instead of every 1 s, answering each message with the installed
    ``app``, until ``stopping`` is set."""
    from flwr.common.grpc import create_channel
    from flwr.common.retry_invoker import _make_simple_grpc_retry_invoker, _wrap_stub
    from flwr.proto.appio_pb2 import ListAppsToLaunchRequest, RequestTokenRequest
    from flwr.proto.clientappio_pb2_grpc import ClientAppIoStub

    verdicts = _VerdictCache({})
    channel = create_channel(server_address=clientappio_address, insecure=True)
    try:
        stub = ClientAppIoStub(channel)
        _wrap_stub(stub, _make_simple_grpc_retry_invoker())
        while not stopping.is_set():
            listed = stub.ListAppsToLaunch(ListAppsToLaunchRequest())
            if listed.run_ids:
                token = stub.RequestToken(RequestTokenRequest(run_id=listed.run_ids[0])).token
                if token:
                    _serve_or_log(clientappio_address, token, app, verdicts, abandoned,
                                  listed.run_ids[0])
                    pace.mark()
                    continue
            stopping.wait(pace.current())
    finally:
        channel.close()


def run_site_worker(clientappio_address: str, app_loader: Callable[[], Any],
                    interval: float = 1.0) -> None:
    """Serve this site's messages in this process, one at a time, until stopped (for a
    SuperNode running in another process; :func:`run_site` runs both in one)."""
    block_ray()
    check_flower_version()
    use_fast_object_pulls(WORKER)
    app = app_loader()  # warm: TensorFlow and the app, once
    _serve_messages(clientappio_address, app, PollPace(interval, interval),
                    threading.Event())


class _PollClock:
    """Stands in for the ``time`` module inside a Flower loop. A sleep of
    :data:`IDLE_SLEEP` seconds or more is a poll for new work (the SuperNode's 3 s pull,
    the SuperExec's 1 s): it lasts ``pace.current()``. A shorter one is a wait inside
    work (the SuperNode's 0.5 s wait for the reply): it marks the pace active and lasts
    at most ``pace.fast``. Everything else is the real ``time``."""

    def __init__(self, pace: PollPace) -> None:
        self.pace = pace

    def sleep(self, seconds: float) -> None:
        if seconds >= IDLE_SLEEP:
            time.sleep(min(seconds, self.pace.current()))
        else:
            self.pace.mark()
            time.sleep(min(seconds, self.pace.fast))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _with_fast_backoff(pull: Callable[..., Any]) -> Callable[..., Any]:
    """Flower's object pull (``pull_objects`` or ``pull_and_inflate_object_from_tree``)
    retrying an object that is not there yet after :data:`FAST_PULL_BACKOFF` seconds,
    doubling to :data:`FAST_PULL_BACKOFF_CAP`, instead of 1 s doubling to 10 s. A
    message is announced before all its objects are stored (the SuperNode stores an
    instruction before pulling its arrays; a site pushes its reply before its arrays): a
    reader polling every 0.1 s finds it in that window and, at Flower's backoff, waited
    1-3 s each time."""
    if getattr(pull, "fedcare_fast_backoff", False):
        return pull

    def fast(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("initial_backoff", FAST_PULL_BACKOFF)
        kwargs.setdefault("backoff_cap", FAST_PULL_BACKOFF_CAP)
        kwargs.setdefault("max_tries_per_object", None)
        kwargs.setdefault("max_time", FAST_PULL_MAX_TIME)
        return pull(*args, **kwargs)

    fast.fedcare_fast_backoff = True  # type: ignore[attr-defined]
    return fast


#: The object pulls of each kind of fedcare process (:func:`use_fast_object_pulls`):
#: Flower module and function name.
_SUPERNODE_PULL = ("flwr.supernode.start_client_internal", "pull_objects")
_WORKER_PULL = ("flwr.supernode.runtime.run_clientapp", "pull_and_inflate_object_from_tree")
_GRID_PULL = ("flwr.server.grid.grpc_grid", "pull_objects")
#: A whole site (SuperNode + worker), a site worker alone, a ServerApp.
SITE, WORKER, SERVERAPP = "site", "worker", "serverapp"
_PULLS_OF = {SITE: (_SUPERNODE_PULL, _WORKER_PULL), WORKER: (_WORKER_PULL,),
             SERVERAPP: (_GRID_PULL,)}


def use_fast_object_pulls(side: str) -> None:
    """Shorter retry waits in the Flower object pulls of this process's ``side`` only:
    ``"site"`` the SuperNode's pull from the SuperLink and the site worker's pull from its
    SuperNode, ``"worker"`` the latter alone, ``"serverapp"`` the ServerApp grid's pull of
    the sites' replies. A process imports no Flower module of another side for this."""
    import importlib

    if side not in _PULLS_OF:
        raise ValueError(f"flower_compat: side must be one of {sorted(_PULLS_OF)}; "
                         f"got {side!r}")
    for module_name, function in _PULLS_OF[side]:
        module = importlib.import_module(module_name)
        setattr(module, function, _with_fast_backoff(getattr(module, function)))


def check_poll_interval(interval: float) -> float:
    if not MIN_POLL_INTERVAL <= interval <= MAX_POLL_INTERVAL:
        raise ValueError(f"supernode: poll-interval must be in [{MIN_POLL_INTERVAL}, "
                         f"{MAX_POLL_INTERVAL}] seconds; got {interval}")
    return interval


def load_node_key(private_key: Path) -> tuple[Any, Any]:
    """The site's SuperNode authentication key pair (an EC key in OpenSSH format)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    key = load_ssh_private_key(private_key.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"supernode: private key must be an EC key; got "
                         f"{type(key).__name__} in {private_key}")
    return key, key.public_key()


@dataclass(frozen=True, kw_only=True)
class SiteNode:
    """What Flower's SuperNode needs, and fedcare's settings for it."""

    superlink: str
    node_config: Mapping[str, str]
    clientappio_address: str
    root_certificates: bytes | None  # None only when insecure
    private_key: Path | None         # None only when insecure
    poll_interval: float
    #: This site's own Flower folder (its copy of each run's bundle). Flower's default,
    #: ``$FLWR_HOME``, is shared by every SuperNode of a user: on a host with several
    #: sites, one site rewriting a bundle while another reads it handed the reader an
    #: empty bundle, and that site refused the run (Flower writes it in place).
    flower_dir: Path | None = None


def run_site(node: SiteNode, app_loader: Callable[[], Any],
             loading: Callable[[], AbstractContextManager[Any]] = nullcontext) -> None:
    """A whole site in this one process: Flower's SuperNode in the main thread (it
    installs signal handlers, which only the main thread may) with its sleeps capped at
    ``poll_interval``, and the installed ClientApp served by a thread, so the site pays
    one TensorFlow import. Flower, TensorFlow (which ``import flwr`` loads) and the app
    load inside ``loading()``. Returns (or raises) when the SuperNode stops: it was
    refused (e.g. its key is not registered) or told to stop."""
    block_ray()
    check_poll_interval(node.poll_interval)
    import faulthandler
    import signal

    with loading():
        check_flower_version()
        import flwr.supernode.start_client_internal as supernode
        from flwr.common.constant import ISOLATION_MODE_PROCESS, TRANSPORT_TYPE_GRPC_RERE

        app = app_loader()  # TensorFlow and the app, once, before the site connects
    # `kill -USR1 PID` writes every thread's stack to stderr (the site's log): a site
    # that stops polling can be diagnosed without stopping it
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    stopping = threading.Event()
    abandoned = Abandoned()  # runs whose message the worker gave up on: no reply comes
    pace = PollPace(node.poll_interval)
    worker = threading.Thread(
        target=_serve_messages, name="fedcare-site-worker", daemon=True,
        args=(node.clientappio_address, app, pace, stopping, abandoned))
    supernode.time = _PollClock(pace)  # type: ignore[assignment]
    supernode._push_messages = _surviving_refused_replies(  # type: ignore[assignment]
        supernode._push_messages, abandoned)
    supernode._pull_and_store_message = _forgetting_half_received(  # type: ignore[assignment]
        supernode._pull_and_store_message)
    use_fast_object_pulls(SITE)
    use_heartbeat_interval(SITE_HEARTBEAT_SECONDS)
    supernode.register_signal_handlers = _with_bounded_stop(  # type: ignore[assignment]
        supernode.register_signal_handlers)
    keys = None if node.private_key is None else load_node_key(node.private_key)
    if node.flower_dir is not None:
        node.flower_dir.mkdir(parents=True, exist_ok=True)  # Flower ignores a missing one
    worker.start()
    try:
        supernode.start_client_internal(
            server_address=node.superlink, node_config=dict(node.node_config),
            flwr_path=node.flower_dir,
            root_certificates=node.root_certificates,
            insecure=node.root_certificates is None, transport=TRANSPORT_TYPE_GRPC_RERE,
            # retries without limit once started: a site rides out a SuperLink restart
            # (the bounded attempts at start are fedcare.deploy.probe's)
            authentication_keys=keys, max_retries=None,
            isolation=ISOLATION_MODE_PROCESS,
            clientappio_api_address=node.clientappio_address)
    finally:
        stopping.set()


def use_heartbeat_interval(seconds: int) -> None:
    """The SuperNode of this process declares ``seconds`` between heartbeats and sends
    them at Flower's pace for it. Flower 1.23 reads one module constant in two modules
    (the connection's requests, the sender's sleep); both are set."""
    import flwr.client.grpc_rere_client.connection as connection
    import flwr.common.heartbeat as heartbeat
    from flwr.common.constant import HEARTBEAT_MAX_INTERVAL, HEARTBEAT_MIN_INTERVAL

    if not HEARTBEAT_MIN_INTERVAL <= seconds <= HEARTBEAT_MAX_INTERVAL:
        raise ValueError(f"flower_compat: a heartbeat interval must be in "
                         f"[{HEARTBEAT_MIN_INTERVAL}, {HEARTBEAT_MAX_INTERVAL}] s; got {seconds}")
    connection.HEARTBEAT_DEFAULT_INTERVAL = seconds  # type: ignore[attr-defined]
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = seconds  # type: ignore[attr-defined]


def _forgetting_half_received(pull_and_store: Callable[..., int | None]
                              ) -> Callable[..., int | None]:
    """Flower's SuperNode ``_pull_and_store_message``, forgetting a message that arrived
    only in part. Flower stores an instruction in the node's state *before* it pulls the
    instruction's objects; when its run ends meanwhile (a site slow or paused at the end
    of a run: the SuperLink then refuses the object pulls) Flower logs "not in RUNNING
    status" and keeps the half-received message. The site worker then takes it up and
    waits up to :data:`FAST_PULL_MAX_TIME` for objects that never come, while the
    SuperNode pulls the next run's messages and waits for replies the worker does not
    give: the next run's pre-flight goes unanswered. Here the message and its objects
    are removed, with a warning."""

    def pull_or_forget(**kwargs: Any) -> int | None:
        state, store = kwargs["state"], kwargs["object_store"]
        held = getattr(state, "msg_store", None)
        before = set(held) if held is not None else set()
        run_id = pull_and_store(**kwargs)
        if run_id is None and held is not None:
            partial = sorted(mid for mid, entry in list(held.items()) if mid not in before
                             and not entry.message.metadata.reply_to_message_id)
            if partial:
                state.delete_messages(message_ids=partial)
                for message_id in partial:
                    store.delete(message_id)
                logger.warning("message(s) %s arrived only in part (the run ended while this "
                               "site was receiving them): dropped; the site waits for the "
                               "next message", ", ".join(partial))
        return run_id

    return pull_or_forget


class Abandoned:
    """The runs whose message the site worker gave up on (no reply will come), noted by
    the worker thread and taken by the SuperNode's loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: set[int] = set()

    def add(self, run_id: int) -> None:
        with self._lock:
            self._runs.add(run_id)

    def take(self, awaited: set[int]) -> bool:
        """Whether one of the ``awaited`` runs was given up on; forgets the others
        (stale: a message of another run, e.g. one forgotten half-received)."""
        with self._lock:
            hit = bool(self._runs & awaited)
            self._runs.clear()
            return hit


def _reply_or_abandoned(state: Any, abandoned: Abandoned,
                        interval: float = MIN_POLL_INTERVAL) -> bool:
    """Wait until the node's state holds a reply (True) or the worker gave up on the
    message the SuperNode waits for (False)."""
    held = getattr(state, "msg_store", None)
    if held is None:  # not Flower 1.23's in-memory node state: Flower's own wait
        return True
    while True:
        entries = [entry.message.metadata for entry in list(held.values())]
        if any(meta.reply_to_message_id for meta in entries):
            return True
        if abandoned.take({meta.run_id for meta in entries}):
            return False
        time.sleep(interval)


def _surviving_refused_replies(push_messages: Callable[..., None],
                               abandoned: Abandoned | None = None
                               ) -> Callable[..., None]:
    """Flower's SuperNode ``_push_messages``, with a reply the SuperLink refuses (a late
    reply to a message it no longer awaits, or any error status other than Flower's
    retried "unavailable") logged and dropped: Flower lets the ``grpc.RpcError`` end the
    SuperNode's loop, and with it the whole site process. Flower's own ``finally`` has
    already removed the reply and its objects; the site goes on pulling messages (its
    heartbeats bring it back online at the SuperLink). Flower waits without limit for
    the reply; when the worker notes in ``abandoned`` that it could not answer the
    message, the wait ends and the site goes on pulling, instead of never pulling again."""
    import grpc

    def push_or_drop(*args: Any, **kwargs: Any) -> None:
        if abandoned is not None and not _reply_or_abandoned(kwargs["state"], abandoned):
            logger.warning("the site worker could not answer the message it was given: no "
                           "reply is sent (the server reports this site for it); the site "
                           "waits for the next message")
            return
        try:
            push_messages(*args, **kwargs)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            details = err.details() if hasattr(err, "details") else str(err)
            logger.warning("this site's reply was not delivered: the SuperLink answered %s: "
                           "%s. The reply is dropped (the run's report names this site for "
                           "that message); the site keeps running and waits for the next "
                           "message", getattr(code, "name", code), details)

    return push_or_drop


def _with_bounded_stop(register: Callable[..., None]) -> Callable[..., None]:
    """Flower's ``register_signal_handlers``, then each stop handler it installed wrapped so
    that the process ends within :data:`STOP_GRACE` seconds of the signal (exit code 0: it
    was asked to stop) even when Flower's graceful exit cannot finish."""
    import os
    import signal

    def register_then_bound(*args: Any, **kwargs: Any) -> None:
        register(*args, **kwargs)
        for signum in (signal.SIGTERM, signal.SIGINT):
            flower_handler = signal.getsignal(signum)
            if not callable(flower_handler):
                continue

            def handler(received: int, frame: Any, _flower: Any = flower_handler) -> None:
                deadline = threading.Timer(STOP_GRACE, os._exit, args=(0,))
                deadline.daemon = True
                deadline.start()
                _flower(received, frame)

            signal.signal(signum, handler)

    return register_then_bound


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
        messages = list(messages)
        ids = list(self._grid.push_messages(messages))
        destination = {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages,
                                                                     strict=False)}
        pending = set(ids)
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Any] = []
        while pending and (end is None or time.monotonic() < end):
            got = [_from_its_site(m, destination) for m in self._grid.pull_messages(pending)]
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if pending:
                time.sleep(self._interval)
        return replies


def _from_its_site(reply: Any, destination: Mapping[str, int]) -> Any:
    """An error the SuperLink writes for a site (node gone, message lost) comes from node
    1, the SuperLink itself; name the site it stands for, so that reports never show an
    invented ``node-1`` site and the site's failure carries Flower's reason."""
    if reply.metadata.src_node_id == SUPERLINK_NODE_ID and reply.has_error():
        site = destination.get(reply.metadata.reply_to_message_id)
        if site is not None:
            reply.metadata.__dict__["_src_node_id"] = site
    return reply


def reported_gone(reply: Any) -> bool:
    """Whether ``reply`` is the SuperLink's word that its site is gone (the node missed
    its heartbeats, e.g. the site process was killed)."""
    from flwr.common.constant import ErrorCode

    return bool(reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE)


def deployment_poller(grid: Any, interval: float) -> ReplyPoller | None:
    """A short-interval poller for a deployed run's gRPC grid; ``None`` in simulation,
    whose in-memory grid already polls fast (fedcare.flower_compat.simulation)."""
    from flwr.server.grid.grpc_grid import GrpcGrid

    if not isinstance(grid, GrpcGrid):
        return None
    use_fast_object_pulls(SERVERAPP)
    return ReplyPoller(grid, interval)


def _register_objects_first(push_messages: Callable[..., Any]) -> Callable[..., Any]:
    from flwr.supercore.object_store.utils import store_mapping_and_register_objects

    def push_registered(request: Any, state: Any, store: Any) -> Any:
        # Registering is idempotent (Flower's handler registers again, changing nothing).
        store_mapping_and_register_objects(store, request=request)
        return push_messages(request=request, state=state, store=store)

    return push_registered


def _refusing_late_replies(push_messages: Callable[..., Any]) -> Callable[..., Any]:
    """The Fleet API's ``PushMessages`` refusing, with a clear gRPC status
    (``FAILED_PRECONDITION``, :data:`LATE_REPLY_REFUSED`), a reply to a message the
    SuperLink no longer holds: a site paused past its heartbeats (load, SIGSTOP) whose
    node the ServerApp was told is gone answers after the round moved on. Flower would
    register the reply's objects, drop the reply itself with an error in its own log
    only, and tell the site "sent successfully"."""
    import grpc

    def push_or_refuse(servicer: Any, request: Any, context: Any) -> Any:
        if request.messages_list:
            meta = request.messages_list[0].metadata
            awaited = getattr(servicer.state_factory.state(), "get_valid_message_ins", None)
            if awaited is not None and awaited(meta.reply_to_message_id) is None:
                logger.warning("late reply from node %s refused: message %s is no longer "
                               "awaited", meta.src_node_id, meta.reply_to_message_id)
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              LATE_REPLY_REFUSED.format(message=meta.reply_to_message_id))
        return push_messages(servicer, request, context)

    return push_or_refuse


def _registering_despite_deletions(preregister: Callable[..., list[str]]
                                   ) -> Callable[..., list[str]]:
    """Flower's ``SqliteObjectStore.preregister`` tried again when SQLite reports a broken
    foreign key. It registers a message's objects one transaction per object, children
    first; objects are content-addressed, so a child may be one the store already holds
    for another message, and when that message is deleted between the child's and the
    parent's transaction (the ServerApp confirming other sites' replies as a late one
    arrives), the parent's link to the child fails with ``FOREIGN KEY constraint
    failed``; the gRPC call then ends in an unknown error, which ended the site. Again,
    the missing child is registered anew (the failed transaction was rolled back), and
    the objects still to be pushed are listed again."""
    import sqlite3

    def preregister_again(store: Any, run_id: int, object_tree: Any) -> list[str]:
        for attempt in range(1, REGISTER_ATTEMPTS + 1):
            try:
                return preregister(store, run_id, object_tree)
            except sqlite3.IntegrityError as err:
                if attempt == REGISTER_ATTEMPTS:
                    raise
                logger.warning("object store: registering the objects of %s met an object "
                               "deleted meanwhile (%s); registering again (attempt %d of %d)",
                               object_tree.object_id, err, attempt + 1, REGISTER_ATTEMPTS)
        raise AssertionError("unreachable")

    return preregister_again


def _one_per_thread(create: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A factory method whose result is kept per (factory, thread).

    Flower's SQLite-backed ``LinkStateFactory.state()`` and ``ObjectStoreFactory.store()``
    open a new connection, set its pragmas and run every ``CREATE TABLE IF NOT EXISTS`` on
    each gRPC call: ~1.2 ms of the SuperLink's single interpreter per call, and a round
    phase with 4 sites is ~160 calls (each site's message is ~20 objects, pushed one call
    each, and the ServerApp pulls them one call each). The objects hold nothing but their
    connection, and an sqlite3 connection belongs to the thread that opened it: one per
    gRPC thread serves every call of that thread.
    """
    local = threading.local()

    def kept(factory: Any) -> Any:
        cache: dict[tuple[int, str], Any] = local.__dict__.setdefault("cache", {})
        key = (id(factory), str(getattr(factory, "database", "")))
        found = cache.get(key)
        if found is None:
            found = cache[key] = create(factory)
        return found

    return kept


def fix_superlink() -> None:
    """Install, in this process, the SuperLink fixes of :func:`run_superlink`."""
    from flwr.server.superlink.fleet.grpc_rere.fleet_servicer import FleetServicer
    from flwr.server.superlink.fleet.message_handler import message_handler
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.serverappio.serverappio_servicer import ServerAppIoServicer
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.object_store.sqlite_object_store import SqliteObjectStore

    LinkStateFactory.state = _one_per_thread(LinkStateFactory.state)  # type: ignore[method-assign,assignment]
    ObjectStoreFactory.store = _one_per_thread(  # type: ignore[method-assign,assignment]
        ObjectStoreFactory.store)

    message_handler.push_messages = _register_objects_first(  # type: ignore[assignment]
        message_handler.push_messages)
    ServerAppIoServicer.PushMessages = _register_instruction_objects_first(  # type: ignore[method-assign]
        ServerAppIoServicer.PushMessages)
    FleetServicer.PushMessages = _refusing_late_replies(  # type: ignore[method-assign]
        FleetServicer.PushMessages)
    SqliteObjectStore.preregister = _registering_despite_deletions(  # type: ignore[method-assign]
        SqliteObjectStore.preregister)


def _block(module: str) -> None:
    if sys.modules.get(module) is None:
        sys.modules[module] = None  # type: ignore[assignment]


def block_tensorflow() -> None:
    """Make ``import tensorflow`` fail in this process (ModuleNotFoundError).

    Flower imports TensorFlow opportunistically (``flwr/server/utils/tensorboard.py``:
    ``try: import tensorflow``), ~480 MB, in every process that imports ``flwr.server``:
    the SuperLink and ``flwr run``, which never train. Call before importing Flower.
    """
    _block(TENSORFLOW)


def keep_training_stack_out() -> None:
    """Make ``import tensorflow`` and ``import ray`` fail in this process: one that
    speaks to Flower but trains and simulates nothing (the SuperLink, its SuperExec,
    ``flwr run``, the operator's ``certs sync`` and ``superlink status``, the deployment
    benchmark's driver). Flower would import both when it loads (~480 MB, seconds of CPU).
    Call before importing Flower."""
    block_tensorflow()
    block_ray()


def import_flower_without_tensorflow() -> None:
    """Import Flower with TensorFlow kept out while Flower's modules load, then allowed.

    Two Flower modules try to import TensorFlow when they load
    (``flwr.server.utils.tensorboard``, ``flwr.simulation.ray_transport.utils``): ~420 MB
    and seconds of CPU in a process that never trains, such as a simulation's driver (the
    ServerApp, Ray's head, the report and the audit; the sites train in Ray's workers, which
    import TensorFlow themselves). Afterwards ``import tensorflow`` works as usual for code
    that needs it (a pooled baseline); only those two modules saw it absent, as in the
    consortium's processes. Does nothing once Flower or TensorFlow is loaded."""
    import importlib

    if "flwr" in sys.modules or TENSORFLOW in sys.modules:
        return
    sys.modules[TENSORFLOW] = None  # type: ignore[assignment]
    try:
        for module in ("flwr", "flwr.server.utils.tensorboard",
                       "flwr.simulation.ray_transport.utils"):
            importlib.import_module(module)
    finally:
        if TENSORFLOW in sys.modules and sys.modules[TENSORFLOW] is None:
            del sys.modules[TENSORFLOW]


def block_ray() -> None:
    """Make ``import ray`` fail in this process, and Flower see Ray as not installed.

    ``import flwr`` imports its simulation engine, which imports Ray when it is installed
    (``flwr[simulation]``): ~28 MB in every deployed process, none of which simulates.
    Call before importing Flower (a process that already imported it keeps Ray)."""
    _block(RAY)


#: How the consortium's SuperExec starts a run's ServerApp: Flower's ``flwr-serverapp``
#: with TensorFlow and Ray kept out while Flower's modules load (Flower imports both
#: opportunistically; fedcare's ServerApp needs neither: it writes its ``.keras`` files
#: without TensorFlow, fedcare.common.mlp), then allowed again, so a ServerApp that does
#: import one still works. No fedcare module is imported here: Flower loads the ServerApp
#: from the run's bundle, as ``flwr-serverapp`` does. ``sys.argv[1]`` is the command name.
SERVERAPP_IMPORTS = (
    "import sys; kept_out = [m for m in ('tensorflow', 'ray') if m not in sys.modules]; "
    "sys.modules.update(dict.fromkeys(kept_out)); "
    "from flwr.server.serverapp import flwr_serverapp; "
    "[sys.modules.pop(m) for m in kept_out]")
SERVERAPP_BOOTSTRAP = (
    f"{SERVERAPP_IMPORTS}; "
    "sys.argv = sys.argv[1:]; sys.exit(flwr_serverapp())")


def _register_instruction_objects_first(push_messages: Callable[..., Any]
                                        ) -> Callable[..., Any]:
    """The same fix on the ServerApp side: Flower's ServerAppIo ``PushMessages`` stores an
    instruction in the link state before it registers the instruction's object tree; a
    site pulling in between gets "Object ... not found", the SuperLink deletes the
    instruction and the ServerApp later reads "Message Unavailable" from node 1 (the
    SuperLink). A site polling every 0.1 s hits that window; Flower's 3 s rarely did."""
    from flwr.supercore.object_store.utils import store_mapping_and_register_objects

    def push_registered(servicer: Any, request: Any, context: Any) -> Any:
        store_mapping_and_register_objects(servicer.objectstore_factory.store(),
                                           request=request)
        return push_messages(servicer, request, context)

    return push_registered


def run_superlink(argv: Sequence[str]) -> None:
    """``flower-superlink ARGV`` in this process, with the fixes of :func:`fix_superlink`
    and without TensorFlow and Ray."""
    keep_training_stack_out()
    check_flower_version()
    import flwr.server.app as superlink_app
    from flwr.server.app import run_superlink as flower_superlink

    fix_superlink()
    superlink_app.subprocess = _own_superexec()  # type: ignore[assignment]
    sys.argv = ["flower-superlink", *argv]
    flower_superlink()


class _RunsThroughFedcare:
    """Stands in for the ``subprocess`` module inside a Flower module that starts Flower's
    commands by name: each command in ``commands`` starts as the given argv prefix
    instead, followed by the same arguments; everything else is the real ``subprocess``."""

    def __init__(self, commands: Mapping[str, Sequence[str]]) -> None:
        self.commands = commands

    def Popen(self, args: Sequence[str], *rest: Any, **kwargs: Any) -> Any:
        import subprocess

        if args and args[0] in self.commands:
            args = [*self.commands[args[0]], *args[1:]]
        return subprocess.Popen(args, *rest, **kwargs)

    def __getattr__(self, name: str) -> Any:
        import subprocess

        return getattr(subprocess, name)


def _own_superexec() -> _RunsThroughFedcare:
    """The SuperLink's SuperExec (``flower-superexec ...``, which starts each run's
    ServerApp) becomes ``python -m fedcare.flower_compat superexec ...``: no TensorFlow,
    short poll."""
    return _RunsThroughFedcare({SUPEREXEC: [sys.executable, "-m", "fedcare.flower_compat",
                                            "superexec"]})


def _own_serverapp() -> _RunsThroughFedcare:
    """The SuperExec's ServerApp (``flwr-serverapp ...``) starts through
    :data:`SERVERAPP_BOOTSTRAP`: no TensorFlow, no Ray."""
    return _RunsThroughFedcare({SERVERAPP_COMMAND: [sys.executable, "-c", SERVERAPP_BOOTSTRAP,
                                                    SERVERAPP_COMMAND]})


def run_superexec(argv: Sequence[str]) -> None:
    """``flower-superexec ARGV`` without TensorFlow, polling every
    :data:`SUPEREXEC_POLL_INTERVAL` seconds for a new run (Flower's own: 1 s), starting
    each ServerApp without TensorFlow and Ray (:data:`SERVERAPP_BOOTSTRAP`)."""
    keep_training_stack_out()
    check_flower_version()
    import flwr.supercore.superexec.plugin.base_exec_plugin as exec_plugin
    import flwr.supercore.superexec.run_superexec as superexec
    from flwr.supercore.cli import flower_superexec

    exec_plugin.subprocess = _own_serverapp()  # type: ignore[assignment]

    superexec.time = _PollClock(PollPace(SUPEREXEC_POLL_INTERVAL, SUPEREXEC_POLL_INTERVAL))  # type: ignore[assignment]
    sys.argv = [SUPEREXEC, *argv]
    flower_superexec()


def run_flwr_cli(argv: Sequence[str]) -> int:
    """Flower's ``flwr`` command (``flwr run``, ``flwr ls``, ...) without TensorFlow and
    with telemetry off unless the caller turned it on."""
    import os

    # a simulation (`flwr run . local-sim`) runs in its own flower-simulation
    keep_training_stack_out()
    os.environ.setdefault(TELEMETRY_ENV, "0")
    check_flower_version()
    from flwr.cli.app import app as flwr_app

    sys.argv = ["flwr", *argv]
    try:
        flwr_app()
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0
