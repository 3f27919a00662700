"""A site process limits glibc's arenas and returns free memory after each message."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from fedcare.deploy import memory


def test_the_arena_limit_is_taken_by_glibc() -> None:
    # in a fresh interpreter: the setting lasts for the whole process
    done = subprocess.run([sys.executable, "-c", "from fedcare.deploy.memory import "
                           "limit_malloc_arenas; print(limit_malloc_arenas())"],
                          capture_output=True, text=True, check=True, timeout=60)

    assert done.stdout.strip() == "True"


def test_the_wrapped_app_answers_as_before_and_memory_is_returned_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange
    events: list[str] = []
    monkeypatch.setattr(memory, "return_free_memory", lambda: events.append("trim"))

    def app(*, message: Any, context: Any) -> str:
        events.append(f"answer {message} {context}")
        return "reply"

    # Act
    reply = memory.ReturningFreeMemory(app)(message="m", context="c")

    # Assert
    assert reply == "reply"
    assert events == ["answer m c", "trim"]


def test_memory_is_returned_when_the_app_raises_too(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    monkeypatch.setattr(memory, "return_free_memory", lambda: events.append("trim"))

    def app(**_: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        memory.ReturningFreeMemory(app)(message="m", context="c")

    assert events == ["trim"]


def test_without_glibc_both_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_libc", lambda: None)

    assert memory.limit_malloc_arenas() is False
    assert memory.return_free_memory() is False
