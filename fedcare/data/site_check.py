"""One site's pre-flight: data quality and DP readiness, for people to read before a run.

The same check serves ``fedcare check-csv`` (a data manager's file), ``fedcare supernode``
(a hospital joining a consortium) and ``fedcare simulate`` (once per virtual site, in the
log). Its findings are warnings; callers decide whether they block (``--strict``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from fedcare.common.config import RunConfig
from fedcare.data.datasets import federated_site_tables, schema_for
from fedcare.data.quality import DataQualityReport, assess_quality
from fedcare.data.validate import MissingPolicy, SiteTable, load_site_csv
from fedcare.privacy.readiness import DpReadiness, assess_readiness, model_parameters

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteCheck:
    """A site's data-quality report and, when DP is on, its DP-readiness estimate."""

    site: str
    quality: DataQualityReport
    readiness: DpReadiness | None

    def lines(self) -> list[str]:
        out = self.quality.lines()
        if self.readiness is not None:
            out.extend(self.readiness.lines())
        else:
            out.append(f"DP readiness of {self.site}: DP is off for this run; no estimate")
        return out


def train_rows(config: RunConfig, rows: int) -> int:
    """The rows a site trains on after its held-out split (as ``split_train_test``)."""
    return max(rows - math.ceil(config.test_fraction * rows), 0)


def readiness_for(config: RunConfig, *, site: str, rows: int) -> DpReadiness | None:
    """The noise a site of ``rows`` kept rows will get under ``config`` (``None``: DP off)."""
    privacy = config.privacy
    if privacy is None:
        return None
    schema = schema_for(config.dataset)
    return assess_readiness(
        site=site, train_rows=train_rows(config, rows),
        target_epsilon=privacy.target_epsilon, noise_multiplier=privacy.noise_multiplier,
        delta=privacy.delta, rounds=config.num_rounds, batch_size=config.batch_size,
        local_epochs=config.local_epochs, clip_norm=privacy.clip_norm,
        accountant=privacy.accountant, sampling=config.sampling,
        parameters=model_parameters(len(schema.encoded_feature_names()),
                                    config.hidden_layer_sizes))


def check_table(site: str, table: SiteTable, config: RunConfig) -> SiteCheck:
    schema = schema_for(config.dataset)
    return SiteCheck(site=site, quality=assess_quality(table, schema),
                     readiness=readiness_for(config, site=site, rows=len(table)))


def check_csv_file(path: str | os.PathLike[str], config: RunConfig, *, site: str | None = None,
                   missing: MissingPolicy = "drop", allow_symlinks: bool = False) -> SiteCheck:
    """Validate a site file (``DataValidationError`` listing every problem), then assess it."""
    table = load_site_csv(path, schema_for(config.dataset), missing=missing,
                          allow_symlinks=allow_symlinks)
    return check_table(site or os.path.basename(os.fspath(path)), table, config)


def preflight_simulation(config: RunConfig, num_sites: int) -> list[SiteCheck]:
    """Every virtual site's data, read and checked before the engine starts: a missing or
    broken file fails here with its own message (not inside a worker's traceback), and
    each site's quality and readiness are logged once."""
    tables = federated_site_tables(
        dataset=config.dataset, num_partitions=num_sites, partitioning=config.partitioning,
        data_dir=config.data_dir, dirichlet_alpha=config.dirichlet_alpha,
        partition_seed=config.partition_seed)
    checks = [check_table(name, table, config) for name, table in tables]
    for check in checks:
        log = logger.warning if check.quality.warned else logger.info
        log("%s", "\n".join(check.lines()))
    return checks


def joining_site_lines(site: str, table: SiteTable, *, dataset: str, strict: bool) -> list[str]:
    """What ``fedcare supernode`` prints before it joins: the CSV's data-quality report and
    a DP-readiness estimate at the project's default run settings (the consortium's run
    config decides the actual noise). ``strict``: warnings raise ``DataValidationError``."""
    check = check_table(site, table, RunConfig(dataset=dataset))
    if strict:
        check.quality.raise_if_warned()
    return [*check.lines(), "(DP readiness assumes the project's default run settings; the "
                            "consortium's run config decides the actual noise)"]
