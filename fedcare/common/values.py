"""Type checks for numbers read from files, the network and configs (one definition)."""

from __future__ import annotations


def is_int(value: object) -> bool:
    """True for an ``int``, False for ``bool`` (``True`` is an ``int`` in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """True for ``int`` and ``float``, False for ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
