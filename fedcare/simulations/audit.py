"""Empirical privacy audit of a finished simulation: membership inference at every site.

For each virtual site, the final global model scores the site's training rows
(members) and its held-out rows (non-members); ``fedcare.common.privacy.empirical``
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
from fedcare.common.datasets import load_federated_site
from fedcare.common.datasets.heart_disease import SITES as HEART_SITES
from fedcare.common.privacy.empirical import audit_membership
from fedcare.server.checkpoint import FINAL_MODEL
from fedcare.server.report import REPORT_FILENAME, write_json_atomic

logger = logging.getLogger(__name__)

AUDIT_KEY = "membership-audit"


def _partition_id(config: RunConfig, site: str) -> int:
    if config.dataset == "heart-disease" and config.partitioning == "natural":
        return HEART_SITES.index(site)
    return int(site.removeprefix("site-"))


def audit_run(run_dir: Path, *, num_sites: int, confidence: float = 0.95) -> dict[str, Any]:
    """Audit every site of a finished run; add the results to its ``report.json``."""
    import tensorflow as tf

    report_path = run_dir / REPORT_FILENAME
    report = json.loads(report_path.read_text())
    config = RunConfig.from_mapping(report["config"])
    model = tf.keras.models.load_model(run_dir / FINAL_MODEL)
    results: dict[str, Any] = {}
    for site, row in report["sites"].items():
        data = load_federated_site(
            dataset=config.dataset, partition_id=_partition_id(config, site),
            num_partitions=num_sites, partitioning=config.partitioning,
            data_dir=config.data_dir, split_seed=config.split_seed,
            test_fraction=config.test_fraction, dirichlet_alpha=config.dirichlet_alpha,
            partition_seed=config.partition_seed)
        audit = audit_membership(
            site=site, member_probabilities=model.predict(data.x_train, verbose=0),
            member_labels=data.y_train, non_member_probabilities=model.predict(
                data.x_test, verbose=0), non_member_labels=data.y_test,
            claimed_epsilon=row.get("epsilon"), delta=config.delta, confidence=confidence,
            seed=config.seed)
        results[site] = audit.to_dict()
    report[AUDIT_KEY] = results
    write_json_atomic(report_path, report)
    return report
