"""Memory hygiene for a long-lived site process (glibc's allocator, measured in
docs/performance.md, ``fedcare perf-deploy``).

* :func:`limit_malloc_arenas`: glibc gives each thread that allocates concurrently an
  arena of its own (up to 8 per core), and freed memory stays in the arena it came from.
  A site runs ~20 threads (gRPC, TensorFlow's pools, the worker); two arenas are enough
  for one message at a time. The same as ``MALLOC_ARENA_MAX=2``, set from inside the
  process so that every way of starting a site (CLI, systemd unit, container) gets it.
* :class:`ReturningFreeMemory`: after each message the site has answered, hand the
  allocator's free pages back to the system (``malloc_trim``), so a site's resident size
  between rounds is what it holds, not its high-water mark.
* :func:`release_file_pages` and :class:`ReleasingFilePages`: drop the pages of the
  shared libraries a site loaded and used once from its resident set. Importing
  TensorFlow 2.15 touches ~200-400 MiB of its native libraries' pages (the static
  initialisers that register every op and kernel, the Python modules' constants); a
  site's rounds use ~30 MiB of them again. The kernel keeps such pages resident until
  memory runs short, so they count in the site's RSS although nothing uses them. A site
  asks the kernel (``madvise(MADV_PAGEOUT)``, Linux 5.4+) to reclaim them while it loads
  and after the first message of each kind (the round that traces TensorFlow's graph, the
  pre-flight that calibrates the noise); a page used again is read back from the page
  cache or the file on its next access. Only clean pages of read-only file mappings are
  named; the kernel leaves alone any page another process maps too (a second site on the
  same host), and anonymous memory (the model, the data, Python's heap) is never touched.

All are no-ops where the C library is not glibc or the kernel is not Linux.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

#: glibc's mallopt parameter number for the arena limit (malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
SITE_ARENAS = 2
#: Linux's madvise advice: reclaim these pages now (asm-generic/mman-common.h, Linux 5.4).
MADV_PAGEOUT = 21
#: How often a loading site drops the pages its imports touched (seconds): the peak RSS
#: while TensorFlow loads is what ~0.25 s of importing touches, not the whole import.
LOADING_RELEASE_SECONDS = 0.25
MAPS = Path("/proc/self/maps")
STATUS = Path("/proc/self/status")


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "malloc_trim"):
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc


def limit_malloc_arenas(arenas: int = SITE_ARENAS) -> bool:
    """At most ``arenas`` malloc arenas in this process; call before threads start.
    Returns whether the C library took the setting."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1)


def return_free_memory() -> bool:
    """Give the allocator's free pages back to the system; whether any were."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0) == 1)


def read_only_file_mappings(maps: str) -> list[tuple[int, int]]:
    """The (start, end) address ranges of ``maps`` (the text of ``/proc/PID/maps``) that
    map a file and are not writable: code and constants of shared libraries, Python's
    extension modules, memory-mapped files read only. Anonymous memory, the stack, the
    heap and writable (relocated, copy-on-write) file mappings are left out."""
    ranges = []
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if (len(fields) < 6 or not fields[5].startswith("/") or "w" in fields[1]
                or fields[5].startswith("/dev/")):  # a device's memory is not a file's
            continue
        start, _, end = fields[0].partition("-")
        ranges.append((int(start, 16), int(end, 16)))
    return ranges


def proc_kb(path: Path, key: str) -> int | None:
    """The ``KEY:   N kB`` field of a /proc file (``status``, ``smaps_rollup``) in kB;
    None where the file or the field is missing or unreadable."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def resident_file_bytes() -> int | None:
    """This process's file-backed resident memory (``RssFile``); None where unknown."""
    kb = proc_kb(STATUS, "RssFile")
    return None if kb is None else kb * 1024


def release_file_pages() -> int:
    """Ask the kernel to reclaim the clean pages of this process's read-only file
    mappings now (module docstring); returns by how many bytes the process's file-backed
    resident memory fell (0 where this is not supported)."""
    libc = _libc()
    before = resident_file_bytes()
    if libc is None or before is None:
        return 0
    try:
        ranges = read_only_file_mappings(MAPS.read_text())
    except OSError:
        return 0
    for start, end in ranges:
        # refused ranges are skipped: a kernel before 5.4 (EINVAL for every one), locked
        # pages (EINVAL), a mapping that went away meanwhile (ENOMEM)
        libc.madvise(start, end - start, MADV_PAGEOUT)
    after = resident_file_bytes()
    return max(0, before - (after if after is not None else before))


class ReleasingFilePages:
    """While the block runs (a site importing TensorFlow and its code), release the file
    pages it touched every ``interval`` seconds from a thread, and once more at the end.
    Without it the site's peak RSS is the whole import's; with it, what a fraction of a
    second of importing touches, plus what one native library's load touches at once
    (Python switches threads between bytecodes, not inside a C call such as ``dlopen``).
    The import itself is unchanged."""

    def __init__(self, interval: float = LOADING_RELEASE_SECONDS) -> None:
        self.interval = interval
        self.released = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedcare-release-pages",
                                        daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.released += release_file_pages()

    def __enter__(self) -> ReleasingFilePages:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.released += release_file_pages()
        logger.debug("released %.0f MiB of file pages while loading", self.released / 2**20)


class ReturningFreeMemory:
    """A ClientApp that returns free memory to the system after each message it answers,
    and releases file pages after the first message of each kind (the wrapped app is
    called exactly as before)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._kinds_seen: set[str] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.app(*args, **kwargs)
        finally:
            return_free_memory()
            kind = _message_type(kwargs.get("message", args[0] if args else None))
            if kind not in self._kinds_seen:
                self._kinds_seen.add(kind)
                released = release_file_pages()
                logger.debug("first %s message answered: released %.0f MiB of file pages",
                             kind, released / 2**20)


def _message_type(message: Any) -> str:
    """A Flower message's type (``train``, ``evaluate``, ``query``...); ``""`` if none."""
    return str(getattr(getattr(message, "metadata", None), "message_type", "") or "")
