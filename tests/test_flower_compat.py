"""The seam to Flower's internals: the pinned version, the bundle check a site makes before
it runs anything, and the short reply poll."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from flwr.cli.build import build_fab_from_files

from fedcare import flower_compat
from fedcare.flower_compat import (
    CLIENTAPP_COMPONENT,
    MAX_BUNDLE_UNPACKED,
    FlowerVersionError,
    ReplyPoller,
    bundle_problems,
    check_flower_version,
    installed_code,
    judge_bundle,
)
from fedcare.research.run import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "fedcare"


def _fab(*, component: str = CLIENTAPP_COMPONENT, changes: dict[str, bytes] | None = None
         ) -> bytes:
    """A bundle as `flwr run` builds it: pyproject.toml and the fedcare package."""
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    files: dict[str, Any] = {"pyproject.toml": pyproject.replace(
        f'clientapp = "{CLIENTAPP_COMPONENT}"', f'clientapp = "{component}"').encode()}
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" not in path.parts:
            files[f"fedcare/{path.relative_to(PACKAGE).as_posix()}"] = path
    files.update(changes or {})
    return build_fab_from_files(files)


def test_flower_version_is_the_pinned_one() -> None:
    assert check_flower_version() == "1.23.0"


def test_another_flower_version_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr

    monkeypatch.setattr(flwr, "__version__", "1.42.0")
    with pytest.raises(FlowerVersionError, match=r"must be 1\.23\.0 .*got 1\.42\.0"):
        check_flower_version()


def test_installed_code_lists_every_python_file_of_the_package() -> None:
    code = installed_code()
    assert "fedcare/site/app.py" in code and "fedcare/flower_compat/__init__.py" in code
    expected = hashlib.sha256((PACKAGE / "site" / "app.py").read_bytes()).hexdigest()
    assert code["fedcare/site/app.py"] == expected
    assert not any("__pycache__" in name for name in code)


def test_the_honest_bundle_is_acceptable() -> None:
    assert bundle_problems(_fab()) == []


def test_a_bundle_naming_another_clientapp_is_refused() -> None:
    problems = bundle_problems(_fab(component="evil.client:app"))
    assert problems == ["bundle: clientapp must be 'fedcare.site.app:app' (this site runs "
                        "only its installed fedcare); got 'evil.client:app'"]


def test_a_bundle_with_changed_or_extra_fedcare_code_is_refused_naming_the_files() -> None:
    app = (PACKAGE / "site" / "app.py").read_bytes() + b"\nimport os\n"
    problems = bundle_problems(_fab(changes={"fedcare/site/app.py": app,
                                             "fedcare/extra.py": b"x = 1\n"}))
    assert len(problems) == 1
    assert "got 2 file(s) that differ or are not installed here: fedcare/extra.py, " \
        "fedcare/site/app.py" in problems[0]


def test_files_outside_the_package_are_not_compared() -> None:
    assert bundle_problems(_fab(changes={"tests/test_x.py": b"import os\n",
                                         "docs/x.md": b"# x\n"})) == []


def test_a_bundle_that_is_not_a_zip_is_refused() -> None:
    assert bundle_problems(b"not a zip") == [
        "bundle: must be a readable Flower app bundle (zip); got BadZipFile"]


def test_a_bundle_that_unpacks_too_large_is_refused_without_reading_it() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.md", b"\0" * (MAX_BUNDLE_UNPACKED + 1))
    assert bundle_problems(buffer.getvalue())[0].startswith("bundle: unpacked size must be")


def test_verdict_uses_the_hash_of_the_bytes_and_flags_a_false_declaration() -> None:
    fab = _fab()
    digest = hashlib.sha256(fab).hexdigest()
    assert judge_bundle(fab, digest).problems == ()
    assert judge_bundle(fab, digest).node_config() == {"bundle-hash": digest,
                                                       "bundle-problems": ""}
    lied = judge_bundle(fab, "0" * 64)
    assert lied.bundle_hash == digest
    assert lied.problems == (f"bundle: its hash must be the one the run declares; got {digest} "
                             f"for declared {'0' * 64}",)
    assert judge_bundle(None, "ab").problems == (
        "bundle: the SuperNode must hand the site the run's bundle; got none",)


class _Meta:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update({f"_{k}": v for k, v in fields.items()})

    dst_node_id = property(lambda self: self._dst_node_id)
    src_node_id = property(lambda self: self._src_node_id)
    reply_to_message_id = property(lambda self: self._reply_to_message_id)


class _Msg:
    def __init__(self, error: bool = False, **fields: Any) -> None:
        self.metadata = _Meta(**fields)
        self.error = error

    def has_error(self) -> bool:
        return self.error


def _instructions(*nodes: int) -> list[_Msg]:
    return [_Msg(dst_node_id=node) for node in nodes]


class _FakeGrid:
    """Replies (from the destination node, or errors from ``lost_to_superlink`` written
    by the SuperLink, node 1) become available on the ``ready_after``-th pull."""

    def __init__(self, ready_after: int, lost_to_superlink: tuple[int, ...] = ()) -> None:
        self.ready_after = ready_after
        self.lost = lost_to_superlink
        self.pulls = 0
        self.dst: dict[str, int] = {}

    def push_messages(self, messages: Any) -> list[str]:
        self.dst = {f"id-{m.metadata.dst_node_id}": m.metadata.dst_node_id for m in messages}
        return list(self.dst)

    def pull_messages(self, ids: Any) -> list[Any]:
        self.pulls += 1
        if self.pulls < self.ready_after:
            return []
        return [_Msg(error=self.dst[i] in self.lost, reply_to_message_id=i,
                     src_node_id=1 if self.dst[i] in self.lost else self.dst[i])
                for i in sorted(ids)]


def test_reply_poller_pulls_until_every_reply_is_in() -> None:
    grid = _FakeGrid(ready_after=3)
    replies = ReplyPoller(grid, 0.001).send_and_receive(_instructions(1001, 1002),
                                                        timeout=10)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["id-1001", "id-1002"]
    assert grid.pulls == 3


def test_reply_poller_returns_what_it_has_at_the_timeout() -> None:
    grid = _FakeGrid(ready_after=10**9)
    assert ReplyPoller(grid, 0.001).send_and_receive(_instructions(1001),
                                                     timeout=0.05) == []
    assert grid.pulls >= 1


def test_an_error_the_superlink_writes_for_a_site_is_attributed_to_that_site() -> None:
    grid = _FakeGrid(ready_after=1, lost_to_superlink=(1002,))
    replies = ReplyPoller(grid, 0.001).send_and_receive(_instructions(1001, 1002),
                                                        timeout=10)
    by_source = {r.metadata.src_node_id: r.has_error() for r in replies}
    assert by_source == {1001: False, 1002: True}  # never node 1


@pytest.mark.parametrize("interval", [0.0, -1.0, 3.5])
def test_reply_poller_interval_must_be_short_and_positive(interval: float) -> None:
    with pytest.raises(ValueError, match=r"pull interval must be in \(0, 3\] seconds"):
        ReplyPoller(_FakeGrid(1), interval)


def test_superlink_fix_registers_the_reply_tree_before_the_state_sees_the_reply(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    import flwr.supercore.object_store.utils as store_utils

    monkeypatch.setattr(store_utils, "store_mapping_and_register_objects",
                        lambda store, request: calls.append("register"))

    def flower_push(request: Any, state: Any, store: Any) -> str:
        calls.append("state")
        return "response"

    push = flower_compat._register_objects_first(flower_push)
    assert push(request="r", state="s", store="o") == "response"
    assert calls == ["register", "state"]


def test_superlink_fix_registers_the_instruction_tree_before_the_state_sees_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    import flwr.supercore.object_store.utils as store_utils

    monkeypatch.setattr(store_utils, "store_mapping_and_register_objects",
                        lambda store, request: calls.append(f"register in {store}"))

    class Servicer:
        class objectstore_factory:
            @staticmethod
            def store() -> str:
                return "the store"

    def flower_push(servicer: Any, request: Any, context: Any) -> str:
        calls.append("state")
        return "response"

    push = flower_compat._register_instruction_objects_first(flower_push)
    assert push(Servicer(), "request", "context") == "response"
    assert calls == ["register in the store", "state"]


def test_fast_backoff_shortens_flowers_object_pull_retries_unless_told_otherwise() -> None:
    # Arrange: a stand-in for Flower's pull functions, recording what it was given
    seen: list[dict[str, Any]] = []

    def flower_pull(object_ids: list[str], **kwargs: Any) -> str:
        seen.append(kwargs)
        return "pulled"

    fast = flower_compat._with_fast_backoff(flower_pull)
    # Act
    assert fast(["a"]) == "pulled"
    assert fast(["a"], initial_backoff=2.0) == "pulled"
    # Assert: Flower's 1 s first wait (doubling to 10 s, 500 tries, ~83 min in all)
    # becomes 0.02 s (doubling to 0.1 s, for at most 10 min); an explicit value wins;
    # wrapping again changes nothing
    fast_defaults = {"backoff_cap": 0.1, "max_tries_per_object": None, "max_time": 600.0}
    assert seen == [{"initial_backoff": 0.02, **fast_defaults},
                    {"initial_backoff": 2.0, **fast_defaults}]
    assert flower_compat._with_fast_backoff(fast) is fast


@pytest.mark.parametrize(("side", "patched"), [
    ("site", {"supernode", "worker"}), ("worker", {"worker"}), ("serverapp", {"grid"})])
def test_fast_object_pulls_patch_only_the_processs_own_side(
        monkeypatch: pytest.MonkeyPatch, side: str, patched: set[str]) -> None:
    # Arrange
    import flwr.server.grid.grpc_grid as grid_module
    import flwr.supernode.runtime.run_clientapp as clientapp_module
    import flwr.supernode.start_client_internal as supernode_module

    targets = {"supernode": (supernode_module, "pull_objects"),
               "grid": (grid_module, "pull_objects"),
               "worker": (clientapp_module, "pull_and_inflate_object_from_tree")}
    for module, name in targets.values():  # restored after the test
        monkeypatch.setattr(module, name, getattr(module, name))

    # Act
    flower_compat.use_fast_object_pulls(side)

    # Assert
    fast = {key for key, (module, name) in targets.items()
            if getattr(getattr(module, name), "fedcare_fast_backoff", False)}
    assert fast == patched


def test_fast_object_pulls_of_an_unknown_side_are_refused() -> None:
    with pytest.raises(ValueError, match=r"side must be one of .*; got 'superlink'"):
        flower_compat.use_fast_object_pulls("superlink")


def _loaded_after(code: str) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter; which heavy modules did it load, and can
    TensorFlow still be imported there?"""
    import json
    import subprocess
    import sys

    probe = (f"{code}\nimport importlib.util, json, sys\n"
             "print(json.dumps({'tensorflow': sys.modules.get('tensorflow') is not None, "
             "'ray': sys.modules.get('ray') is not None, "
             "'pandas': 'pandas' in sys.modules, 'scipy': 'scipy' in sys.modules, "
             "'tensorflow-importable': importlib.util.find_spec('tensorflow') is not None}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=120)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_serverapp_process_loads_neither_tensorflow_nor_ray() -> None:
    # Act: what the SuperExec's ServerApp process imports, then fedcare's ServerApp
    loaded = _loaded_after(f"{flower_compat.SERVERAPP_IMPORTS}\n"
                           "import fedcare.server.app, fedcare.server.federation")

    # Assert: none is loaded (pandas: the data loaders; SciPy: dp-accounting, which only
    # site-level DP needs at the server), and TensorFlow is not blocked for a ServerApp
    # needing it
    assert loaded == {"tensorflow": False, "ray": False, "pandas": False, "scipy": False,
                      "tensorflow-importable": True}


def test_flower_imported_without_tensorflow_leaves_tensorflow_importable() -> None:
    # Act: a simulation driver's start, then the Flower modules that try TensorFlow
    loaded = _loaded_after("from fedcare.flower_compat import import_flower_without_tensorflow\n"
                           "import_flower_without_tensorflow()\n"
                           "import sys, flwr.server.utils.tensorboard\n"
                           "import flwr.simulation.ray_transport.utils as ray_utils\n"
                           "board = sys.modules['flwr.server.utils.tensorboard']\n"
                           "assert board.TF is None and ray_utils.TF is None, 'saw TF'")

    # Assert: Flower loaded without it; a later `import tensorflow` is not blocked
    assert loaded["tensorflow"] is False
    assert loaded["tensorflow-importable"] is True


def test_flower_imported_after_tensorflow_is_left_alone() -> None:
    loaded = _loaded_after("import tensorflow\n"
                           "from fedcare.flower_compat import import_flower_without_tensorflow\n"
                           "import_flower_without_tensorflow()\n"
                           "import sys, flwr.server.utils.tensorboard\n"
                           "board = sys.modules['flwr.server.utils.tensorboard']\n"
                           "assert board.TF is not None, 'TF hidden from Flower'")

    assert loaded["tensorflow"] is True


def test_the_serverapp_bootstrap_hands_its_arguments_to_flowers_serverapp() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", flower_compat.SERVERAPP_BOOTSTRAP,
                           "flwr-serverapp", "--help"], capture_output=True, text=True,
                          timeout=120)

    assert done.returncode == 0
    assert done.stdout.startswith("usage: flwr-serverapp")
    assert "--serverappio-api-address" in done.stdout


