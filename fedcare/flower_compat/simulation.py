"""Flower's simulation engine, run in this process, with shorter polls.

:func:`run_engine` runs a ServerApp and ClientApp on Flower's in-process engine
(``flwr.simulation.run_simulation._run_simulation``: the public ``run_simulation`` cannot
take a run id, a run config or a project folder), inside :func:`fast_polling`.

Shorter polling is the framework's cost per round.

In flwr 1.23 a simulated round waits on two fixed 0.1 s polls per phase (train, then
evaluate): the engine's thread that moves messages from the link state to the workers
(``vce_api.add_messages_to_queue``, ``f_stop.wait(0.1)`` between sweeps) and the
in-memory grid that the ServerApp polls for replies (``InMemoryGrid.pull_interval``).
With sites that train in milliseconds, those polls are most of a round (about 0.4 s of
it). Neither is a setting of ``run_simulation``, so :func:`fast_polling` swaps both for
the duration of one simulation and restores them after. Deployment (``flwr run`` against
a SuperLink) is untouched.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from queue import Queue
from typing import Any

# Seconds between polls. 0.01 s keeps the idle cost of the two polling threads small
# (one state look-up per site per poll) while taking ~0.35 s off every round.
FAST_POLL_SECONDS = 0.01


def _make_extractor(interval: float) -> Any:
    def add_messages_to_queue(state: Any, queue: Queue[Any], nodes_mapping: Any,
                              f_stop: threading.Event) -> None:
        """``vce_api.add_messages_to_queue`` with ``interval`` between sweeps."""
        while not f_stop.is_set():
            for node_id in nodes_mapping:
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
            f_stop.wait(interval)
    return add_messages_to_queue


@contextmanager
def fast_polling(interval: float = FAST_POLL_SECONDS) -> Iterator[None]:
    """Poll every ``interval`` seconds instead of 0.1 s inside Flower's simulation."""
    if not 0 < interval <= 1:
        raise ValueError(f"simulation: poll interval must be in (0, 1] seconds; got {interval}")
    from flwr.server.grid.inmemory_grid import InMemoryGrid
    from flwr.server.superlink.fleet.vce import vce_api

    # The module, not the function of the same name that flwr.simulation exports.
    sim: Any = importlib.import_module("flwr.simulation.run_simulation")

    saved = (vce_api.add_messages_to_queue, sim.InMemoryGrid)
    vce_api.add_messages_to_queue = _make_extractor(interval)  # type: ignore[assignment]
    sim.InMemoryGrid = functools.partial(InMemoryGrid, pull_interval=interval)
    try:
        yield
    finally:
        vce_api.add_messages_to_queue, sim.InMemoryGrid = saved


def run_engine(*, client_app: Any, server_app: Any, num_sites: int, run_config: Mapping[str, Any],
               backend_config: Mapping[str, Any], app_dir: str, is_app: bool = True,
               poll_seconds: float | None = FAST_POLL_SECONDS) -> None:
    """Run one simulation of ``num_sites`` virtual sites to its end, in this process.

    ``run_config`` is the run's kebab-case config: the ServerApp's context gets it, and with
    ``is_app`` the sites read the project's defaults fused with it, as under ``flwr run``
    (without it Flower gives them an empty run config). Exceptions of the ServerApp come
    back as Flower raises them (a ``RuntimeError``). ``poll_seconds=None`` keeps Flower's
    own polls (as a template app runs).
    """
    import secrets

    from flwr.app import Context, RecordDict
    from flwr.common.constant import RUN_ID_NUM_BYTES
    from flwr.common.telemetry import EventType
    from flwr.common.typing import Run
    from flwr.simulation.run_simulation import _run_simulation

    overrides = dict(run_config)
    run = Run.create_empty(run_id=int.from_bytes(secrets.token_bytes(RUN_ID_NUM_BYTES), "little")
                           >> 1)
    run.override_config = overrides
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=overrides)
    polls = nullcontext() if poll_seconds is None else fast_polling(poll_seconds)
    with polls:
        _run_simulation(num_supernodes=num_sites,
                        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                        client_app=client_app, server_app=server_app,
                        backend_config=dict(backend_config),  # type: ignore[arg-type]
                        server_app_context=context, app_dir=app_dir,
                        run=run if is_app else None, is_app=is_app)
