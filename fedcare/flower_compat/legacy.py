"""Names from Flower's legacy API that fedcare's SecAgg+ path and bundle hash need.

SecAgg+ exists only in Flower's legacy API (``secaggplus_mod`` on the site,
``SecAggPlusWorkflow`` on the server; still so in Flower 1.42): the site adapter converts
messages with Flower's ``recorddict_compat`` and finds SecAgg+ rounds by their config
record key; the server workflow reads the global model from the legacy context's main
record. The policy's bundle hash uses Flower's own bundle build, so that it equals the
hash of the bundle ``flwr run`` ships. Every such name is imported here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

from flwr.clientapp.typing import ClientAppCallable
from flwr.common import recorddict_compat
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server.client_proxy import ClientProxy
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

__all__ = ["MAIN_PARAMS_RECORD", "RECORD_KEY_CONFIGS", "ClientAppCallable", "ClientProxy",
           "build_fab",
           "recorddict_compat"]


def build_fab(folder: Path) -> bytes:
    """The bundle (FAB) bytes ``flwr run FOLDER`` would ship (Flower's own, deterministic build)."""
    from flwr.cli.build import build_fab_from_disk

    return bytes(build_fab_from_disk(folder))
