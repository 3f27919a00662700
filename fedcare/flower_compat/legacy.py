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
from typing import Any

from flwr.clientapp.typing import ClientAppCallable
from flwr.common import recorddict_compat
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.client_proxy import ClientProxy
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

__all__ = ["MAIN_PARAMS_RECORD", "RECORD_KEY_CONFIGS", "SECAGG_STAGES", "ClientAppCallable",
           "ClientProxy", "build_fab", "recorddict_compat", "secaggplus_stage"]

# What each SecAgg+ stage asks of a site, in the words a report uses
SECAGG_STAGES = {Stage.SETUP: "setup (public keys)",
                 Stage.SHARE_KEYS: "key-share exchange",
                 Stage.COLLECT_MASKED_VECTORS: "masked update (training)",
                 Stage.UNMASK: "unmasking (key shares of the dropped sites)"}


def secaggplus_stage(content: Any) -> str | None:
    """The SecAgg+ stage a server message (its ``RecordDict``) asks for; ``None`` if it
    is no SecAgg+ message."""
    record = content.config_records.get(RECORD_KEY_CONFIGS)
    return None if record is None else str(record.get(Key.STAGE))


def build_fab(folder: Path) -> bytes:
    """The bundle (FAB) bytes ``flwr run FOLDER`` would ship (Flower's own, deterministic build)."""
    from flwr.cli.build import build_fab_from_disk

    return bytes(build_fab_from_disk(folder))