_CERTS_SYNC = """
import argparse
from fedcare.cli import consortium
from fedcare.deploy import launch
def sync_sites(certs, control_address):
    import flwr.server  # what the real one imports on its way to the SuperLink
    return {"registered": [], "unregistered": [], "kept": []}
launch.sync_sites = sync_sites
consortium.cmd_certs_sync(argparse.Namespace(certs="certs", control_address="x:1"))
"""


def test_certs_sync_loads_neither_tensorflow_nor_ray() -> None:
    loaded = _loaded_after(_CERTS_SYNC)

    assert loaded["tensorflow"] is False and loaded["ray"] is False


_SUPERLINK_STATUS = """
import argparse
from fedcare.cli import consortium
from fedcare.deploy import launch
def online_nodes(certs, control_address, timeout):
    from flwr.common.grpc import create_channel  # what the Control API client imports
    return 2
launch.online_nodes = online_nodes
assert consortium.cmd_superlink_status(
    argparse.Namespace(certs="certs", control_address="x:1")) == 0
"""

_PERF_DEPLOY_DRIVER = """
import argparse, tempfile
from fedcare.cli import research
from fedcare.deploy import perf
class Result:
    def table(self):
        return "table"
def run_perf(root, **kwargs):
    from flwr.common.grpc import create_channel  # the driver's wait for sites online
    return Result()
perf.run_perf = run_perf
assert research.cmd_perf_deploy(argparse.Namespace(
    keep=tempfile.mkdtemp(), sites=1, rounds=1, poll_interval=None, no_dead_site=True)) == 0
"""


