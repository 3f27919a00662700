"""Run settings: ``[tool.flwr.app.config]`` (kebab-case) parsed once into a frozen dataclass.

The same parser serves ``flwr run .`` (Flower hands us ``context.run_config``), the
``fedcare`` CLI (flags become overrides) and the tests. Unknown keys are rejected,
numbers arriving from TOML as ``int`` are coerced explicitly, and every problem is
collected and raised together as one :class:`~fedcare.common.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fedcare.common.errors import ConfigError
from fedcare.common.personalised import LOCAL_REFINEMENTS
from fedcare.data.schemas import SCHEMAS
from fedcare.privacy.config import DEFAULT_ACCOUNTANT, PrivacyConfig

#: The named data sets: one per schema (``fedcare/data/schemas.py``), in its order.
DATASETS: tuple[str, ...] = tuple(SCHEMAS)
PARTITIONINGS: tuple[str, ...] = ("natural", "iid", "dirichlet")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg", "krum")
DP_MODES = ("target-epsilon", "noise-multiplier", "off")
DP_BACKENDS = ("bookkeeping", "tfp-fast-clipping")
SAMPLINGS = ("poisson", "shuffle")
LOCAL_OPTIMIZERS = ("sgd", "adam")
ATTACKS = ("sign-flip", "scale", "noise", "nan")
#: Set (to "1") by fedcare's simulation runner in its process and workers: only then may a
#: virtual site take malicious-sites / fail-sites (fedcare.site.faults).
SIMULATION_ENV = "FEDCARE_SIMULATION"
FAIL_MODES = ("crash", "hang")
SECURE_AGGREGATIONS = ("none", "secaggplus")
SECAGG_STRATEGIES = ("fedavg", "fedprox")  # the server sees only the sum: no robust rules
SECAGG_MIN_SITES = 3  # with 2, each site learns the other's update from the average
PERSONALISATIONS = ("none", "offset")
FINETUNE_SCOPES = ("private", "all")
OFFSET_AVERAGINGS = ("none", "tail")
PLAN_MODES = ("auto", "off")
PLANNED_DATASETS = ("heart-disease",)
"""Datasets with a budget-aware plan table (``fedcare plan``; research/heart_plan.py)."""
MAX_HIDDEN_UNITS = 4096
NO_HIDDEN_LAYERS = "none"  # hidden-units = "none": logistic regression
MAX_STEP_SIZE = 100.0
"""Learning rates above this only blow a model up (a clipped step of lr * clip-norm)."""
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A run name is one folder inside output-dir: no separators, no '..', no leading dot."""


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Every setting of a federated run. Field ``foo_bar`` is config key ``foo-bar``."""

    # data
    dataset: str = "breast-cancer"
    data_dir: str = ""
    partitioning: str = "iid"
    dirichlet_alpha: float = 0.5
    partition_seed: int = 0
    split_seed: int = 43
    test_fraction: float = 0.25
    # federation
    num_rounds: int = 10
    strategy: str = "fedavg"
    fraction_train: float = 1.0
    min_sites: int = 2
    proximal_mu: float = 0.01
    server_learning_rate: float = 0.1
    trimmed_beta: float = 0.2
    krum_byzantine: int = 0
    # local training
    local_epochs: int = 1
    batch_size: int = 32
    sampling: str = "poisson"
    learning_rate: float = 0.1
    local_optimizer: str = "sgd"
    hidden_units: str = "64,32"
    seed: int = 0
    # personalisation (site-private offset, trained inside the DP step; docs/personalisation.md)
    personalisation: str = "none"
    finetune_epochs: int = 0
    finetune_scope: str = "private"
    finetune_budget_share: float = 0.0  # 0: fine-tuning at the rounds' noise multiplier
    finetune_learning_rate: float = 0.0  # 0: learning-rate
    offset_learning_rate: float = 0.0  # 0: learning-rate
    offset_averaging: str = "none"
    local_refinement: str = "dp"  # site-only: non-DP refinement kept at the site (policy too)
    # auto: `fedcare simulate` took every setting not set explicitly from `fedcare plan`
    plan: str = "off"
    # differential privacy
    dp_mode: str = "target-epsilon"
    target_epsilon: float = 1.0
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    delta: float = 1e-3
    epsilon_budget: float = 5.0
    accountant: str = DEFAULT_ACCOUNTANT  # pld; rdp is reported beside it as an upper bound
    dp_backend: str = "bookkeeping"
    secure_noise: bool = True
    site_dp: bool = False
    site_noise_multiplier: float = 1.0
    site_clip_norm: float = 0.5
    site_delta: float = 1e-2
    # robustness: update validation, dropouts, resume; attacks and failures (simulation only)
    max_update_norm: float = 0.0
    max_examples_per_site: int = 100_000
    round_timeout: float = 600.0
    server_poll_interval: float = 0.05  # deployment: seconds between the server's reply pulls
    resume: bool = False
    accept_site_resets: bool = False  # admit a site whose history went back (docs: site registry)
    malicious_sites: str = ""
    attack: str = "sign-flip"
    attack_scale: float = 10.0
    fail_sites: str = ""
    fail_round: int = 1
    fail_mode: str = "crash"
    # secure aggregation (SecAgg+): the server sees only the sum of site updates
    secure_aggregation: str = "none"
    # outputs
    output_dir: str = "runs"
    run_name: str = ""
    state_dir: str = ""

    def __post_init__(self) -> None:
        problems = _type_problems(self)
        if not problems:
            problems = _value_problems(self)
            try:  # the privacy keys are validated here, once, by PrivacyConfig itself
                _ = self.privacy
            except ConfigError as err:
                problems.extend(err.problems)
        if problems:
            raise ConfigError(problems)

    # -- derived views -------------------------------------------------------------
    @property
    def dp_enabled(self) -> bool:
        return self.dp_mode != "off"

    @property
    def hidden_layer_sizes(self) -> tuple[int, ...]:
        return _parse_hidden_units(self.hidden_units)

    @property
    def malicious_partitions(self) -> tuple[int, ...]:
        return _parse_ids(self.malicious_sites)

    @property
    def fail_partitions(self) -> tuple[int, ...]:
        return _parse_ids(self.fail_sites)

    @functools.cached_property
    def privacy(self) -> PrivacyConfig | None:
        """The run's privacy settings, built and validated once when this config was parsed
        (``__post_init__``); ``None`` when DP is explicitly off (``dp-mode = "off"``)."""
        return _privacy_of(self)

    def to_run_config(self) -> dict[str, Any]:
        """The kebab-case mapping Flower carries as ``run_config``."""
        return {_key(f.name): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> RunConfig:
        """Parse a kebab-case mapping (``context.run_config`` or CLI overrides).

        Missing keys take the defaults above; unknown keys are an error.
        """
        known = {_key(f.name): f for f in fields(cls)}
        problems: list[str] = []
        values: dict[str, Any] = {}
        for key, raw in mapping.items():
            field = known.get(key)
            if field is None:
                problems.append(
                    f"config: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
                continue
            coerced, problem = _coerce(key, raw, _field_type(field))
            if problem:
                problems.append(problem)
            else:
                values[field.name] = coerced
        if problems:
            raise ConfigError(problems)
        return cls(**values)


def _privacy_of(c: RunConfig) -> PrivacyConfig | None:
    """``dp-mode`` picks the way in; the other way's key is not read."""
    if not c.dp_enabled:
        return None
    common = {"clip_norm": c.clip_norm, "delta": c.delta, "epsilon_budget": c.epsilon_budget,
              "accountant": c.accountant}
    if c.dp_mode == "target-epsilon":
        return PrivacyConfig.with_target_epsilon(c.target_epsilon, **common)
    return PrivacyConfig.with_noise(c.noise_multiplier, **common)


