"""Server side of personalisation: the final fine-tuning message and the report section.

The server never sees a site's private part. After the last round it sends every site
one ``train.finetune`` message carrying the final global model; each site fine-tunes
the global model and its private part on its own rows under DP (recorded in its ledger
first, planned into its whole-run epsilon), keeps the result, and replies with scores
on its held-out rows and its whole-run privacy statement only (no arrays).

The report's ``personalisation`` section puts, per site and as the unweighted mean
over sites, the GLOBAL model's scores (the FLamby Fed-Heart-Disease metric: one shared
model for all sites) beside the site's PERSONALISED model's scores (global model + the
site's private part, fine-tuned if asked), so the two are not confused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.server import Grid

from fedcare.common.config import RunConfig
from fedcare.common.personalised import (
    CANDIDATES,
    DP_CANDIDATES,
    SITE_ONLY_LABEL,
    candidate_key,
    choice_key,
)
from fedcare.server.report import RunRecorder, _finite_mean, _number

logger = logging.getLogger(__name__)

FINETUNE_MESSAGE_TYPE = "train.finetune"


def finetune_round(config: RunConfig) -> int:
    """The ledger round number of the fine-tuning spend: the one after the last round."""
    return config.num_rounds + 1


def run_finetune(grid: Grid, config: RunConfig, *, run_name: str, arrays: ArrayRecord,
                 recorder: RunRecorder, timeout: float,
                 ledger_run_id: str | None = None) -> dict[str, dict[str, Any]]:
    """Ask every connected site to fine-tune the final global model; per-site replies.

    ``ledger_run_id``: the id this attempt's spends are recorded under at the sites
    (``run/attempt-N`` after a resume), so a fine-tuning redone after a crash is a new spend.
    """
    if config.personalisation == "none" or config.finetune_epochs < 1:
        return {}
    server_round = finetune_round(config)
    content = RecordDict({"arrays": arrays, "config": ConfigRecord(
        {"run-name": run_name, "server-round": server_round, "phase": "finetune",
         "ledger-run-id": ledger_run_id or run_name})})
    messages = [Message(content=content, message_type=FINETUNE_MESSAGE_TYPE, dst_node_id=node)
                for node in grid.get_node_ids()]
    logger.info("fine-tuning at %d sites (%d epochs under DP, kept at the sites)",
                len(messages), config.finetune_epochs)
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    recorder.start_round(server_round)
    recorder.record_replies(server_round, "train", replies)
    record = recorder.rounds.pop(server_round)  # not a federated round: reported apart
    for failure in record.failures:
        site = recorder.site_of_node.get(failure["node"], f"node-{failure['node']}")
        logger.warning("fine-tuning failed at %s: %s", site, failure["reason"])
    return record.train


def personalisation_section(config: RunConfig, report: Mapping[str, Any],
                            finetune: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Global vs personalised scores per site and their mean over sites."""
    last_eval: dict[str, dict[str, Any]] = next(
        (r["evaluate"] for r in reversed(report["rounds"]) if r["evaluate"]), {})
    sites: dict[str, dict[str, Any]] = {}
    for site, m in sorted(last_eval.items()):
        personal = finetune.get(site) or m
        sites[site] = {
            "global": {"accuracy": m.get("accuracy"), "auc": m.get("auc")},
            "personalised": {"accuracy": personal.get("personal-accuracy"),
                             "auc": personal.get("personal-auc")},
            "fine-tuned": site in finetune,
        }
        refined = refined_scores(personal)
        if refined is not None:
            sites[site]["refined"] = refined
    mean = {model: {metric: _finite_mean(_number(row[model][metric]) for row in sites.values())
                    for metric in ("accuracy", "auc")} for model in ("global", "personalised")}
    refined_sites = [row["refined"] for row in sites.values() if "refined" in row]
    if refined_sites:
        mean["refined"] = {metric: _finite_mean(_number(r[metric]) for r in refined_sites)
                           for metric in ("accuracy", "auc")}
    return {
        "kind": config.personalisation, "finetune-epochs": config.finetune_epochs,
        "sites": sites, "mean-over-sites": mean,
        "note": "global = the one shared model scored on each site's held-out rows (the FLamby "
                "Fed-Heart-Disease metric); personalised = the shared model plus the site's "
                "private part (a logit offset trained in the same DP steps"
                + (", then fine-tuned under DP" if finetune else "") + "), which never leaves "
                "the site. Each site's epsilon covers both (this run, incl. fine-tuning)."
                + (" refined = the model each site chose on validation rows carved from its "
                   "own training rows (local-refinement = site-only); where it is not the "
                   f"global or offset model: {SITE_ONLY_LABEL}. The epsilons above cover what "
                   "left each site and are unchanged by it." if refined_sites else ""),
    }


def refined_scores(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """A site's refined personalised model as its reply reports it (None: not refined):
    the chosen candidate's scores, every candidate's, and the site-only label if it has one."""
    index = metrics.get(choice_key())
    if index is None:
        return None
    choice = CANDIDATES[int(index)]
    candidates = {c: {"accuracy": metrics[candidate_key(c, "accuracy")],
                      "auc": metrics.get(candidate_key(c, "auc"))}
                  for c in CANDIDATES if candidate_key(c, "accuracy") in metrics}
    return {"choice": choice, **candidates[choice], "candidates": candidates,
            "label": SITE_ONLY_LABEL if choice not in DP_CANDIDATES else
            "personalised model: DP-trained global model and private offset only"}


def apply_finetune_privacy(report: dict[str, Any], finetune: Mapping[str, Mapping[str, Any]],
                           recorder: RunRecorder) -> None:
    """A site's whole-run epsilon includes its fine-tuning spend: take it from the reply."""
    for site, m in finetune.items():
        row = report["sites"].setdefault(site, {})
        if m.get("epsilon") is not None:
            row["epsilon"] = m["epsilon"]
            row["epsilon-includes-finetune"] = True
        if site in recorder.site_privacy:
            report["privacy"][site] = recorder.site_privacy[site]


def format_personalisation(section: Mapping[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return "n/a" if value is None or not math.isfinite(float(value)) else f"{value:.3f}"

    refined = "refined" in section["mean-over-sites"]
    lines = [f"{'site':<16}{'global acc':>11}{'global auc':>11}{'pers. acc':>11}{'pers. auc':>11}"
             + (f"{'refined acc':>12}  refined model" if refined else "")]
    rows = {**section["sites"], "mean over sites": section["mean-over-sites"]}
    for site, row in rows.items():
        line = (f"{site:<16}{fmt(row['global']['accuracy']):>11}"
                f"{fmt(row['global']['auc']):>11}{fmt(row['personalised']['accuracy']):>11}"
                f"{fmt(row['personalised']['auc']):>11}")
        if refined and "refined" in row:
            choice = row["refined"].get("choice")
            line += f"{fmt(row['refined']['accuracy']):>12}  " + (
                "" if choice is None else choice + (
                    " (site-only: never share it)" if choice not in DP_CANDIDATES else ""))
        lines.append(line)
    if refined:
        lines.append(SITE_ONLY_LABEL + " (every model marked site-only above)")
    return "\n".join(lines)
