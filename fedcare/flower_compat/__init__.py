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
* :func:`run_superlink`: Flower's SuperLink with one ordering fix. Its Fleet API stores a
  site's reply in the link state *before* it registers the reply's object tree; a
  ServerApp pull that falls between the two loses the reply for good (the SuperLink
  deletes the instruction and answers "Message Unavailable"). Flower's 3 s pull makes
  that rare; fedcare's short pull made it visible. The fix registers the tree first.

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
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    whose in-memory grid already polls fast (fedcare.flower_compat.simulation)."""
    from flwr.server.grid.grpc_grid import GrpcGrid

    return ReplyPoller(grid, interval) if isinstance(grid, GrpcGrid) else None


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

