"""What one hospital site does for a round, as plain functions (the ClientApp stays thin).

A site is either a *virtual* site of a simulation (``partition-id`` in its node
config: data comes from a partition of the chosen dataset) or a *real* site of a
deployment (``data-path`` and ``state-dir`` in its node config: data comes from the
hospital's own CSV). Either way it keeps a state directory holding its privacy
ledger and its site-local preprocessing, which never leave the site.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError, LedgerCorrupted, PolicyRefused
from fedcare.common.files import write_json_atomic
from fedcare.common.runid import run_of
from fedcare.data.datasets import SiteData, load_federated_site, load_site_from_csv
from fedcare.flower_compat import BUNDLE_HASH_KEY, BUNDLE_PROBLEMS_KEY, PROBLEM_SEPARATOR
from fedcare.hospital.drift import training_profile
from fedcare.privacy import (
    LedgerEntry,
    PrivacyLedger,
    PrivacyStatement,
    RoundSpend,
    calibrate_noise_multiplier,
    compose_epsilon,
    finetune_noise_multiplier,
    plan_round,
    statement_from_entries,
)
from fedcare.site.audit import AuditRecord, SiteAuditLog
from fedcare.site.personal import PrivatePart, load_private_part, save_private_part
from fedcare.site.policy import (
    SitePolicy,
    check_run,
    check_spend,
    effective_budget,
    load_policy,
    permissive_policy,
)
from fedcare.site.policy import describe as describe_policy
from fedcare.site.site_state import check_site_state, record_spend
from fedcare.site.training import DPSettings, EvalResult, derive_seed, get_trainer, secure_seed

logger = logging.getLogger(__name__)

#: Node-config key `fedcare supernode` sets: the policy file in force ("" = built-in default).
POLICY_PATH_KEY = "policy-path"
PREPROCESSOR_FILENAME = "preprocessor.json"
PROFILE_FILENAME = "training-profile.json"
PROFILE_BINS = 10  # decile bins of the drift profile


@dataclass(frozen=True, kw_only=True)
class SiteSpec:
    """Where a site's data and state live, and the rules it runs under; derived from node
    config once per message. Policy and bundle verdict do not take part in equality, so
    the per-process data cache (:func:`load_site`) is keyed by data and state alone."""

    name: str
    state_dir: Path
    epsilon_budget: float  # lifetime at this site: min(policy, consortium's epsilon-budget)
    server: str = "simulation"  # who this site answers to, as written in its audit log
    partition_id: int | None = None
    num_partitions: int | None = None
    data_path: str | None = None
    policy: SitePolicy | None = field(default=None, compare=False)
    bundle_hash: str = field(default="", compare=False)
    bundle_problems: tuple[str, ...] = field(default=(), compare=False)

    @property
    def deployed(self) -> bool:
        return self.data_path is not None


@dataclass(frozen=True, kw_only=True)
class TrainOutcome:
    weights: list[np.ndarray]
    num_examples: int
    steps: int
    seconds: float
    statement: PrivacyStatement | None  # None only when DP was explicitly switched off
    epsilon_run: float
    audit: AuditRecord | None  # None for fine-tuning: nothing was sent

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num-examples": self.num_examples, "unit-weight": 1,
                               "steps": self.steps,
                                       "train-seconds": round(self.seconds, 4)}
        if self.statement is not None:
            out.update({"epsilon": self.statement.epsilon, "epsilon-run": self.epsilon_run,
                        "runs-at-site": self.statement.runs,
                        "delta": self.statement.delta,
                        "noise-multiplier": self.statement.noise_multiplier,
                        "sampling-rate": self.statement.sampling_rate})
        return out


def resolve_site(config: RunConfig, node_config: Mapping[str, object], *,
                 run_name: str) -> SiteSpec:
    """Read a node's config: a deployment site names its CSV, a virtual one its partition.

    A deployed site runs under its own policy (``policy-path``; "" = the built-in default)
    and the bundle verdict its worker attached (:mod:`fedcare.flower_compat`); a message
    without that verdict did not come through fedcare's site worker and is refused.
    Virtual sites of a simulation run under a permissive policy: whatever the run asks.
    """
    if "data-path" in node_config:
        problems = [f"node config: {key} must be set for a deployed site"
                    for key in ("site-name", "state-dir") if not node_config.get(key)]
        if "epsilon-budget" in node_config:
            problems.append("node config: epsilon-budget is replaced by the site policy's "
                            "lifetime-epsilon-budget (fedcare supernode --policy FILE); got "
                            f"epsilon-budget={node_config['epsilon-budget']!r}")
        if problems:
            raise ConfigError(problems)
        policy = site_policy(str(node_config.get(POLICY_PATH_KEY, "")))
        bundle = node_config.get(BUNDLE_PROBLEMS_KEY)
        bundle_problems = (tuple(p for p in str(bundle).split(PROBLEM_SEPARATOR) if p)
                           if bundle is not None else
                           ("bundle: messages must come through fedcare's site worker "
                            "(`fedcare supernode`), which checks the run's bundle; got a "
                            "message without its verdict",))
        return SiteSpec(name=str(node_config["site-name"]),
                        state_dir=Path(str(node_config["state-dir"])),
                        data_path=str(node_config["data-path"]),
                        epsilon_budget=effective_budget(policy, config.epsilon_budget),
                        server=str(node_config.get("superlink", "deployment")), policy=policy,
                        bundle_hash=str(node_config.get(BUNDLE_HASH_KEY, "")),
                        bundle_problems=bundle_problems)
    try:
        partition_id = int(node_config["partition-id"])  # type: ignore[call-overload]
        num_partitions = int(node_config["num-partitions"])  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError([f"node config: needs data-path (deployment) or partition-id and "
                           f"num-partitions (simulation); got {dict(node_config)!r}"]) from err
    name = site_display_name(config, partition_id)
    root = (Path(config.state_dir) if config.state_dir
            else Path(config.output_dir) / run_name / "sites")
    return SiteSpec(name=name, state_dir=root / name, partition_id=partition_id,
                    num_partitions=num_partitions, epsilon_budget=config.epsilon_budget,
                    policy=permissive_policy(config))


def site_policy(path: str) -> SitePolicy:
    """The policy in force at a deployed site (re-read when its file changes)."""
    if not path:
        return _cached_policy("", 0)
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError as err:
        raise ConfigError([f"site policy: {path} must be a readable file; got "
                           f"{type(err).__name__}"]) from err
    return _cached_policy(path, stamp)


@functools.lru_cache(maxsize=8)
def _cached_policy(path: str, stamp: int) -> SitePolicy:
    policy = load_policy(Path(path) if path else None)
    logger.info("site policy in force (%s):\n%s", policy.source, describe_policy(policy))
    return policy


def admit(config: RunConfig, site: SiteSpec) -> None:
    """Refuse, before any data file is opened, a run the site's policy does not allow or
    whose bundle does not match the installed fedcare. Virtual sites admit every run."""
    if not site.deployed:
        return
    assert site.policy is not None
    reasons = [*site.bundle_problems,
               *check_run(site.policy, config, bundle_hash=site.bundle_hash)]
    if reasons:
        logger.warning("site %s refuses the run: %s", site.name, "; ".join(reasons))
        raise PolicyRefused(reasons)


def site_display_name(config: RunConfig, partition_id: int) -> str:
    if config.dataset == "heart-disease" and config.partitioning == "natural":
        from fedcare.data.datasets.heart_disease import SITES

        return SITES[partition_id] if 0 <= partition_id < len(SITES) else f"site-{partition_id}"
    return f"site-{partition_id}"


def record_refusal(site: SiteSpec, *, run_id: str, phase: str, reasons: Sequence[str]) -> None:
    """Write a deployed site's refusal, with its reasons, to the site's own audit log (a
    log that does not verify is reported, never extended; the refusal stands either way)."""
    if not site.deployed:
        return
    try:
        SiteAuditLog(site.state_dir, site=site.name).append_refusal(
            run_id=run_id, phase=phase, reasons=list(reasons))
    except (LedgerCorrupted, OSError, ValueError) as err:
        logger.error("site %s: refusal not written to the audit log: %s", site.name, err)


def withhold_metrics(site: SiteSpec) -> None:
    """Refuse to send evaluation metrics when the site's policy keeps them in."""
    if site.deployed and site.policy is not None and not site.policy.allow_evaluation_metrics:
        raise PolicyRefused(["policy: evaluation metrics must stay at this site "
                             "(allow-evaluation-metrics = false); got an evaluate request"])


