"""The site policy: what a hospital allows the consortium to run and to spend at its site.

A hospital writes ``site-policy.toml`` (kebab-case keys at top level) and starts its site
with it. Before any data file is opened the site checks every request against the policy
(:func:`check_run`: the run plan and its bundle hash) and against its own ledger
(:func:`check_spend`: the noise it would use and the epsilon the whole run would cost).
A refusal is a list of reasons in plain words, each naming the key, what was asked and
what the policy allows. The consortium can only lower the site's lifetime budget
(:func:`effective_budget`), never raise it.

The file is read strictly (``tomllib``; unknown keys and bad values are errors naming the
key and the value, every problem at once, as for the run config). Without a file the
documented built-in default applies (:func:`default_policy`); the virtual sites of a
simulation get a permissive policy (:func:`permissive_policy`) so simulations behave as
before. docs/site-policy.md explains every key and the threat model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

from fedcare.common.config import STRATEGIES, RunConfig
from fedcare.common.errors import ConfigError
from fedcare.common.personalised import LOCAL_REFINEMENTS
from fedcare.common.values import is_real as _is_real
from fedcare.privacy.statement import format_delta, format_epsilon

__all__ = [
    "ANY_BUNDLE",
    "BUILT_IN_SOURCE",
    "MEANINGS",
    "POLICY_FILENAME",
    "POLICY_FORMAT",
    "POLICY_VERSION",
    "SIMULATION_SOURCE",
    "SitePolicy",
    "check_run",
    "check_spend",
    "default_policy",
    "describe",
    "effective_budget",
    "format_left",
    "load_policy",
    "local_refinement",
    "parse_policy",
    "permissive_policy",
    "policy_path_for",
    "policy_warnings",
    "project_hash",
]

logger = logging.getLogger(__name__)

POLICY_FILENAME = "site-policy.toml"
POLICY_FORMAT = "fedcare-site-policy"
POLICY_VERSION = 1
BUILT_IN_SOURCE = "built-in default"
SIMULATION_SOURCE = "simulation (permissive)"
ANY_BUNDLE = "any"
#: Flower version whose FAB build :func:`project_hash` reuses (see its docstring).
FAB_BUILD_FLOWER_VERSION = "1.23"
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_HEADER_KEYS = ("format", "version")
_WHERE = "site policy"
_DESCRIBE_VALUE_WIDTH = 8  # values longer than this push their comment right

#: What each key means, in the order :func:`describe` lists them (also the docs' table).
MEANINGS: dict[str, str] = {
    "require-dp": "refuse runs with dp-mode = \"off\"",
    "min-noise-multiplier": "smallest noise multiplier this site trains with",
    "max-epsilon-per-run": "largest epsilon one whole run may cost (this run)",
    "max-delta": "largest delta a run may ask for",
    "lifetime-epsilon-budget": "epsilon this site may spend over all runs; a run may only "
                               "lower it",
    "allowed-bundles": "sha256 hashes of the project folders (FABs) allowed, or \"any\"",
    "max-rounds": "largest num-rounds a run may ask for",
    "allowed-strategies": "aggregation strategies a run may use",
    "require-secure-aggregation": "refuse runs without secure aggregation (secaggplus)",
    "allow-evaluation-metrics": "send evaluation metrics (not covered by DP) to the server",
    "allow-fine-tuning": "allow runs with finetune-epochs > 0",
    "local-refinement": "\"site-only\": the site may also train its personalised model on its "
                        "own rows without DP (kept at the site, never shared); \"dp\": not",
}


@dataclass(frozen=True, kw_only=True)
class SitePolicy:
    """A site's policy. Field ``foo_bar`` is TOML key ``foo-bar``.

    ``source`` says where it came from (a file path, :data:`BUILT_IN_SOURCE` or
    :data:`SIMULATION_SOURCE`); ``simulation`` is True only for the permissive policy
    of a simulation's virtual sites (which may simulate attacks and faults). Neither is
    a TOML key. Constructing a policy validates it like :func:`parse_policy` does.
    """

    require_dp: bool = True
    min_noise_multiplier: float = 0.3
    max_epsilon_per_run: float = 3.0
    max_delta: float = 1e-3
    lifetime_epsilon_budget: float = 5.0
    allowed_bundles: str | tuple[str, ...] = ANY_BUNDLE
    max_rounds: int = 100
    allowed_strategies: tuple[str, ...] = STRATEGIES
    require_secure_aggregation: bool = False
    allow_evaluation_metrics: bool = True
    allow_fine_tuning: bool = True
    local_refinement: str = "dp"
    source: str = BUILT_IN_SOURCE
    simulation: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        for key in _RULES:
            value, problem = _validate(key, getattr(self, _field(key)), where=_WHERE)
            if problem:
                problems.append(problem)
            else:
                object.__setattr__(self, _field(key), value)  # canonical form
        if not isinstance(self.source, str) or not self.source:
            problems.append(f"{_WHERE}: source must be a non-empty string; got {self.source!r}")
        if not isinstance(self.simulation, bool):
            problems.append(f"{_WHERE}: simulation must be true or false; "
                            f"got {self.simulation!r}")
        if problems:
            raise ConfigError(problems)

    @property
    def bundles_pinned(self) -> bool:
        return self.allowed_bundles != ANY_BUNDLE

    def to_mapping(self) -> dict[str, Any]:
        """The TOML keys and values (``parse_policy(p.to_mapping(), ...)`` gives ``p`` back)."""
        return {key: _plain(getattr(self, _field(key))) for key in _RULES}


# ---------------------------------------------------------------- reading a policy


def parse_policy(mapping: Mapping[str, Any], *, where: str) -> SitePolicy:
    """A :class:`SitePolicy` from the top-level keys of a policy file.

    ``where`` names the source in messages (usually the file path) and becomes the
    policy's ``source``. Missing keys take their defaults; ``format`` and ``version``
    are optional and must then be :data:`POLICY_FORMAT` and :data:`POLICY_VERSION`.

    Raises:
        ConfigError: every unknown key and every bad value, each naming key and value.
    """
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, raw in mapping.items():
        if key in _HEADER_KEYS:
            expected: object = POLICY_FORMAT if key == "format" else POLICY_VERSION
            if raw != expected or isinstance(raw, bool):
                problems.append(f"{where}: {key} must be {_show(expected)}; got {_show(raw)}")
            continue
        if key not in _RULES:
            problems.append(f"{where}: unknown key {key!r}; known keys: "
                            f"{', '.join((*_HEADER_KEYS, *_RULES))}")
            continue
        value, problem = _validate(key, raw, where=where)
        if problem:
            problems.append(problem)
        else:
            values[_field(key)] = value
    if problems:
        raise ConfigError(problems)
    return SitePolicy(**values, source=where)


def load_policy(path: Path | None) -> SitePolicy:
    """The policy in ``path`` (strict TOML), or the built-in default when ``path`` is None.

    Raises:
        ConfigError: the file is missing, unreadable, not TOML, or holds bad keys/values.
    """
    if path is None:
        return default_policy()
    where = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{_WHERE}: {where} must be an existing file; got no such file"]) \
            from None
    except OSError as err:
        raise ConfigError([f"{_WHERE}: {where} must be a readable file; "
                           f"got {err.strerror or err}"]) from None
    except UnicodeDecodeError as err:
        raise ConfigError([f"{_WHERE}: {where} must be UTF-8 text; got {err.reason} at byte "
                           f"{err.start}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{where}: must be valid TOML; got {err}"]) from None
    return parse_policy(data, where=where)


def default_policy() -> SitePolicy:
    """The built-in default (every default in :class:`SitePolicy`); applies without a file."""
    return SitePolicy(source=BUILT_IN_SOURCE)


def permissive_policy(config: RunConfig) -> SitePolicy:
    """The policy of a simulation's virtual sites: allows everything ``config`` asks.

    DP may be off, any noise, any bundle and strategy, the run's own rounds, delta and
    epsilon; the lifetime budget is the run's ``epsilon-budget``, so a simulation spends
    exactly as it did before site policies existed.
    """
    budget = config.epsilon_budget
    return SitePolicy(
        require_dp=False,
        min_noise_multiplier=0.0,
        max_epsilon_per_run=max(budget, config.target_epsilon),
        max_delta=config.delta,
        lifetime_epsilon_budget=budget,
        allowed_bundles=ANY_BUNDLE,
        max_rounds=config.num_rounds,
        allowed_strategies=STRATEGIES,
        require_secure_aggregation=False,
        allow_evaluation_metrics=True,
        allow_fine_tuning=True,
        local_refinement="site-only",
        source=SIMULATION_SOURCE,
        simulation=True,
    )


def policy_path_for(state_dir: Path, explicit: Path | None) -> Path | None:
    """Which policy file is in force: ``explicit`` if given, else ``STATE_DIR/site-policy.toml``
    if it exists, else None (the built-in default)."""
    if explicit is not None:
        return Path(explicit)
    beside = Path(state_dir) / POLICY_FILENAME
    return beside if beside.is_file() else None


# ---------------------------------------------------------------- checking a run


def check_run(policy: SitePolicy, config: RunConfig, *, bundle_hash: str) -> list[str]:
    """Every reason the policy refuses the run ``config`` from bundle ``bundle_hash``.

    Static reasons only: what the run plan asks, before the site computes anything from
    its rows or ledger (that is :func:`check_spend`). An empty list: the plan is allowed.
    An empty ``bundle_hash`` means unknown, refused when bundles are pinned.
    """
    reasons: list[str] = []

    def refuse(key: str, rule: str, policy_key: str, asked: object) -> None:
        allowed = _show(_plain(getattr(policy, _field(policy_key))))
        reasons.append(f"policy: {key} must {rule} ({policy_key} = {allowed}); "
                       f"got {_show(asked)}")

    bundle_hash = bundle_hash if isinstance(bundle_hash, str) else ""  # not a hash: unknown
    if policy.bundles_pinned and bundle_hash.lower() not in policy.allowed_bundles:
        pinned = len(policy.allowed_bundles)
        reasons.append(f"policy: bundle hash must be one of allowed-bundles ({pinned} pinned "
                       f"hash{'es' if pinned != 1 else ''}); got "
                       + (_show(bundle_hash) if bundle_hash else '"" (no bundle hash: unknown)'))
    if policy.require_dp and not config.dp_enabled:
        refuse("dp-mode", "not be off", "require-dp", config.dp_mode)
    privacy = config.privacy
    if privacy is not None:
        if (privacy.noise_multiplier is not None
                and not privacy.noise_multiplier >= policy.min_noise_multiplier):
            refuse("noise-multiplier", f"be >= {policy.min_noise_multiplier:g}",
                   "min-noise-multiplier", privacy.noise_multiplier)
        if (privacy.target_epsilon is not None
                and not privacy.target_epsilon <= policy.max_epsilon_per_run):
            cap = policy.max_epsilon_per_run
            reasons.append(f"policy: target-epsilon must be <= {cap:g} (max-epsilon-per-run = "
                           f"{_show(cap)}); got {_show(privacy.target_epsilon)} (this run, "
                           f"delta={format_delta(privacy.delta)}, "
                           f"{privacy.accountant.upper()})")
        if not privacy.delta <= policy.max_delta:
            refuse("delta", f"be <= {policy.max_delta:g}", "max-delta", privacy.delta)
    if config.num_rounds > policy.max_rounds:
        refuse("num-rounds", f"be <= {policy.max_rounds}", "max-rounds", config.num_rounds)
    if config.strategy not in policy.allowed_strategies:
        refuse("strategy", "be one of allowed-strategies", "allowed-strategies", config.strategy)
    if policy.require_secure_aggregation and config.secure_aggregation == "none":
        refuse("secure-aggregation", "not be none", "require-secure-aggregation",
               config.secure_aggregation)
    if not policy.allow_fine_tuning and config.finetune_epochs > 0:
        refuse("finetune-epochs", "be 0", "allow-fine-tuning", config.finetune_epochs)
    if not policy.simulation:
        for key, value in (("malicious-sites", config.malicious_sites),
                           ("fail-sites", config.fail_sites)):
            if value.strip():
                reasons.append(f"policy: {key} must be empty at a deployed site (simulated "
                               f"attacks and faults run only in simulations); got {_show(value)}")
    return reasons


def check_spend(
    policy: SitePolicy, *, noise_multiplier: float, run_epsilon: float, lifetime_before: float,
    lifetime_after: float, lifetime_budget: float, delta: float, accountant: str,
) -> list[str]:
    """Every reason to refuse what the site computed for the whole run from its own rows
    and ledger: the noise multiplier it would train with, this run's epsilon (all rounds
    and fine-tuning) and its lifetime epsilon before and after the run, at ``delta`` with
    ``accountant``. ``lifetime_budget`` is the effective one (:func:`effective_budget`).

    A NaN anywhere is refused (comparisons are written so that NaN fails them).
    """
    reasons: list[str] = []
    at = f"delta={format_delta(delta)}, {accountant.upper()}"
    if not noise_multiplier >= policy.min_noise_multiplier:
        reasons.append(f"policy: noise multiplier must be >= {policy.min_noise_multiplier:g} "
                       f"(min-noise-multiplier = {policy.min_noise_multiplier:g}); got "
                       f"{noise_multiplier:.4g} (what this site would train with in this run)")
    if not run_epsilon <= policy.max_epsilon_per_run:
        reasons.append(f"policy: eps of this run must be <= {policy.max_epsilon_per_run:g} "
                       f"(max-epsilon-per-run = {policy.max_epsilon_per_run:g}); got "
                       f"{format_epsilon(run_epsilon)} (this run, {at})")
    if not lifetime_after <= lifetime_budget:
        left = format_left(max(lifetime_budget - lifetime_before, 0.0))
        reasons.append(f"budget: this run needs eps {format_epsilon(run_epsilon)} (this run, "
                       f"{at}); lifetime at this site would go from "
                       f"{format_epsilon(lifetime_before)} to {format_epsilon(lifetime_after)}, "
                       f"above its budget {lifetime_budget:.2f} ({left} left)")
    return reasons


def effective_budget(policy: SitePolicy, consortium_budget: float) -> float:
    """The lifetime budget in force: the consortium's ``epsilon-budget`` may lower the
    site's ``lifetime-epsilon-budget``, never raise it."""
    if not (_is_real(consortium_budget) and consortium_budget > 0):
        raise ValueError(f"effective_budget: consortium_budget must be a number > 0; "
                         f"got {consortium_budget!r}")
    return min(policy.lifetime_epsilon_budget, float(consortium_budget))


