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


class _FakeGrid:
    """Replies become available on the ``ready_after``-th pull."""

    def __init__(self, ready_after: int) -> None:
        self.ready_after = ready_after
        self.pulls = 0

    def push_messages(self, messages: Any) -> list[str]:
        return [f"id-{m}" for m in messages]

    def pull_messages(self, ids: Any) -> list[Any]:
        self.pulls += 1
        if self.pulls < self.ready_after:
            return []

        class Reply:
            def __init__(self, reply_to: str) -> None:
                self.metadata = type("M", (), {"reply_to_message_id": reply_to})()

        return [Reply(i) for i in sorted(ids)]


def test_reply_poller_pulls_until_every_reply_is_in() -> None:
    grid = _FakeGrid(ready_after=3)
    replies = ReplyPoller(grid, 0.001).send_and_receive([1, 2], timeout=10)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["id-1", "id-2"]
    assert grid.pulls == 3


def test_reply_poller_returns_what_it_has_at_the_timeout() -> None:
    grid = _FakeGrid(ready_after=10**9)
    assert ReplyPoller(grid, 0.001).send_and_receive([1], timeout=0.05) == []
    assert grid.pulls >= 1


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