# A simulation worker serves many virtual sites (100 sites on 2 workers: 50 each); with
# fewer cache slots than that, every message reloads, re-splits and re-writes its site.
@functools.lru_cache(maxsize=256)
def load_site(config: RunConfig, site: SiteSpec) -> SiteData:
    """Load, validate, split and preprocess a site's rows once per process."""
    if site.data_path is not None:
        data = load_site_from_csv(path=site.data_path, dataset=config.dataset, site_name=site.name,
                                  split_seed=config.split_seed, test_fraction=config.test_fraction)
    else:
        assert site.partition_id is not None and site.num_partitions is not None
        data = load_federated_site(
            dataset=config.dataset, partition_id=site.partition_id,
            num_partitions=site.num_partitions, partitioning=config.partitioning,
            data_dir=config.data_dir, split_seed=config.split_seed,
            test_fraction=config.test_fraction, dirichlet_alpha=config.dirichlet_alpha,
            partition_seed=config.partition_seed)
    _save_preprocessor(site.state_dir, data)
    logger.info("site %s: %d train rows, %d test rows (%s)", site.name, len(data.y_train),
                len(data.y_test), data.report.summary())
    return data


def _save_preprocessor(state_dir: Path, data: SiteData) -> None:
    """Keep the site-local scaling statistics (for prediction) and a profile of the training
    rows (for drift checks) at the site. Both come from private rows: they never leave it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(state_dir / PREPROCESSOR_FILENAME, data.preprocessor.to_dict())
    if len(data.x_train) < PROFILE_BINS:
        # Too few rows for decile bins: the site still trains; only drift checks are off.
        logger.warning("%s: %d training rows are fewer than the drift profile's %d bins; no "
                       "%s written, so drift checks are unavailable at this site", state_dir,
                       len(data.x_train), PROFILE_BINS, PROFILE_FILENAME)
        return
    write_json_atomic(state_dir / PROFILE_FILENAME,
                      training_profile(data.x_train, data.preprocessor.encoded_feature_names,
                                       bins=PROFILE_BINS))


@functools.lru_cache(maxsize=64)
def noise_multiplier_for(config: RunConfig, num_examples: int) -> float:
    """The noise this site uses: given, or calibrated so the *whole run* meets the target."""
    privacy = config.privacy
    assert privacy is not None
    if privacy.delta >= 1.0 / num_examples:
        logger.warning("delta=%g is not below 1/rows=1/%d at this site: an (eps, delta) "
                       "guarantee with delta >= 1/n can allow revealing a row outright; "
                       "use a smaller delta", privacy.delta, num_examples)
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier
    assert privacy.target_epsilon is not None
    sigma = calibrate_noise_multiplier(
        target_epsilon=privacy.target_epsilon, delta=privacy.delta, num_examples=num_examples,
        batch_size=config.batch_size, local_epochs=config.local_epochs,
        rounds=config.num_rounds, accountant=privacy.accountant, sampling=config.sampling,
        extra_epochs=config.finetune_epochs,  # the final fine-tuning is planned in
        extra_share=config.finetune_budget_share)
    logger.info("calibrated noise multiplier %.4f for %d rows, %d rounds + %d fine-tuning "
                "epochs (%s), target eps %.3g (this run)", sigma, num_examples,
                config.num_rounds, config.finetune_epochs,
                f"{config.finetune_budget_share:g} of the budget" if config.finetune_budget_share
                else "same noise", privacy.target_epsilon)
    return sigma


def finetune_noise_multiplier_for(config: RunConfig, num_examples: int) -> float:
    """The fine-tuning noise: the rounds' one, or (``finetune-budget-share`` > 0) the one
    giving fine-tuning that share of the run's budget (planned jointly with the rounds)."""
    sigma = noise_multiplier_for(config, num_examples)
    if not config.finetune_budget_share:
        return sigma

    def steps(epochs: int) -> int:
        return plan_round(num_examples=num_examples, batch_size=config.batch_size,
                          local_epochs=epochs, noise_multiplier=sigma,
                          sampling=config.sampling).steps

    return finetune_noise_multiplier(sigma, share=config.finetune_budget_share,
                                     round_steps=config.num_rounds * steps(config.local_epochs),
                                     finetune_steps=steps(config.finetune_epochs))