@pytest.mark.parametrize("command", [_SUPERLINK_STATUS, _PERF_DEPLOY_DRIVER],
                         ids=["superlink-status", "perf-deploy-driver"])
def test_operator_commands_load_neither_tensorflow_nor_ray(command: str) -> None:
    # the status check runs every minute; the benchmark's driver would share the sites'
    # TensorFlow pages, which a site then could not release
    loaded = _loaded_after(command)

    assert loaded["tensorflow"] is False and loaded["ray"] is False


def test_a_site_process_does_not_load_ray() -> None:
    loaded = _loaded_after("from fedcare.flower_compat import block_ray, block_tensorflow\n"
                           "block_tensorflow(); block_ray()\n"
                           "import flwr.app, flwr.clientapp, flwr.simulation")

    assert loaded["ray"] is False


def test_module_has_no_side_effects_on_import(tmp_path: Path) -> None:
    import importlib

    importlib.reload(flower_compat)  # importing must not start or patch anything
    from flwr.server.superlink.fleet.message_handler import message_handler

    assert message_handler.push_messages.__module__.startswith("flwr.")


# Flower's public API: what fedcare may import outside fedcare.flower_compat.
PUBLIC_FLOWER = ("flwr.app", "flwr.clientapp", "flwr.serverapp", "flwr.serverapp.strategy",
                 "flwr.server", "flwr.server.strategy", "flwr.server.workflow", "flwr.common",
                 "flwr.client.mod", "flwr.simulation")


