"""The SuperLink's Control API: list, register and unregister SuperNodes (``certs sync``).

Flower 1.23 has no public client for these calls (``flwr`` itself speaks the protobuf
service): the stub, the messages and the key encoding are Flower internals.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

__all__ = ["ControlClient", "ControlUnavailable"]

#: Seconds between attempts while the SuperLink starts.
RETRY_SECONDS = 0.5
#: Seconds one ListNodes call may take.
CALL_TIMEOUT = 5.0


class ControlUnavailable(RuntimeError):
    """The Control API did not answer in time (the message is the gRPC status code)."""


class ControlClient:
    """A TLS channel to the SuperLink's Control API."""

    def __init__(self, channel: Any, stub: Any) -> None:
        self._channel = channel
        self._stub = stub

    @classmethod
    def connect(cls, address: str, root_certificates: bytes, *, timeout: float
                ) -> ControlClient:
        """Connect and wait (up to ``timeout`` s) until ListNodes answers."""
        import grpc
        from flwr.common.grpc import create_channel
        from flwr.proto.control_pb2 import ListNodesRequest
        from flwr.proto.control_pb2_grpc import ControlStub

        channel = create_channel(server_address=address, insecure=False,
                                 root_certificates=root_certificates)
        stub = ControlStub(channel)
        deadline = time.monotonic() + timeout
        while True:
            try:
                stub.ListNodes(ListNodesRequest(), timeout=CALL_TIMEOUT)
                return cls(channel, stub)
            except grpc.RpcError as err:
                if time.monotonic() > deadline:
                    channel.close()
                    raise ControlUnavailable(str(err.code())) from err
                time.sleep(RETRY_SECONDS)

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._channel.close()

    def sync(self, wanted: Mapping[str, Any]) -> dict[str, list[str]]:
        """Registered SuperNodes := ``wanted`` (site name -> public key object).

        Returns the sites registered and kept, and the node ids unregistered.
        """
        from flwr.proto.control_pb2 import (
            ListNodesRequest,
            RegisterNodeRequest,
            UnregisterNodeRequest,
        )
        from flwr.supercore.primitives.asymmetric import public_key_to_bytes

        keys = {public_key_to_bytes(key): site for site, key in wanted.items()}
        done: dict[str, list[str]] = {"registered": [], "unregistered": [], "kept": []}
        nodes = self._stub.ListNodes(ListNodesRequest()).nodes_info
        present = {bytes(n.public_key): n.node_id for n in nodes
                   if n.status not in ("unregistered",)}
        for public_key, node_id in present.items():
            if public_key in keys:
                done["kept"].append(keys[public_key])
            else:
                self._stub.UnregisterNode(UnregisterNodeRequest(node_id=node_id))
                done["unregistered"].append(str(node_id))
        for public_key, site in keys.items():
            if public_key not in present:
                self._stub.RegisterNode(RegisterNodeRequest(public_key=public_key))
                done["registered"].append(site)
        return done