def planned_spends(config: RunConfig, num_examples: int, *, rounds: int) -> list[RoundSpend]:
    """Every spend this site would record for ``rounds`` rounds of the run plus its final
    fine-tuning (when the run asks for one), at the noise it would use."""
    privacy = config.privacy
    assert privacy is not None

    def spend(epochs: int, sigma: float) -> RoundSpend:
        return plan_round(num_examples=num_examples, batch_size=config.batch_size,
                          local_epochs=epochs, noise_multiplier=sigma,
                          sampling=config.sampling)

    spends = [spend(config.local_epochs, noise_multiplier_for(config, num_examples))] * rounds
    if config.personalisation != "none" and config.finetune_epochs > 0:
        spends.append(spend(config.finetune_epochs,
                            finetune_noise_multiplier_for(config, num_examples)))
    return spends


def spend_figures(ledger_spends: Sequence[RoundSpend], run_spends: Sequence[RoundSpend],
                  planned: Sequence[RoundSpend], *, delta: float,
                  accountant: str) -> tuple[float, float, float]:
    """(this run's eps, lifetime eps before, lifetime eps after) once ``planned`` is spent;
    ``run_spends`` are the spends of this run already in the ledger. Composed, never summed."""
    def eps(spends: Sequence[RoundSpend]) -> float:
        return compose_epsilon(list(spends), delta=delta, accountant=accountant) if spends \
            else 0.0

    return (eps([*run_spends, *planned]), eps(ledger_spends),
            eps([*ledger_spends, *planned]))