def _flower_imports(path: Path) -> list[str]:
    import ast

    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return [name for name in found if name == "flwr" or name.startswith("flwr.")]


def test_flower_internals_are_imported_only_in_the_compat_room() -> None:
    # Arrange: every fedcare module outside fedcare/flower_compat/
    modules = [path for path in PACKAGE.rglob("*.py")
               if "flower_compat" not in path.relative_to(PACKAGE).parts]
    # Act
    internal = {f"{path.relative_to(PROJECT_ROOT)}: {name}"
                for path in modules for name in _flower_imports(path)
                if name not in PUBLIC_FLOWER}
    # Assert
    assert modules and not internal, sorted(internal)


def test_the_internals_check_sees_an_internal_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from flwr.server.grid.inmemory_grid import InMemoryGrid\n"
                      "from flwr.app import Context\nimport flwr.proto.control_pb2\n")
    assert [n for n in _flower_imports(module) if n not in PUBLIC_FLOWER] == [
        "flwr.server.grid.inmemory_grid", "flwr.proto.control_pb2"]


_IMPORTS_WITHOUT_TF = """
import sys
from fedcare.flower_compat.__main__ import main
code = main(["flwr", "--version"])
import flwr.server.app, flwr.supercore.cli  # the SuperLink and SuperExec imports
loaded = [m for m, mod in sys.modules.items() if m.startswith("tensorflow") and mod]
print("LOADED", loaded, "CODE", code)
"""