def describe(policy: SitePolicy) -> str:
    """Every key and value, and the source, as commented TOML (a valid policy file)."""
    width = max(len(key) for key in _RULES)
    values = {key: _show(_plain(getattr(policy, _field(key)))) for key in _RULES}
    column = min(max(len(v) for v in values.values()), _DESCRIBE_VALUE_WIDTH)
    lines = [f"# site policy in force: {policy.source}"]
    if policy.simulation:
        lines.append("# (virtual sites of a simulation: everything the run config asks)")
    lines += [f"{'format':<{width}} = {_show(POLICY_FORMAT)}",
              f"{'version':<{width}} = {POLICY_VERSION}"]
    for key, value in values.items():
        lines.append(f"{key:<{width}} = {value:<{column}}  # {MEANINGS[key]}")
    return "\n".join(lines)


def policy_warnings(policy: SitePolicy) -> list[str]:
    """Settings that weaken what the site enforces, for ``fedcare supernode`` and the
    ``policy`` commands to print beside the policy (valid, but worth a second look)."""
    if policy.simulation:
        return []
    warnings: list[str] = []
    if not policy.require_dp:
        warnings.append('require-dp = false: this site trains WITHOUT differential privacy '
                        'when a run asks for it (dp-mode = "off")')
    if policy.min_noise_multiplier == 0:
        warnings.append("min-noise-multiplier = 0: any noise multiplier, however small, is "
                        "accepted (only the epsilon limits then bound the spend)")
    if policy.max_epsilon_per_run > policy.lifetime_epsilon_budget:
        warnings.append(f"max-epsilon-per-run = {_show(policy.max_epsilon_per_run)} is above "
                        f"lifetime-epsilon-budget = {_show(policy.lifetime_epsilon_budget)}: "
                        "the lifetime budget binds first")
    return warnings


