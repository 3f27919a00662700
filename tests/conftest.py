"""Test-wide settings: no telemetry, quiet TensorFlow, and small shared factories."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """The CLI configures the root logger (level, console handler); a test that runs
    ``main()`` must not change what the next test's ``caplog`` sees."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