def _check_round_spend(site: SiteSpec, ledger: PrivacyLedger, spend: RoundSpend, *,
                       run_id: str, delta: float, accountant: str) -> None:
    """The policy's limits for this one spend (noise floor, this run's eps, lifetime)."""
    assert site.policy is not None
    entries = ledger.entries
    run_eps, before, after = spend_figures(
        [e.spend for e in entries],
        [e.spend for e in entries if run_of(e.run_id) == run_of(run_id)], [spend],
        delta=delta, accountant=accountant)
    reasons = check_spend(site.policy, noise_multiplier=spend.noise_multiplier,
                          run_epsilon=run_eps, lifetime_before=before, lifetime_after=after,
                          lifetime_budget=site.epsilon_budget, delta=delta,
                          accountant=accountant)
    if reasons:
        logger.warning("site %s refuses this round: %s", site.name, "; ".join(reasons))
        raise PolicyRefused(reasons)


def train_round(config: RunConfig, site: SiteSpec, weights: Sequence[np.ndarray], *,
                run_id: str, server_round: int, proximal_mu: float) -> TrainOutcome:
    """Train one round from the global ``weights``; spend is recorded *before* training.

    With personalisation on, the site's private part (loaded from its state dir) is
    trained in the same DP steps and saved back there; it is not in the outcome's weights.

    Raises ``PrivacyBudgetExceeded`` (nothing trained, nothing recorded) when the round
    would take the site past its budget.
    """
    return _train(config, site, weights, run_id=run_id, server_round=server_round,
                  proximal_mu=proximal_mu, epochs=config.local_epochs, phase="round")