# ---------------------------------------------------------------- bundle hash


def project_hash(folder: Path) -> str:
    """sha256 (hex) of the bundle (FAB) ``flwr run FOLDER`` would ship: Flower's ``Run.fab_hash``.

    Reuses Flower's own build (``flwr.cli.build.build_fab_from_disk``, Flower
    :data:`FAB_BUILD_FLOWER_VERSION`), which is deterministic: files filtered by Flower's
    include/exclude patterns and ``.gitignore``, sorted, each stamped with a fixed date;
    ``pyproject.toml`` re-serialised without ``[tool.flwr.federations]``. So the hash
    changes with any shipped ``.py``/``.toml``/``.md`` file, not with federation settings
    or ``--run-config`` overrides (the site checks those with :func:`check_run`).

    Raises:
        ConfigError: ``folder`` is not a folder with a ``pyproject.toml``.
    """
    from fedcare.flower_compat.legacy import build_fab  # Flower's bundle build: pinned above

    installed = importlib.metadata.version("flwr")
    if not installed.startswith(f"{FAB_BUILD_FLOWER_VERSION}."):
        logger.warning("policy hash: written for Flower %s's bundle build; Flower %s is "
                       "installed: check the hash against `flwr build`", FAB_BUILD_FLOWER_VERSION,
                       installed)
    folder = Path(folder)
    if not (folder / "pyproject.toml").is_file():
        raise ConfigError([f"policy hash: {folder} must be a project folder with a "
                           "pyproject.toml; got none there"])
    return hashlib.sha256(build_fab(folder)).hexdigest()


