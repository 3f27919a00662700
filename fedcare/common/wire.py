"""Decoding model arrays that arrived over the network: numbers only, never objects.

Flower's ``Array`` carries a declared dtype, shape, serialisation type and bytes. Its own
``numpy()`` loads the bytes with ``allow_pickle=False`` (so a pickle is refused with a
``ValueError``), but it does not check that the bytes agree with what the array claims,
nor that they hold numbers of a useful kind. :func:`decode_arrays` checks all of it, on
the server (site updates) and at the site (the global model), and raises
:class:`~fedcare.common.errors.UnsafePayload` naming the array and the rule broken.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

from fedcare.common.errors import UnsafePayload

NUMPY_STYPE = "numpy.ndarray"
# np.save's header is at most a few hundred bytes for the shapes a model has.
_HEADER_SLACK = 4096


def decode_array(name: str, array: object, *, expected: np.ndarray | None = None,
                 where: str = "payload") -> np.ndarray:
    """A floating-point ndarray decoded from ``array``, or :class:`UnsafePayload`.

    With ``expected``, the array must also have its shape and dtype; its declared size is
    checked before any byte is decoded, so an oversized payload is never loaded.
    """
    if not isinstance(array, Array):
        raise UnsafePayload(f"{where}: array {name!r} must be a Flower Array; "
                            f"got {type(array).__name__}")
    if array.stype != NUMPY_STYPE:
        raise UnsafePayload(f"{where}: array {name!r} must be serialised as {NUMPY_STYPE}; "
                            f"got {array.stype!r}")
    declared = _declared_dtype(name, array.dtype, where)
    if expected is not None:
        if tuple(array.shape) != tuple(expected.shape) or declared != expected.dtype:
            raise UnsafePayload(f"{where}: array {name!r} must have shape "
                                f"{tuple(expected.shape)} and dtype {expected.dtype}; got "
                                f"{tuple(array.shape)} {array.dtype}")
        if len(array.data) > expected.nbytes + _HEADER_SLACK:
            raise UnsafePayload(f"{where}: array {name!r} must be at most "
                                f"{expected.nbytes + _HEADER_SLACK} bytes; got "
                                f"{len(array.data)}")
    try:
        value = array.numpy()  # np.load(..., allow_pickle=False)
    except (ValueError, TypeError, OSError, EOFError) as err:
        raise UnsafePayload(f"{where}: array {name!r} must be a plain numeric .npy payload; "
                            f"got undecodable bytes ({err})") from err
    if not isinstance(value, np.ndarray) or value.dtype != declared or \
            tuple(value.shape) != tuple(array.shape):
        raise UnsafePayload(f"{where}: array {name!r} bytes must match its declared "
                            f"{array.dtype} {tuple(array.shape)}; got "
                            f"{getattr(value, 'dtype', type(value).__name__)} "
                            f"{getattr(value, 'shape', '')}")
    return value


def _declared_dtype(name: str, dtype: object, where: str) -> np.dtype:
    try:
        parsed = np.dtype(str(dtype))
    except TypeError as err:
        raise UnsafePayload(f"{where}: array {name!r} must have a floating dtype; "
                            f"got {dtype!r}") from err
    if parsed.kind != "f":
        raise UnsafePayload(f"{where}: array {name!r} must have a floating dtype; "
                            f"got {parsed}")
    return parsed


def decode_arrays(record: object, *, expected: Sequence[np.ndarray] | None = None,
                  where: str = "payload") -> list[np.ndarray]:
    """Every array of an ``ArrayRecord``, decoded by :func:`decode_array`, in order."""
    if not isinstance(record, ArrayRecord):
        raise UnsafePayload(f"{where}: arrays must be an ArrayRecord; "
                            f"got {type(record).__name__}")
    items = list(record.items())
    if expected is not None and len(items) != len(expected):
        raise UnsafePayload(f"{where}: must carry {len(expected)} arrays; got {len(items)}")
    return [decode_array(name, array, expected=None if expected is None else expected[i],
                         where=where)
            for i, (name, array) in enumerate(items)]