def finetune_site(config: RunConfig, site: SiteSpec, weights: Sequence[np.ndarray], *,
                  run_id: str, server_round: int) -> tuple[TrainOutcome, EvalResult]:
    """After the last round: adapt the private part (``finetune-scope = "private"``: on the
    final global ``weights``, which stay as they are) or also the site's own copy of the
    shared weights (``"all"``) on this site's rows under DP (``finetune-epochs`` epochs,
    recorded in the ledger first, as round ``server_round``); keep the result at the site
    as its personalised model and score it on the site's held-out rows. Nothing trained
    here is sent."""
    if config.personalisation == "none" or config.finetune_epochs < 1:
        raise ConfigError([f"site {site.name}: fine-tuning needs personalisation on and "
                           f"finetune-epochs >= 1; got {config.personalisation!r}, "
                           f"{config.finetune_epochs!r}"])
    outcome = _train(config, site, weights, run_id=run_id, server_round=server_round,
                     proximal_mu=0.0, epochs=config.finetune_epochs, phase="finetune")
    personal = evaluate_personalised(config, site, weights, run_id=run_id)
    assert personal is not None  # _train has just saved this run's private part
    return outcome, personal


def _train(config: RunConfig, site: SiteSpec, weights: Sequence[np.ndarray], *, run_id: str,
           server_round: int, proximal_mu: float, epochs: int, phase: str) -> TrainOutcome:
    data = load_site(config, site)
    privacy = config.privacy
    trainer = get_trainer(input_dim=data.x_train.shape[1], hidden_units=config.hidden_layer_sizes,
                          local_optimizer=config.local_optimizer, dp_backend=config.dp_backend)
    n = len(data.y_train)
    trainer.set_weights(weights)  # rejects incompatible arrays before anything is spent
    personal = config.personalisation != "none"
    # The private part belongs to the run, whichever attempt (resume) trains it.
    part = _private_part(site, run_of(run_id)) if personal else None
    if part is not None:
        # A round continues from the last iterate; fine-tuning starts from the offset the
        # personalised model uses (the tail average, if any).
        trainer.set_offset(part.offset if phase == "finetune" else part.last_iterate)
    audit = SiteAuditLog(site.state_dir, site=site.name)
    # Ledger, audit log and marker must agree before anything is spent: an emptied,
    # truncated, edited or deleted one stops the site (fedcare ledger reset starts over).
    check_site_state(site.state_dir, site=site.name,
                     delta=privacy.delta if privacy else None,
                     accountant=privacy.accountant if privacy else None)
    dp: DPSettings | None = None
    statement: PrivacyStatement | None = None
    ledger: PrivacyLedger | None = None
    if privacy is None:
        logger.warning("site %s: DP is OFF (dp-mode=off): this update carries no privacy "
                       "guarantee", site.name)
    else:
        sigma = (finetune_noise_multiplier_for(config, n) if phase == "finetune"
                 else noise_multiplier_for(config, n))
        spend = plan_round(num_examples=n, batch_size=config.batch_size,
                           local_epochs=epochs, noise_multiplier=sigma,
                           sampling=config.sampling)
        ledger = PrivacyLedger(site.state_dir, site=site.name)
        if site.deployed:
            _check_round_spend(site, ledger, spend, run_id=run_id, delta=privacy.delta,
                               accountant=privacy.accountant)
        entry = LedgerEntry.now(run_id=run_id, server_round=server_round, spend=spend,
                                clip_norm=privacy.clip_norm, num_examples=n)
        ledger.record(entry, delta=privacy.delta, budget=site.epsilon_budget,
                      accountant=privacy.accountant)
        record_spend(site.state_dir, site=site.name, entry=entry, phase=phase,
                     delta=privacy.delta, accountant=privacy.accountant)
        dp = DPSettings(noise_multiplier=sigma, clip_norm=privacy.clip_norm)
    learning_rate = config.learning_rate
    offset_lr = config.offset_learning_rate or learning_rate
    if phase == "finetune" and config.finetune_learning_rate:
        learning_rate = offset_lr = config.finetune_learning_rate
    result = trainer.train(
        data.x_train, data.y_train, epochs=epochs, batch_size=config.batch_size,
        learning_rate=learning_rate, offset_learning_rate=offset_lr, dp=dp,
        proximal_mu=proximal_mu,
        sampling=config.sampling, sampling_seed=derive_seed(config.seed, site.name, server_round),
        noise_seed=secure_seed() if config.secure_noise else derive_seed(
            config.seed, site.name, server_round, "noise"), personal=personal,
        train_shared=phase == "round" or config.finetune_scope == "all")
    logger.info("site %s %s %d: %d steps in %.2fs, local train loss %.4f (kept at the site)",
                site.name, phase, server_round, result.steps, result.seconds, result.mean_loss)
    sent = trainer.get_weights()
    if part is not None:
        save_private_part(site.state_dir, part.trained(
            offset=trainer.get_offset(), run=run_of(run_id), global_round=server_round,
            phase=phase,
            weights=sent if phase == "finetune" and config.finetune_scope == "all" else None,
            average=phase == "round" and averages_round(config, server_round)))
    epsilon_run = math.nan
    epsilon_round: float | None = None
    if privacy is not None and ledger is not None:
        statement = statement_from_entries(ledger.entries, delta=privacy.delta,
                                           accountant=privacy.accountant)
        # Every attempt of this run (a round redone after a server crash is a new spend).
        this_run = [e.spend for e in ledger.entries if run_of(e.run_id) == run_of(run_id)]
        epsilon_run = (statement.epsilon if len(this_run) == len(ledger.entries) else
                       compose_epsilon(this_run, delta=privacy.delta,
                                       accountant=privacy.accountant))
        epsilon_round = compose_epsilon([ledger.entries[-1].spend], delta=privacy.delta,
                                        accountant=privacy.accountant)
    record = None
    if phase == "round":  # the audit log records what was sent; fine-tuning sends nothing
        record = audit.append(
            run_id=run_id, server_round=server_round, server=site.server, sent=sent,
            received=list(weights), epsilon_round=epsilon_round,
            epsilon_total=statement.epsilon if statement else None,
            delta=privacy.delta if privacy else None,
            accountant=privacy.accountant if privacy else None, train_rows=n)
    return TrainOutcome(weights=sent, num_examples=n, steps=result.steps,
                        seconds=result.seconds, statement=statement, epsilon_run=epsilon_run,
                        audit=record)


