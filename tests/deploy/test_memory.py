"""A site process limits glibc's arenas, returns free memory after each message and
releases the file pages it used once."""

from __future__ import annotations

import subprocess
import sys
import threading
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
    assert memory.release_file_pages() == 0


MAPS = """\
55d0c0a00000-55d0c0a21000 r--p 00000000 fe:01 1311 /usr/bin/python3.11
55d0c0a21000-55d0c0c00000 r-xp 00021000 fe:01 1311 /usr/bin/python3.11
55d0c0d00000-55d0c0d10000 rw-p 00300000 fe:01 1311 /usr/bin/python3.11
55d0c1000000-55d0c2000000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7f0000100000-7f0000180000 r-xp 00000000 fe:01 42 /opt/lib/libtensor flow.so
7f0000180000-7f0000190000 r--p 00080000 fe:01 42 /opt/lib/libtensor flow.so (deleted)
7f0000200000-7f0000201000 r--s 00000000 00:05 77 /dev/some-device
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7ffd00100000-7ffd00102000 r-xp 00000000 00:00 0 [vdso]
"""


def test_only_read_only_file_mappings_are_named() -> None:
    ranges = memory.read_only_file_mappings(MAPS)

    # the executable's constants and code, the library's code and constants; not the
    # writable (relocated) data, the heap, anonymous memory, a device, the stack or the vdso
    assert ranges == [(0x55d0c0a00000, 0x55d0c0a21000), (0x55d0c0a21000, 0x55d0c0c00000),
                      (0x7f0000100000, 0x7f0000180000), (0x7f0000180000, 0x7f0000190000)]


RELEASE_SCRIPT = """
import hashlib, mmap, os, sys
from fedcare.deploy import memory
path, size = sys.argv[1], 16 * 2**20
with open(path, "wb") as f:
    f.write(os.urandom(size))
    f.flush()
    os.fsync(f.fileno())  # clean pages: the kernel reclaims them without writing
with open(path, "rb") as f:
    view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
digest = hashlib.sha256(view).hexdigest()  # touches every page
touched = memory.resident_file_bytes()
released = memory.release_file_pages()
after = memory.resident_file_bytes()
again = hashlib.sha256(view).hexdigest()  # read back from the page cache or the file
print(touched, released, after, digest == again)
"""


def test_released_file_pages_leave_the_resident_set_and_read_back_the_same(
        tmp_path: Any) -> None:
    # Arrange: a fresh interpreter maps a 16 MiB file and reads all of it
    done = subprocess.run([sys.executable, "-c", RELEASE_SCRIPT, str(tmp_path / "data.bin")],
                          capture_output=True, text=True, check=True, timeout=120)

    # Act: (in the script) release; read the mapping again
    touched, released, after, same = done.stdout.split()

    # Assert: at least 15 of the 16 MiB left the process's resident set, the count
    # returned is what RssFile says, and the data reads back unchanged
    assert int(released) >= 15 * 2**20
    assert int(touched) - int(after) == int(released)
    assert same == "True"


class _Message:
    def __init__(self, message_type: str) -> None:
        self.metadata = type("Metadata", (), {"message_type": message_type})()


def test_file_pages_are_released_after_the_first_message_of_each_kind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange
    events: list[str] = []
    monkeypatch.setattr(memory, "return_free_memory", lambda: events.append("trim"))
    monkeypatch.setattr(memory, "release_file_pages", lambda: events.append("release") or 0)
    wrapped = memory.ReturningFreeMemory(lambda *, message, context: message.metadata)

    # Act
    for kind in ("query", "train", "evaluate", "train", "evaluate", "train"):
        wrapped(message=_Message(kind), context=None)

    # Assert: a trim after each of the 6; a release after the first query, train, evaluate
    assert events == ["trim", "release", "trim", "release", "trim", "release",
                      "trim", "trim", "trim"]


def test_pages_are_released_while_loading_and_once_more_at_the_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange: each release reports 3 bytes; the block waits until the thread released twice
    calls: list[int] = []
    released_twice = threading.Event()

    def release() -> int:
        calls.append(1)
        if len(calls) >= 2:
            released_twice.set()
        return 3

    monkeypatch.setattr(memory, "release_file_pages", release)

    # Act
    with pytest.raises(RuntimeError, match="import failed"), \
            memory.ReleasingFilePages(interval=0.01) as loading:
        assert released_twice.wait(timeout=30)
        raise RuntimeError("import failed")
    after_exit = len(calls)

    # Assert: the final release ran although the block raised; the thread has stopped
    assert after_exit >= 3
    assert loading.released == 3 * after_exit
    assert not loading._thread.is_alive()


def test_a_proc_field_is_read_in_kb_and_a_missing_one_is_none(tmp_path: Any) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmRSS:\t  402112 kB\nRssFile:\t   47104 kB\n")

    assert memory.proc_kb(status, "RssFile") == 47104
    assert memory.proc_kb(status, "Pss") is None
    assert memory.proc_kb(tmp_path / "absent", "VmRSS") is None