def test_flwr_cli_and_superlink_imports_never_load_tensorflow() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _IMPORTS_WITHOUT_TF], capture_output=True,
                          text=True, timeout=120, cwd=PROJECT_ROOT, check=False)

    assert "LOADED [] CODE 0" in done.stdout, done.stdout + done.stderr[-2000:]
    assert "Flower version: 1.23.0" in done.stdout


def test_without_the_block_flower_does_import_tensorflow() -> None:
    """The check above can fail: Flower's server package does pull TensorFlow in."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import sys, flwr.server.app; "
                           "print('TF', 'tensorflow' in sys.modules)"],
                          capture_output=True, text=True, timeout=120, check=False)

    assert "TF True" in done.stdout, done.stderr[-2000:]


def test_unknown_subcommand_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    from fedcare.flower_compat.__main__ import main

    assert main(["supernode"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_poll_clock_is_fast_while_a_run_is_active_and_slow_when_idle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    now = [0.0]
    monkeypatch.setattr(flower_compat.time, "sleep", slept.append)
    pace = flower_compat.PollPace(0.1, idle=1.0, window=60.0, clock=lambda: now[0])
    clock = flower_compat._PollClock(pace)

    clock.sleep(3)    # Flower's pull interval, nothing handled yet: idle
    clock.sleep(0.5)  # Flower's wait for the reply: a run is active
    now[0] = 59.0
    clock.sleep(3)    # within the window: fast
    now[0] = 61.0
    clock.sleep(3)    # a minute without work: idle again

    assert slept == [1.0, 0.1, 0.1, 1.0]  # idle=1.0 here; the default is 3.0
    assert clock.monotonic is flower_compat.time.monotonic  # the rest is the real module


def test_idle_pace_is_never_faster_than_the_active_one() -> None:
    assert flower_compat.PollPace(2.0, idle=1.0).current() == 2.0


@pytest.mark.parametrize("interval", [0.0, 0.001, 3.5, -1.0])
def test_poll_interval_out_of_bounds_is_refused(interval: float) -> None:
    with pytest.raises(ValueError, match=f"poll-interval must be in .*; got {interval}"):
        flower_compat.check_poll_interval(interval)


def test_node_key_must_be_an_ec_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "auth.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    with pytest.raises(ValueError, match="private key must be an EC key; got Ed25519"):
        flower_compat.load_node_key(path)


def _started_by(shim: Any, monkeypatch: pytest.MonkeyPatch,
                *commands: list[str]) -> list[list[str]]:
    import subprocess

    started: list[list[str]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, *a, **k: started.append(list(args)))
    for command in commands:
        shim.Popen(command)
    return started


def test_the_superlinks_superexec_runs_through_fedcare_and_nothing_else_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    shim = flower_compat._own_superexec()

    started = _started_by(shim, monkeypatch,
                          ["flower-superexec", "--insecure", "--plugin-type", "serverapp"],
                          ["flwr-serverapp", "--token", "t"])

    assert started == [
        [sys.executable, "-m", "fedcare.flower_compat", "superexec", "--insecure",
         "--plugin-type", "serverapp"],
        ["flwr-serverapp", "--token", "t"]]
    assert shim.PIPE is subprocess.PIPE


def test_the_superexecs_serverapp_starts_through_the_bootstrap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    started = _started_by(flower_compat._own_serverapp(), monkeypatch,
                          ["flwr-serverapp", "--insecure", "--token", "t"],
                          ["flwr-clientapp", "--token", "t"])

    assert started == [
        [sys.executable, "-c", flower_compat.SERVERAPP_BOOTSTRAP, "flwr-serverapp",
         "--insecure", "--token", "t"],
        ["flwr-clientapp", "--token", "t"]]


_STUCK_ON_STOP = """
import os, signal, time
from fedcare import flower_compat
flower_compat.STOP_GRACE = 0.5
def flower_register():  # like Flower's: a stop handler whose graceful exit never ends
    signal.signal(signal.SIGTERM, lambda signum, frame: time.sleep(3600))