def averages_round(config: RunConfig, server_round: int) -> bool:
    """Tail averaging: the personalised offset is the mean of the iterates of the last
    half of the rounds (``offset-averaging = "tail"``)."""
    return config.offset_averaging == "tail" and server_round > config.num_rounds // 2


def _private_part(site: SiteSpec, run_id: str) -> PrivatePart:
    stored = load_private_part(site.state_dir)
    if stored is None:
        return PrivatePart(offset=0.0, version=0, run=run_id, global_round=0)
    if stored.run != run_id:
        logger.info("site %s: private part v%d is from run %s; run %s starts a fresh offset",
                    site.name, stored.version, stored.run, run_id)
    return stored.for_run(run_id)


def evaluate_personalised(config: RunConfig, site: SiteSpec, weights: Sequence[np.ndarray],
                          *, run_id: str) -> EvalResult | None:
    """Score the site's personalised model (``weights`` + its private part) on its held-out
    rows; ``None`` when personalisation is off. A site with no private part of this run (it
    has not trained yet, or refused to) would predict with the global model, so that is what
    is scored (every site's reply then has the same metric keys, as Flower requires)."""
    if config.personalisation == "none":
        return None
    part = load_private_part(site.state_dir)
    data = load_site(config, site)
    trainer = get_trainer(input_dim=data.x_train.shape[1], hidden_units=config.hidden_layer_sizes,
                          local_optimizer=config.local_optimizer, dp_backend=config.dp_backend)
    trainer.set_weights(part.apply(weights) if part is not None and part.run == run_id
                        else weights)
    return trainer.evaluate(data.x_test, data.y_test)


def evaluate_round(config: RunConfig, site: SiteSpec, weights: Sequence[np.ndarray]) -> EvalResult:
    """Score the global model on this site's held-out rows."""
    data = load_site(config, site)
    trainer = get_trainer(input_dim=data.x_train.shape[1], hidden_units=config.hidden_layer_sizes,
                          local_optimizer=config.local_optimizer, dp_backend=config.dp_backend)
    trainer.set_weights(weights)
    return trainer.evaluate(data.x_test, data.y_test)
