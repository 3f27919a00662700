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

Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache
from typing import Any

logger = logging.getLogger(__name__)

#: glibc's mallopt parameter number for the arena limit (malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
SITE_ARENAS = 2


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def limit_malloc_arenas(arenas: int = SITE_ARENAS) -> bool:
    """At most ``arenas`` malloc arenas in this process; call before threads start.
    Returns whether the C library took the setting."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1)


def return_free_memory() -> bool:
    """Give the allocator's free pages back to the system; whether any were."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0) == 1)


class ReturningFreeMemory:
    """A ClientApp that returns free memory to the system after each message it answers
    (the wrapped app is called exactly as before)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.app(*args, **kwargs)
        finally:
            return_free_memory()
