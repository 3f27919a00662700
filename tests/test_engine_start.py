"""A private Ray's head node waits for its GCS's port instead of Ray's 1 s retry sleep."""

from __future__ import annotations

import socket

from fedcare.flower_compat import simulation


def test_the_wait_ends_as_soon_as_the_port_listens() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        assert simulation._wait_for_port("127.0.0.1", port, alive=lambda: True, limit=5.0)


def test_the_wait_gives_up_when_the_process_ended_or_after_its_limit() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]  # closed below: nothing listens there any more
    asked: list[bool] = []

    def ended() -> bool:
        asked.append(True)
        return False

    assert not simulation._wait_for_port("127.0.0.1", port, alive=ended, limit=60.0)
    assert asked == [True]  # gave up at the first look
    assert not simulation._wait_for_port("127.0.0.1", port, alive=lambda: True, limit=0.1)


def test_the_gcs_wait_changes_ray_inside_its_block_only() -> None:
    from ray._private.node import Node

    shipped = Node.start_gcs_server

    with simulation.gcs_first_try():
        inside = Node.start_gcs_server

    assert inside is not shipped
    assert Node.start_gcs_server is shipped