# ---------------------------------------------------------------- internals


def _field(key: str) -> str:
    return key.replace("-", "_")


def _number(rule: str, ok: Callable[[float], bool]) -> Callable[[object], tuple[Any, str]]:
    def check(raw: object) -> tuple[Any, str]:
        if _is_real(raw) and math.isfinite(raw) and ok(float(raw)):  # type: ignore[arg-type]
            return float(raw), ""  # type: ignore[arg-type]
        return raw, rule
    return check


def _boolean(raw: object) -> tuple[Any, str]:
    return (raw, "") if isinstance(raw, bool) else (raw, "true or false")


def _whole(raw: object) -> tuple[Any, str]:
    ok = isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1
    return raw, "" if ok else "a whole number >= 1"


def _names(raw: object) -> tuple[Any, str]:
    rule = f"a non-empty list of distinct names out of {', '.join(STRATEGIES)}"
    if (isinstance(raw, (list, tuple)) and raw and all(isinstance(s, str) for s in raw)
            and set(raw) <= set(STRATEGIES) and len(set(raw)) == len(raw)):
        return tuple(raw), ""
    return raw, rule


def _refinement(raw: object) -> tuple[Any, str]:
    ok = isinstance(raw, str) and raw in LOCAL_REFINEMENTS
    return raw, "" if ok else f"one of {', '.join(repr(m) for m in LOCAL_REFINEMENTS)}"


