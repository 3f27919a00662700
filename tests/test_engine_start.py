"""A private Ray's head node waits for its GCS's port instead of Ray's 1 s retry sleep,
and starts without the daemons a private session never uses."""

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


def test_the_lean_block_changes_ray_inside_its_block_only() -> None:
    from ray._private.node import Node

    shipped = (Node.__init__, Node.start_api_server)

    with simulation.lean_private_ray():
        inside = (Node.__init__, Node.start_api_server)

    assert inside[0] is not shipped[0] and inside[1] is not shipped[1]
    assert (Node.__init__, Node.start_api_server) == shipped


def test_a_lean_private_ray_runs_work_without_its_three_unused_daemons() -> None:
    import logging
    import os

    import ray
    from ray._private import ray_constants

    @ray.remote(num_cpus=1)
    def pid_and_square(x: int) -> tuple[int, int]:
        return os.getpid(), x * x

    with simulation.gcs_first_try(), simulation.lean_private_ray():
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
    try:
        started = set(ray._private.worker._global_node.all_processes)
        answers = ray.get([pid_and_square.remote(x) for x in range(4)])
    finally:
        ray.shutdown()

    assert [square for _, square in answers] == [0, 1, 4, 9]
    assert {ray_constants.PROCESS_TYPE_GCS_SERVER,
            ray_constants.PROCESS_TYPE_RAYLET} <= started
    assert not started & {ray_constants.PROCESS_TYPE_DASHBOARD,
                          ray_constants.PROCESS_TYPE_MONITOR,
                          ray_constants.PROCESS_TYPE_LOG_MONITOR}
