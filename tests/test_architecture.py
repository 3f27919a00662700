"""The house rules of docs/architecture.md, read from the code's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fedcare"


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every absolute module an import statement of ``path`` names, lazy imports inside
    functions included (relative ones resolved against ``package``, by default the file's)."""
    if package is None:
        package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def crossings(source_room: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{path.relative_to(PACKAGE.parent)} imports {name}"
                  for path in (PACKAGE / source_room).rglob("*.py")
                  for name in imported_modules(path)
                  if any(name == room or name.startswith(room + ".") for room in forbidden))


@pytest.mark.parametrize(("room", "forbidden"), [
    ("site", ("fedcare.server",)),
    ("hospital", ("fedcare.server",)),
    ("server", ("fedcare.site", "fedcare.hospital")),
    ("privacy", ("fedcare.site", "fedcare.hospital", "fedcare.server", "fedcare.cli")),
    ("common", ("fedcare.site", "fedcare.hospital", "fedcare.server", "fedcare.cli")),
])
def test_rooms_do_not_import_what_the_architecture_forbids(room: str,
                                                            forbidden: tuple[str, ...]) -> None:
    assert list((PACKAGE / room).rglob("*.py"))
    assert crossings(room, forbidden) == []


def test_the_import_reader_sees_absolute_relative_and_lazy_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from fedcare.site import site\n"
                     "def f():\n    import fedcare.hospital.api\n"
                     "from ..site.audit import verify_log\n")

    found = imported_modules(probe, package="fedcare.server")

    assert {"fedcare.site.site", "fedcare.hospital.api", "fedcare.site.audit"} <= found
