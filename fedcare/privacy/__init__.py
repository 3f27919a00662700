"""fedcare.privacy: DP settings, accounting, the site ledger and statements.

Everything here imports ``dp_accounting`` only (never TensorFlow). The names below are
imported on first use, so that importing ``fedcare.privacy.config`` (which every run
setting needs) does not load ``dp_accounting`` and scipy (~60 MB): a process that only
reads settings or launches others (``fedcare superlink`` waits on its SuperLink for
days) stays small.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedcare.privacy.accounting import (
        MECHANISM,
        PLD_VALUE_DISCRETIZATION_INTERVAL,
        SAMPLINGS,
        RoundSpend,
        calibrate_noise_multiplier,
        compose_epsilon,
        composed_event,
        finetune_noise_multiplier,
        make_accountant,
        plan_round,
    )
    from fedcare.privacy.config import ACCOUNTANTS, PrivacyConfig
    from fedcare.privacy.ledger import (
        LEDGER_FILENAME,
        LEDGER_FORMAT,
        LEDGER_VERSION,
        LedgerEntry,
        PrivacyLedger,
        utc_now_iso,
    )
    from fedcare.privacy.statement import PrivacyStatement, statement_from_entries

#: The module of each name below (imported by :func:`__getattr__` on first use).
_HOME = {name: f"fedcare.privacy.{module}" for module, names in {
    "accounting": ("MECHANISM", "PLD_VALUE_DISCRETIZATION_INTERVAL", "SAMPLINGS",
                   "RoundSpend", "calibrate_noise_multiplier", "compose_epsilon",
                   "composed_event", "finetune_noise_multiplier", "make_accountant",
                   "plan_round"),
    "config": ("ACCOUNTANTS", "PrivacyConfig"),
    "ledger": ("LEDGER_FILENAME", "LEDGER_FORMAT", "LEDGER_VERSION", "LedgerEntry",
               "PrivacyLedger", "utc_now_iso"),
    "statement": ("PrivacyStatement", "statement_from_entries"),
}.items() for name in names}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "ACCOUNTANTS",
    "LEDGER_FILENAME",
    "LEDGER_FORMAT",
    "LEDGER_VERSION",
    "MECHANISM",
    "PLD_VALUE_DISCRETIZATION_INTERVAL",
    "SAMPLINGS",
    "LedgerEntry",
    "PrivacyConfig",
    "PrivacyLedger",
    "PrivacyStatement",
    "RoundSpend",
    "calibrate_noise_multiplier",
    "compose_epsilon",
    "composed_event",
    "finetune_noise_multiplier",
    "make_accountant",
    "plan_round",
    "statement_from_entries",
    "utc_now_iso",
]
