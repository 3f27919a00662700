"""Only plain numeric arrays cross the wire, in both directions."""

from __future__ import annotations

import io
import pathlib
from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedcare.common.config import RunConfig
from fedcare.common.errors import UnsafePayload
from fedcare.common.wire import decode_array, decode_arrays
from fedcare.site.app import _site, _weights


def _pickle_payload(marker: pathlib.Path, declared: str) -> Array:
    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (pathlib.Path.touch, (marker,))

    buffer = io.BytesIO()
    np.save(buffer, np.array([Boom()], dtype=object), allow_pickle=True)
    return Array(dtype=declared, shape=(1,), stype="numpy.ndarray", data=buffer.getvalue())


def test_flower_cannot_even_serialise_an_object_array() -> None:
    with pytest.raises(ValueError, match="allow_pickle"):
        Array(np.array([object()], dtype=object))


@pytest.mark.parametrize("declared", ["object", "float32", "|O"])
def test_a_pickled_payload_is_refused_and_never_unpickled(tmp_path: pathlib.Path,
                                                         declared: str) -> None:
    marker = tmp_path / "ran"

    with pytest.raises(UnsafePayload):
        decode_array("w", _pickle_payload(marker, declared))

    assert not marker.exists()


@pytest.mark.parametrize("array, rule", [
    (Array(np.arange(3, dtype=np.int64)), "floating dtype"),
    (Array(np.array(["a", "b"])), "floating dtype"),
    (Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"not npy"),
     "undecodable"),
    (Array(dtype="float32", shape=(5,), stype="numpy.ndarray",
           data=Array(np.zeros(2, np.float32)).data), "must match its declared"),
    (Array(dtype="float32", shape=(2,), stype="pickle", data=b"\x80\x04."), "serialised as"),
])
def test_non_numeric_or_inconsistent_arrays_are_refused(array: Array, rule: str) -> None:
    with pytest.raises(UnsafePayload, match=rule):
        decode_array("w", array)


def test_an_oversized_payload_is_refused_before_decoding() -> None:
    big = Array(np.zeros(1_000_000, np.float32))
    big.shape = (2,)  # lies about its size

    with pytest.raises(UnsafePayload, match="at most"):
        decode_array("w", big, expected=np.zeros(2, np.float32))


def test_plain_float_arrays_decode_unchanged() -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(1, np.float32)]

    out = decode_arrays(ArrayRecord(arrays), expected=arrays)

    for a, b in zip(out, arrays):
        np.testing.assert_array_equal(a, b)


def test_a_site_refuses_a_global_model_carrying_a_pickle(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"
    content = RecordDict({
        "arrays": ArrayRecord(OrderedDict([("0", _pickle_payload(marker, "float32"))])),
        "config": ConfigRecord({"server-round": 1, "run-name": "r"})})
    msg = Message(content=content, dst_node_id=1, message_type="train")
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config=RunConfig(
                          output_dir=str(tmp_path)).to_run_config())

    config, site, _ = _site(msg, context)

    with pytest.raises(UnsafePayload, match="global model"):
        _weights(msg, config, site)

    assert not marker.exists()
