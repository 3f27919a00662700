"""fedcare.privacy: DP settings, accounting, the site ledger and statements.

Everything here imports ``dp_accounting`` only (never TensorFlow), so it is cheap to
import from the client, the server and the tools.
"""

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