flower_compat._with_bounded_stop(flower_register)()
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(3600)
"""


def test_a_site_told_to_stop_ends_even_when_flowers_graceful_exit_hangs() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _STUCK_ON_STOP], capture_output=True,
                          text=True, timeout=120, cwd=PROJECT_ROOT, check=False)

    assert done.returncode == 0, done.stderr[-2000:]


_HEARTBEAT = """
import flwr.client.grpc_rere_client.connection as connection
import flwr.common.heartbeat as heartbeat
from fedcare.flower_compat import SITE_HEARTBEAT_SECONDS, use_heartbeat_interval
before = (connection.HEARTBEAT_DEFAULT_INTERVAL, heartbeat.HEARTBEAT_DEFAULT_INTERVAL)
use_heartbeat_interval(SITE_HEARTBEAT_SECONDS)
print(before, (connection.HEARTBEAT_DEFAULT_INTERVAL, heartbeat.HEARTBEAT_DEFAULT_INTERVAL))
"""


def test_a_site_declares_and_keeps_a_10_s_heartbeat_instead_of_flowers_30() -> None:
    # in a fresh interpreter: the setting is the process's for good
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _HEARTBEAT], capture_output=True, text=True,
                          check=True, timeout=120)

    assert done.stdout.strip().splitlines()[-1] == "(30, 30) (10, 10)"


@pytest.mark.parametrize("seconds", [9, 1801])
def test_a_heartbeat_interval_flower_would_not_take_is_refused(seconds: int) -> None:
    with pytest.raises(ValueError, match=r"heartbeat interval must be in \[10, 1800\] s"):
        flower_compat.use_heartbeat_interval(seconds)
