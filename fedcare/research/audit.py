"""Empirical privacy audit of a finished simulation: membership inference at every site.

For each virtual site, the final global model scores the site's training rows
(members) and its held-out rows (non-members); ``fedcare.privacy.empirical``
turns the attacks' success into an attack AUC and an empirical epsilon *lower bound*,
shown next to the site's claimed whole-run epsilon. A lower bound above the claim
would mean the implementation is broken; a small one proves nothing on its own (with a
few hundred rows even a non-private model usually gets a bound near 0).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fedcare.common.config import RunConfig
from fedcare.common.errors import ConfigError, FedcareError
from fedcare.common.mlp import predict, read_keras_file
from fedcare.data.datasets import load_federated_site
from fedcare.data.datasets.heart_disease import SITES as HEART_SITES
from fedcare.data.schemas import schema_for
from fedcare.privacy.empirical import audit_membership
from fedcare.server.checkpoint import FINAL_MODEL
from fedcare.server.report import REPORT_FILENAME, STATUS_REFUSED, write_json_atomic

logger = logging.getLogger(__name__)

AUDIT_KEY = "membership-audit"


SITES_KEY = "simulated-sites"
"""Where ``run_simulation`` records how many virtual sites the run had."""


def _partition_id(config: RunConfig, site: str, num_sites: int) -> int | None:
    """The partition a site name stands for, or ``None`` (e.g. ``node-7``: a site that
    failed before it said its name)."""
    if config.dataset == "heart-disease" and config.partitioning == "natural":
        return HEART_SITES.index(site) if site in HEART_SITES else None
    number = site.removeprefix("site-")
    if site.startswith("site-") and number.isdigit() and int(number) < num_sites:
        return int(number)
    return None


def run_sites(report: dict[str, Any], num_sites: int | None) -> int:
    """The run's own number of sites; ``num_sites`` (a caller's guess) must agree."""
    recorded = report.get(SITES_KEY)
    config = report["config"]
    if recorded is None and config.get("dataset") == "heart-disease" and \
            config.get("partitioning") == "natural":
        recorded = len(HEART_SITES)
    if recorded is None:
        if num_sites is None:
            raise ConfigError([f"audit: run {report.get('run')!r} must record its number of "
                               "sites (report.json has none: a run from an older fedcare); "
                               "pass --sites"])
        return num_sites
    if num_sites is not None and num_sites != recorded:
        raise ConfigError([f"audit: sites must be the run's own number of sites ({recorded}, "
                           f"from its report.json) or left out; got {num_sites}"])
    return int(recorded)


def _skipped(site: str, reason: str) -> dict[str, Any]:
    return {"site": site, "skipped": reason, "summary": f"{site}: not audited: {reason}"}


def audit_run(run_dir: Path, *, num_sites: int | None = None,
              confidence: float = 0.95) -> dict[str, Any]:
    """Audit every site of a finished run that trained; add the results to its
    ``report.json``. A site that failed, refused or has too few rows is listed as skipped,
    with the reason, instead of ending the audit."""
    report_path = run_dir / REPORT_FILENAME
    report = json.loads(report_path.read_text())
    sites = run_sites(report, num_sites)
    if report.get("status") == STATUS_REFUSED:
        raise ConfigError([f"audit: run {report.get('run')!r} must have trained a model; got "
                           "a refused run (no site trained, no model saved)"])
    config = RunConfig.from_mapping(report["config"])
    # numpy, not TensorFlow: this process never trains. A model that is not the run's
    # ends the audit (ModelMismatch): no site could be scored with it.
    weights = read_keras_file(
        run_dir / FINAL_MODEL, input_dim=len(schema_for(config.dataset).encoded_feature_names()),
        hidden_units=config.hidden_layer_sizes, seed=config.seed)
    results: dict[str, Any] = {}
    for site, row in report["sites"].items():
        partition = _partition_id(config, site, sites)
        if partition is None or not row.get("train-rows"):
            results[site] = _skipped(site, "it did not train in this run (failed or refused)")
            continue
        try:
            data = load_federated_site(
                dataset=config.dataset, partition_id=partition, num_partitions=sites,
                partitioning=config.partitioning, data_dir=config.data_dir,
                split_seed=config.split_seed, test_fraction=config.test_fraction,
                dirichlet_alpha=config.dirichlet_alpha, partition_seed=config.partition_seed)
            audit = audit_membership(
                site=site, member_probabilities=predict(weights, data.x_train),
                member_labels=data.y_train, non_member_probabilities=predict(
                    weights, data.x_test), non_member_labels=data.y_test,
                claimed_epsilon=row.get("epsilon"), delta=config.delta,
                confidence=confidence, seed=config.seed)
        except (ValueError, FedcareError) as err:  # too few rows, a file gone since the run
            logger.warning("membership audit of %s skipped: %s", site, err)
            results[site] = _skipped(site, str(err).splitlines()[0])
            continue
        results[site] = audit.to_dict()
    report[AUDIT_KEY] = results
    write_json_atomic(report_path, report)
    return report
