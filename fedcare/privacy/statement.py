"""Privacy statements: every epsilon fedcare shows comes with what it means.

A statement is per site and covers everything the site's ledger holds (all rounds
of all runs so far), at a named delta, naming the accountant, the adjacency
(add/remove one example) and the sampling assumption (Poisson sampling, as
fedcare's training implements it). Epsilons are rounded *up* for display, never
down, so a statement never understates the spend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any

from fedcare.common.runid import run_of
from fedcare.privacy.config import ACCOUNTANTS, DEFAULT_ACCOUNTANT, UPPER_BOUND_ACCOUNTANT

if TYPE_CHECKING:
    from fedcare.privacy.ledger import LedgerEntry

__all__ = ["ADJACENCY", "PrivacyStatement", "format_delta", "format_epsilon", "run_scope_note",
           "statement_from_entries"]

#: The neighbouring relation every fedcare epsilon is stated under.
ADJACENCY = "add/remove-one"


def format_epsilon(epsilon: float, digits: int = 2) -> str:
    """``epsilon`` rounded up (never down) to ``digits`` decimals; ``inf`` stays ``inf``."""
    if math.isinf(epsilon):
        return "inf"
    quantum = Decimal(1).scaleb(-digits)
    return str(Decimal(repr(float(epsilon))).quantize(quantum, rounding=ROUND_CEILING))


def format_delta(delta: float) -> str:
    """``1e-03`` style when that is exact, else three significant digits."""
    short = f"{delta:.0e}"
    return short if float(short) == delta else f"{delta:.3g}"


def run_scope_note(*, delta: float, accountant: str, sampling: str) -> str:
    """What a run's per-site table of epsilons means, in one sentence (its two scopes, the
    delta, accountant, adjacency and sampling assumption)."""
    assumption = ("assuming Poisson sampling as implemented" if sampling == "poisson"
                  else "shuffled batches, no amplification by sampling claimed")
    return (f"per site, 'eps run' is this run's figure and 'eps life' the lifetime figure at "
            f"that site (every run in its ledger), at delta={delta} ({accountant.upper()} "
            f"accountant, {ADJACENCY} adjacency, {assumption}); never averaged across sites.")


@dataclass(frozen=True, kw_only=True)
class PrivacyStatement:
    """One site's whole-run privacy guarantee, in numbers and in words.

    ``rounds`` and ``steps`` count everything composed into ``epsilon`` (all
    rounds of all runs in the site's ledger). When the rounds did not all use the
    same noise multiplier and sampling rate, ``mixed_parameters`` is True and the
    statement shows the weakest of them (smallest noise multiplier, largest
    sampling rate, largest clip norm); ``epsilon`` is still the exact composition.
    """

    epsilon: float
    delta: float
    accountant: str
    rounds: int
    steps: int
    noise_multiplier: float
    sampling_rate: float
    clip_norm: float
    num_examples: int
    mixed_parameters: bool = False
    sampling: str = "poisson"  # "shuffle" or "poisson+shuffle" when rounds differed
    runs: int = 1  # distinct runs composed into epsilon (all of the site's ledger)
    # The same spends composed by the RDP accountant, when ``accountant`` is another one:
    # a looser upper bound derived independently, shown beside the figure (never instead).
    upper_bound_epsilon: float | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        if math.isnan(self.epsilon) or self.epsilon < 0:
            problems.append(f"PrivacyStatement: epsilon must be >= 0; got {self.epsilon}")
        if not 0 < self.delta < 1:
            problems.append(f"PrivacyStatement: delta must be in (0, 1); got {self.delta}")
        if self.accountant not in ACCOUNTANTS:
            problems.append(f"PrivacyStatement: accountant must be one of "
                            f"{', '.join(ACCOUNTANTS)}; got {self.accountant!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def accountant_label(self) -> str:
        return self.accountant.upper()

    def _q_label(self) -> str:
        prefix = "q<=" if self.mixed_parameters else "q="
        return f"{prefix}{self.sampling_rate:.3g}"

    def sampling_label(self) -> str:
        if self.sampling == "shuffle":
            return "shuffled batches, no amplification by sampling"
        if self.sampling == "poisson":
            return f"Poisson sampling {self._q_label()}"
        return f"Poisson sampling {self._q_label()} and shuffled rounds without amplification"

    @property
    def scope_label(self) -> str:
        """Whose spend the figure covers: everything in the site's ledger."""
        return f"lifetime at this site ({self.runs} run{'s' if self.runs != 1 else ''})"

    def upper_bound_label(self) -> str:
        """``"; RDP upper bound eps=1.00"`` when there is one, else ``""``."""
        if self.upper_bound_epsilon is None:
            return ""
        return (f"; {UPPER_BOUND_ACCOUNTANT.upper()} upper bound "
                f"eps={format_epsilon(self.upper_bound_epsilon)}")

    def short(self) -> str:
        """One line, e.g. ``eps=0.86 at delta=1e-03 (lifetime at this site (1 run), PLD,
        add/remove-one, Poisson sampling q=0.25; RDP upper bound eps=1.00)``."""
        return (f"eps={format_epsilon(self.epsilon)} at delta={format_delta(self.delta)} "
                f"({self.scope_label}, {self.accountant_label}, {ADJACENCY}, "
                f"{self.sampling_label()}{self.upper_bound_label()})")

    def text(self) -> str:
        """A plain-words statement a hospital's governance board can read."""
        eps = format_epsilon(self.epsilon)
        delta = format_delta(self.delta)
        weakest = (" These settings varied between rounds; the figures shown are the weakest"
                   " used (smallest noise multiplier, largest sampling rate and clip norm),"
                   " and epsilon is computed from the exact settings of every round."
                   if self.mixed_parameters else "")
        if self.sampling == "shuffle":
            how = ("each epoch shuffles the rows into fixed-size batches, so every row is used "
                   "at most once per epoch; no amplification by sampling is claimed: each epoch "
                   "is accounted as one full Gaussian mechanism (the conservative bound for "
                   "any data order). Each step")
            assumption = ("the guarantee holds for any order of the shuffled batches, without "
                          "assuming the shuffle is secret or random.")
        else:
            how = ("each training step samples every row independently with probability "
                   f"q = {self.sampling_rate:.4g} (Poisson sampling, as fedcare implements it)"
                   + (" in some rounds, and shuffled batches without amplification in others"
                      if self.sampling != "poisson" else "") + ", then")
            assumption = ("the guarantee holds only under Poisson sampling as implemented. "
                          "If the training data were instead shuffled and batched, this figure "
                          "would not be a proven guarantee.")
        lines = [
            f"Privacy guarantee for this site: epsilon = {eps} at delta = {delta}.",
            "",
            "What is protected: the presence or absence of any single patient row in this "
            f"site's training data ({self.num_examples} rows; example-level, add/remove-one "
            "adjacency). It does not protect a patient who has several rows, beyond what "
            "group privacy gives, and it says nothing about other sites' data.",
            "",
            f"How: {how} "
            f"clips each row's gradient to L2 norm {self.clip_norm:g} and adds Gaussian noise "
            f"with standard deviation {self.noise_multiplier:.4g} x the clip norm to the sum "
            "(DP-SGD)." + weakest,
            "",
            f"Scope: lifetime at this site: everything this site has trained so far, in "
            f"{self.runs} run(s): {self.rounds} federated round(s), {self.steps} noisy steps "
            "in total, including earlier runs "
            "recorded in the site's privacy ledger. It covers every model update sent and "
            "every model derived from them, not just the final one. It is not a per-round "
            "figure, and it is this site's own figure, not an average over sites.",
            "",
            f"Accounting: {self.accountant_label} accountant (dp-accounting), which gives an "
            f"upper bound on epsilon; {assumption}"
            + (f" The {UPPER_BOUND_ACCOUNTANT.upper()} accountant, a looser bound derived "
               f"independently, gives epsilon = {format_epsilon(self.upper_bound_epsilon)} for "
               "the same spends." if self.upper_bound_epsilon is not None else ""),
            "",
            "Not covered by DP: evaluation metrics (accuracy, AUC and the like on held-out "
            "rows) and row counts are released to the server without differential privacy.",
        ]
        if self.delta >= 1.0 / max(self.num_examples, 1):
            lines += ["", f"Caution: delta ({delta}) is not small compared with "
                      f"1/{self.num_examples} (one over the number of rows); a smaller delta "
                      "is recommended."]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for manifests and reports)."""
        data = asdict(self)
        data.update({
            "adjacency": "add-or-remove-one-example",
            "sampling": self.sampling,
            "scope": "all rounds recorded in the site's privacy ledger",
            "short": self.short(),
        })
        return data


def statement_from_entries(
    entries: Sequence[LedgerEntry], *, delta: float, accountant: str = DEFAULT_ACCOUNTANT
) -> PrivacyStatement:
    """The statement for a site's ledger entries (all of them: that is the scope).

    Raises:
        ValueError: no entries (nothing trained yet: there is no guarantee to state).
    """
    # dp-accounting (and with it SciPy) is imported by what composes, not by what only
    # formats statements (the ServerApp; ~45 MB a process)
    from fedcare.privacy.accounting import compose_epsilon

    entries = tuple(entries)
    if not entries:
        raise ValueError("statement_from_entries: entries must not be empty; got none")
    spends = [entry.spend for entry in entries]
    upper = (None if accountant == UPPER_BOUND_ACCOUNTANT else
             compose_epsilon(spends, delta=delta, accountant=UPPER_BOUND_ACCOUNTANT))
    params = {(s.sampling_rate, s.noise_multiplier) for s in spends}
    clips = {entry.clip_norm for entry in entries}
    return PrivacyStatement(
        epsilon=compose_epsilon(spends, delta=delta, accountant=accountant),
        delta=delta,
        accountant=accountant,
        rounds=len(entries),
        steps=sum(s.steps for s in spends),
        noise_multiplier=min(s.noise_multiplier for s in spends),
        sampling_rate=max(s.sampling_rate for s in spends),
        clip_norm=max(clips),
        num_examples=entries[-1].num_examples,
        mixed_parameters=len(params) > 1 or len(clips) > 1,
        sampling="+".join(sorted({s.sampling for s in spends})),
        runs=len({run_of(entry.run_id) for entry in entries}),
        upper_bound_epsilon=upper,
    )