def _key(name: str) -> str:
    return name.replace("_", "-")


def _field_type(field: dataclasses.Field[Any]) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[str(field.type)]


def _coerce(key: str, raw: Any, kind: type) -> tuple[Any, str | None]:
    """Coerce TOML/CLI values explicitly: ``10`` may stand for ``10.0``; nothing else moves."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw, None
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true", None
        return raw, f"config: {key} must be true or false; got {raw!r}"
    if isinstance(raw, bool):
        return raw, f"config: {key} must be a {kind.__name__}; got {raw!r}"
    if kind is float:
        if isinstance(raw, (int, float)):
            return float(raw), None
        if isinstance(raw, str):
            try:
                return float(raw), None
            except ValueError:
                pass
        return raw, f"config: {key} must be a number; got {raw!r}"
    if kind is int:
        if isinstance(raw, int):
            return raw, None
        if isinstance(raw, float) and raw.is_integer():
            return int(raw), None
        if isinstance(raw, str):
            try:
                return int(raw), None
            except ValueError:
                pass
        return raw, f"config: {key} must be a whole number; got {raw!r}"
    if isinstance(raw, str):
        return raw, None
    return raw, f"config: {key} must be a string; got {raw!r}"


def _type_problems(config: RunConfig) -> list[str]:
    problems = []
    for field in fields(config):
        value = getattr(config, field.name)
        kind = _field_type(field)
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(config, field.name, float(value))
            ok = True
        if not ok:
            problems.append(f"config: {_key(field.name)} must be a {kind.__name__}; got {value!r}")
    return problems


def _parse_hidden_units(text: str) -> tuple[int, ...]:
    if text.strip() == NO_HIDDEN_LAYERS:  # logistic regression: one Dense(1) layer
        return ()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    sizes = tuple(int(p) for p in parts)  # ValueError surfaces through _value_problems
    if not sizes or any(s < 1 or s > MAX_HIDDEN_UNITS for s in sizes):
        raise ValueError(text)
    return sizes


def _parse_ids(text: str) -> tuple[int, ...]:
    """``"0, 3"`` -> ``(0, 3)``: partition ids of virtual sites; ``""`` -> none."""
    ids = tuple(int(p) for p in (p.strip() for p in text.split(",")) if p)
    if any(i < 0 for i in ids):
        raise ValueError(text)
    return ids


def _choice(problems: list[str], key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        problems.append(f"config: {key} must be one of {', '.join(allowed)}; got {value!r}")


def _check(problems: list[str], ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        problems.append(f"config: {key} must be {rule}; got {value!r}")


def _finite(x: float) -> bool:
    return math.isfinite(x)


def _value_problems(c: RunConfig) -> list[str]:
    p: list[str] = []
    _choice(p, "dataset", c.dataset, DATASETS)
    _choice(p, "partitioning", c.partitioning, PARTITIONINGS)
    _choice(p, "strategy", c.strategy, STRATEGIES)
    _choice(p, "dp-mode", c.dp_mode, DP_MODES)
    _choice(p, "dp-backend", c.dp_backend, DP_BACKENDS)
    _choice(p, "sampling", c.sampling, SAMPLINGS)
    _choice(p, "local-optimizer", c.local_optimizer, LOCAL_OPTIMIZERS)
    _choice(p, "personalisation", c.personalisation, PERSONALISATIONS)
    _check(p, c.finetune_epochs >= 0, "finetune-epochs", ">= 0", c.finetune_epochs)
    _choice(p, "finetune-scope", c.finetune_scope, FINETUNE_SCOPES)
    _check(p, _finite(c.finetune_budget_share) and 0 <= c.finetune_budget_share < 1,
           "finetune-budget-share", "in [0, 1)", c.finetune_budget_share)
    if c.finetune_budget_share and not c.finetune_epochs:
        p.append(f"config: finetune-budget-share must be 0 when finetune-epochs is 0 (no "
                 f"fine-tuning to spend it on); got {c.finetune_budget_share!r}")
    for key, value in (("finetune-learning-rate", c.finetune_learning_rate),
                       ("offset-learning-rate", c.offset_learning_rate)):
        _check(p, _finite(value) and 0 <= value <= MAX_STEP_SIZE, key,
               f"in [0, {MAX_STEP_SIZE:g}] (0: learning-rate)", value)
    _choice(p, "offset-averaging", c.offset_averaging, OFFSET_AVERAGINGS)
    _choice(p, "plan", c.plan, PLAN_MODES)
    if c.plan == "auto" and (c.dataset not in PLANNED_DATASETS or c.dp_mode != "target-epsilon"):
        p.append(f"config: plan must be off unless dataset is one of "
                 f"{', '.join(PLANNED_DATASETS)} and dp-mode is target-epsilon (the plan is "
                 f"chosen by the target budget); got {c.plan!r}")
    _choice(p, "local-refinement", c.local_refinement, LOCAL_REFINEMENTS)
    if c.local_refinement == "site-only" and (c.personalisation == "none"
                                              or c.finetune_epochs < 1):
        p.append(f"config: local-refinement must be dp unless personalisation is offset and "
                 f"finetune-epochs >= 1 (site-only refinement runs in the site's final step); "
                 f"got {c.local_refinement!r}")
    if c.finetune_epochs and c.personalisation == "none":
        p.append(f"config: finetune-epochs must be 0 when personalisation is none (fine-tuning "
                 f"makes the site's personalised model); got {c.finetune_epochs!r}")
    if c.personalisation != "none" and c.dp_enabled and c.dp_backend != "bookkeeping":
        p.append(f"config: dp-backend must be bookkeeping when personalisation is on (the "
                 f"private offset is clipped inside its book-keeping step); "
                 f"got {c.dp_backend!r}")
    _check(p, _finite(c.dirichlet_alpha) and c.dirichlet_alpha > 0, "dirichlet-alpha", "> 0",
           c.dirichlet_alpha)
    _check(p, 0 < c.test_fraction < 1, "test-fraction", "in (0, 1)", c.test_fraction)
    _check(p, c.num_rounds >= 1, "num-rounds", ">= 1", c.num_rounds)
    _check(p, 0 < c.fraction_train <= 1, "fraction-train", "in (0, 1]", c.fraction_train)
    _check(p, c.min_sites >= 1, "min-sites", ">= 1", c.min_sites)
    _check(p, _finite(c.proximal_mu) and c.proximal_mu >= 0, "proximal-mu", ">= 0", c.proximal_mu)
    _check(p, _finite(c.server_learning_rate) and 0 < c.server_learning_rate <= MAX_STEP_SIZE,
           "server-learning-rate", f"in (0, {MAX_STEP_SIZE:g}]", c.server_learning_rate)
    _check(p, 0 <= c.trimmed_beta < 0.5, "trimmed-beta", "in [0, 0.5)", c.trimmed_beta)
    _check(p, c.krum_byzantine >= 0, "krum-byzantine", ">= 0", c.krum_byzantine)
    _check(p, c.local_epochs >= 1, "local-epochs", ">= 1", c.local_epochs)
    _check(p, c.batch_size >= 1, "batch-size", ">= 1", c.batch_size)
    _check(p, _finite(c.learning_rate) and 0 < c.learning_rate <= MAX_STEP_SIZE,
           "learning-rate", f"in (0, {MAX_STEP_SIZE:g}]", c.learning_rate)
    _check(p, c.run_name == "" or RUN_NAME_PATTERN.fullmatch(c.run_name) is not None,
           "run-name", "a folder name of letters, digits, '.', '_' or '-' (no '/', no "
           "leading '.'; the run folder stays inside output-dir)", c.run_name)
    for seed_key, seed in (("seed", c.seed), ("split-seed", c.split_seed),
                           ("partition-seed", c.partition_seed)):
        _check(p, 0 <= seed < 2**32, seed_key, "in [0, 2**32)", seed)
    try:
        _parse_hidden_units(c.hidden_units)
    except ValueError:
        p.append(f"config: hidden-units must be comma-separated sizes in [1, {MAX_HIDDEN_UNITS}] "
                 f"such as '64,32', or 'none' (logistic regression); got {c.hidden_units!r}")
    _choice(p, "attack", c.attack, ATTACKS)
    _choice(p, "fail-mode", c.fail_mode, FAIL_MODES)
    _check(p, _finite(c.max_update_norm) and c.max_update_norm >= 0, "max-update-norm",
           ">= 0 (0 = no bound)", c.max_update_norm)
    _check(p, c.max_examples_per_site >= 1, "max-examples-per-site", ">= 1",
           c.max_examples_per_site)
    _check(p, _finite(c.round_timeout) and c.round_timeout > 0, "round-timeout", "> 0 seconds",
           c.round_timeout)
    _check(p, _finite(c.server_poll_interval) and 0 < c.server_poll_interval <= 3,
           "server-poll-interval", "in (0, 3] seconds", c.server_poll_interval)
    _check(p, _finite(c.attack_scale) and c.attack_scale > 0, "attack-scale", "> 0",
           c.attack_scale)
    _check(p, c.fail_round >= 1, "fail-round", ">= 1", c.fail_round)
    for ids_key, ids in (("malicious-sites", c.malicious_sites), ("fail-sites", c.fail_sites)):
        try:
            _parse_ids(ids)
        except ValueError:
            p.append(f"config: {ids_key} must be comma-separated partition ids >= 0 such as "
                     f"'0,3'; got {ids!r}")
    if c.site_dp:
        _check(p, _finite(c.site_noise_multiplier) and c.site_noise_multiplier > 0,
               "site-noise-multiplier", "> 0 when site-dp is on", c.site_noise_multiplier)
        _check(p, _finite(c.site_clip_norm) and c.site_clip_norm > 0, "site-clip-norm",
               "> 0 when site-dp is on", c.site_clip_norm)
        _check(p, 0 < c.site_delta < 1, "site-delta", "in (0, 1)", c.site_delta)
        _check(p, c.fraction_train == 1.0, "fraction-train",
               "1.0 when site-dp is on (every site, every round)", c.fraction_train)
    _choice(p, "secure-aggregation", c.secure_aggregation, SECURE_AGGREGATIONS)
    if c.secure_aggregation == "secaggplus":
        _check(p, c.strategy in SECAGG_STRATEGIES, "strategy",
               f"one of {', '.join(SECAGG_STRATEGIES)} with secure-aggregation=secaggplus "
               "(the server sees only the sum of updates)", c.strategy)
        _check(p, not c.site_dp, "site-dp", "false with secure-aggregation=secaggplus "
               "(server-side clipping needs each site's update)", c.site_dp)
        _check(p, c.min_sites >= SECAGG_MIN_SITES, "min-sites",
               f">= {SECAGG_MIN_SITES} with secure-aggregation=secaggplus (with 2 sites each "
               "learns the other's update)", c.min_sites)
    return p