def local_refinement(policy: SitePolicy, config: RunConfig) -> str:
    """The refinement this site runs: ``"site-only"`` only when the run asks for it AND the
    policy allows it; a run asking for more than the policy allows gets ``"dp"`` (what
    leaves the site is the same either way, so this is not a refusal)."""
    if config.local_refinement == "site-only" and policy.local_refinement != "site-only":
        logger.warning("the run asks local-refinement = \"site-only\"; this site's policy "
                       "(%s) allows \"dp\" only: the personalised model stays DP-only",
                       policy.source)
        return "dp"
    return config.local_refinement


def _bundles(raw: object) -> tuple[Any, str]:
    rule = f"{ANY_BUNDLE!r} or a non-empty list of distinct sha256 hashes (64 hex digits)"
    if raw == ANY_BUNDLE:
        return ANY_BUNDLE, ""
    if (isinstance(raw, (list, tuple)) and raw
            and all(isinstance(h, str) and _SHA256_HEX.fullmatch(h) for h in raw)):
        hashes = tuple(h.lower() for h in raw)
        if len(set(hashes)) == len(hashes):
            return hashes, ""
    return raw, rule


_RULES: dict[str, Callable[[object], tuple[Any, str]]] = {
    "require-dp": _boolean,
    "min-noise-multiplier": _number("a finite number >= 0", lambda x: x >= 0),
    "max-epsilon-per-run": _number("a finite number > 0", lambda x: x > 0),
    "max-delta": _number("a number in (0, 1)", lambda x: 0 < x < 1),
    "lifetime-epsilon-budget": _number("a finite number > 0", lambda x: x > 0),
    "allowed-bundles": _bundles,
    "max-rounds": _whole,
    "allowed-strategies": _names,
    "require-secure-aggregation": _boolean,
    "allow-evaluation-metrics": _boolean,
    "allow-fine-tuning": _boolean,
    "local-refinement": _refinement,
}


def _validate(key: str, raw: object, *, where: str) -> tuple[Any, str | None]:
    value, rule = _RULES[key](raw)
    if rule:
        return raw, f"{where}: {key} must be {rule}; got {_show(raw)}"
    return value, None


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _show(value: object) -> str:
    """A value as TOML would write it: ``true``, ``"off"``, ``0.3``, ``["fedavg"]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (str, int)):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def format_left(x: float) -> str:
    """What is left of a budget, two decimals rounded *down* (never overstated)."""
    return str(Decimal(repr(float(x))).quantize(Decimal("0.01"), rounding=ROUND_FLOOR))
