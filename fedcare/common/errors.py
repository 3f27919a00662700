"""The fedcare exception hierarchy.

Every message follows one grammar: ``<where>: <name> must be <rule>; got <value>``.
Validators collect all problems first and raise once, so a user fixes a file or a
config in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence


def describe_value(value: object) -> str:
    """Render ``value`` for the ``...; got <value>`` tail of an error message."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "nothing"
    return str(value)


class FedcareError(Exception):
    """Base class for every error fedcare raises on purpose."""


class ConfigError(FedcareError, ValueError):
    """A run, node or privacy setting is invalid. Lists every problem found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems) if len(self.problems) == 1 else
                         f"{len(self.problems)} config problems:\n  " + "\n  ".join(self.problems))


class DataValidationError(FedcareError, ValueError):
    """A site's data file failed validation. ``problems`` holds every finding."""

    def __init__(self, source: str, problems: Sequence[object], *,
                 total: int | None = None) -> None:
        self.source = source
        self.problems = tuple(problems)
        self.total = len(self.problems) if total is None else total  # the list may be capped
        lines = "\n  ".join(str(p) for p in self.problems)
        super().__init__(f"{source}: {self.total} data problem(s):\n  {lines}")


class PrivacyBudgetExceeded(FedcareError):
    """Training the planned round would take a site past its epsilon budget."""


class PolicyRefused(FedcareError):
    """The site's own policy (or the code check of the run's bundle) refuses the run."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("site refuses: " + "; ".join(self.reasons))


class RoundAlreadyRecorded(FedcareError, ValueError):
    """A site was asked to spend privacy for a (run, round) its ledger already holds."""


class LedgerCorrupted(FedcareError):
    """A site's privacy ledger cannot be read or fails its integrity checks."""


class SiteStateInconsistent(LedgerCorrupted):
    """A site's ledger, audit log and state marker disagree (a file missing, emptied,
    truncated or edited); the site refuses to spend until an operator resets it."""


class ModelMismatch(FedcareError, ValueError):
    """A model, its manifest and a preprocessing file do not belong together."""



class UnsafePayload(FedcareError, ValueError):
    """Arrays from the network are not plain floating-point numbers of the expected form."""


class UpdateRejected(FedcareError, ValueError):
    """A site's update failed the server's checks and was kept out of the aggregate."""


class SiteRegistryCorrupted(FedcareError):
    """The server's record of each site's reported history cannot be read or trusted."""


class CheckpointCorrupted(FedcareError):
    """A server resume checkpoint is incomplete or fails its integrity checks."""
