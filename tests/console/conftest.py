"""Console tests: headless Chromium (the OS package) driven by Playwright.

``scripts/ensure-browser.sh`` installs Chromium from the Debian packages when it is
missing (``make test`` and ``.ci/run`` call it). Under CI (``CI=true``) a missing browser
or Playwright fails the test; elsewhere it skips with the command to run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser")
INSTALL_HINT = "run scripts/ensure-browser.sh (installs Debian's chromium)"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests must run under CI: {reason}; {INSTALL_HINT}")
    pytest.skip(f"{reason}; {INSTALL_HINT}")


def chromium_path() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    _unavailable("no chromium on PATH")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module (the OS package, not Playwright's download)."""
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install -e '.[dev]')")
    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=args)
        try:
            yield chromium
        finally:
            chromium.close()
