"""The run report: what every site spent and scored, round by round.

``report.json`` is the record; ``global-metrics.png`` and ``site-epsilon.png`` are
for people. Each site's epsilon is its own figure, this run's and lifetime at the site
(the composition of all its recorded rounds) at the stated delta; it is never averaged
across sites.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Message

from fedcare.common.files import write_json_atomic
from fedcare.server.summary import REFUSED, write_summary
from fedcare.server.validation import site_of

logger = logging.getLogger(__name__)

REPORT_FILENAME = "report.json"
REPORT_FORMAT = "fedcare-run-report"
REPORT_VERSION = 1
PLOT_GLOBAL = "global-metrics.png"
PLOT_EPSILON = "site-epsilon.png"
#: ``report["status"]`` of a run in which no site trained (refused in pre-flight, or every
#: site refused or failed in every round): no model is written.
STATUS_REFUSED = REFUSED
STATUS_COMPLETED = "completed"
NO_REPLY_REASON = "no reply before the round timeout"


def _number(value: Any) -> float:
    """A metric as a float; ``None`` (how JSON holds an undefined AUC) becomes NaN."""
    return math.nan if value is None else float(value)


def _finite_mean(values: Iterable[float]) -> float:
    kept = [v for v in values if math.isfinite(v)]
    return sum(kept) / len(kept) if kept else math.nan


def summarize_evaluation(per_site: Mapping[str, Mapping[str, Any]]) -> dict[str, float | int]:
    """Global-model figures over sites' held-out rows.

    ``mean-site-accuracy`` is the unweighted mean of per-site accuracies (the FLamby
    Fed-Heart-Disease primary metric); ``pooled-accuracy`` weights by test rows,
    i.e. accuracy on all held-out rows together; ``mean-site-auc`` averages the sites
    whose held-out rows contain both classes (``sites-with-auc`` says how many).
    """
    sites = list(per_site.values())
    total = sum(int(m["num-examples"]) for m in sites)
    correct = sum(_number(m["accuracy"]) * int(m["num-examples"]) for m in sites)
    aucs = [a for a in (_number(m["auc"]) for m in sites) if math.isfinite(a)]
    return {
        "sites": len(sites),
        "num-examples": total,
        "mean-site-accuracy": _finite_mean(_number(m["accuracy"]) for m in sites),
        "pooled-accuracy": correct / total if total else math.nan,
        "mean-site-auc": _finite_mean(aucs),
        "sites-with-auc": len(aucs),
    }


@dataclass
class RoundRecord:
    server_round: int
    started: float
    seconds: float = math.nan
    train: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluate: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    capped: dict[str, dict[str, float]] = field(default_factory=dict)
    update_norms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.server_round, "seconds": self.seconds, "train": self.train,
                "evaluate": self.evaluate, "failures": self.failures,
                "rejected": self.rejected, "capped-example-counts": self.capped,
                "update-norms": self.update_norms,
                "global": summarize_evaluation(self.evaluate) if self.evaluate else {}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRecord:
        """A round as :meth:`to_dict` wrote it (failures already named by site)."""
        return cls(server_round=int(data["round"]), started=math.nan,
                   seconds=_number(data["seconds"]), train=dict(data["train"]),
                   evaluate=dict(data["evaluate"]), failures=list(data["failures"]),
                   rejected=list(data.get("rejected", [])),
                   capped=dict(data.get("capped-example-counts", {})),
                   update_norms=dict(data.get("update-norms", {})))


class RunRecorder:
    """Collects per-site replies; knows node ids only to name failed sites."""

    def __init__(self, *, run_name: str, run_config: Mapping[str, Any]) -> None:
        self.run_name = run_name
        self.run_config = dict(run_config)
        self.rounds: dict[int, RoundRecord] = {}
        self.site_of_node: dict[int, str] = {}
        self.site_privacy: dict[str, str] = {}
        self.preflight: dict[str, Any] | None = None
        self.started = time.time()

    def start_round(self, server_round: int) -> None:
        self.rounds[server_round] = RoundRecord(server_round=server_round, started=time.time())

    def end_round(self, server_round: int) -> None:
        record = self.rounds[server_round]
        record.seconds = time.time() - record.started
        summary = summarize_evaluation(record.evaluate) if record.evaluate else {}
        logger.info("round %d: %s", server_round, format_global(summary))

    def record_replies(self, server_round: int, phase: str, replies: list[Message]) -> None:
        record = self.rounds.setdefault(
            server_round, RoundRecord(server_round=server_round, started=time.time()))
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self.record_failure(server_round, phase, node, code=msg.error.code,
                                    reason=str(msg.error.reason))
                continue
            content = msg.content
            site = site_of(msg)
            self.site_of_node[node] = site
            metrics = {k: _jsonable(v) for k, v in
                       next(iter(content.metric_records.values())).items()}
            getattr(record, phase)[site] = metrics
            if phase == "train" and "site" in content:
                info = content["site"]
                if "privacy" in info:
                    self.site_privacy[site] = str(info["privacy"])
                for key in ("audit-hash", "update-sha256"):
                    if key in info:
                        metrics[key] = str(info[key])
                if isinstance(info.get("audit-length"), int):
                    metrics["audit-length"] = info["audit-length"]

    def record_failure(self, server_round: int, phase: str, node: int, *, code: int | None,
                       reason: str) -> None:
        """A site that was sent work and replied with an error (``code``), or not at all."""
        record = self.rounds.setdefault(
            server_round, RoundRecord(server_round=server_round, started=time.time()))
        record.failures.append({"node": node, "phase": phase, "code": code, "reason": reason})
        logger.warning("round %d %s: %s %s: %s", server_round, phase,
                       self.site_of_node.get(node, f"node-{node}"),
                       "dropped out" if code is None else "did not contribute", reason)

    def record_unanswered(self, server_round: int, phase: str, sent: Iterable[int],
                          replies: Iterable[Message], *, reason: str = NO_REPLY_REASON) -> None:
        """Each site that was ``sent`` work and is not among the ``replies`` (no reply
        before the timeout)."""
        answered = {m.metadata.src_node_id for m in replies}
        for node in sorted(set(sent) - answered):
            self.record_failure(server_round, phase, node, code=None, reason=reason)

    def record_rejections(self, server_round: int, rejections: Iterable[Any],
                          capped: Mapping[str, tuple[float, int]],
                          norms: Mapping[str, float] | None = None) -> None:
        """Replies that failed update validation, example counts that were capped, and the
        accepted updates' norms."""
        record = self.rounds.setdefault(
            server_round, RoundRecord(server_round=server_round, started=time.time()))
        record.rejected.extend(r.to_dict() for r in rejections)
        record.capped.update({site: {"claimed": claimed, "used": used}
                              for site, (claimed, used) in capped.items()})
        record.update_norms.update(norms or {})

    def state(self) -> dict[str, Any]:
        """Rounds so far, as the report holds them, for a checkpoint to resume from."""
        rounds = self.to_dict(final={})["rounds"]
        return {"rounds": rounds, "privacy": dict(self.site_privacy)}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.rounds = {int(r["round"]): RoundRecord.from_dict(r) for r in state["rounds"]}
        self.site_privacy = {str(k): str(v) for k, v in state["privacy"].items()}

    def to_dict(self, *, final: Mapping[str, Any]) -> dict[str, Any]:
        """The report. Failed replies are named by site: a site that refused to train
        may be known only from its later evaluation replies."""
        rounds = [self.rounds[r].to_dict() for r in sorted(self.rounds)]
        for rnd in rounds:
            rnd["failures"] = [{"site": f.get("site") or
                                self.site_of_node.get(f["node"], f"node-{f['node']}"),
                                **{k: v for k, v in f.items() if k not in ("node", "site")}}
                               for f in rnd["failures"]]
        out = {"format": REPORT_FORMAT, "version": REPORT_VERSION, "run": self.run_name,
               "status": STATUS_COMPLETED, "seconds": time.time() - self.started,
               "config": self.run_config, "sites": site_table(rounds),
               "privacy": dict(sorted(self.site_privacy.items())), "final": dict(final),
               "rounds": rounds}
        if self.preflight is not None:
            out["preflight"] = self.preflight
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def site_table(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per site: its latest training figures (rows, eps this run and lifetime at the site)
    and latest evaluation."""
    table: dict[str, dict[str, Any]] = {}
    for rnd in rounds:
        for site, m in rnd["train"].items():
            row = table.setdefault(site, {})
            row.update({"train-rows": m.get("num-examples"), "rounds-trained":
                        row.get("rounds-trained", 0) + 1, "epsilon": m.get("epsilon"),
                        # scopes: this run (all its attempts) and the site's whole ledger
                        "epsilon-run": m.get("epsilon-run"),
                        "epsilon-lifetime": m.get("epsilon"),
                        "runs-at-site": m.get("runs-at-site"),
                        "delta": m.get("delta"), "noise-multiplier": m.get("noise-multiplier")})
        for site, m in rnd["evaluate"].items():
            table.setdefault(site, {}).update({"test-rows": m.get("num-examples"),
                                               "accuracy": m.get("accuracy"), "auc": m.get("auc")})
        for failure in rnd["failures"]:
            row = table.setdefault(failure["site"], {})
            row["failures"] = row.get("failures", 0) + 1
        for rejection in rnd.get("rejected", []):
            row = table.setdefault(rejection["site"], {})
            row["rejected-updates"] = row.get("rejected-updates", 0) + 1
    return dict(sorted(table.items()))


def format_global(summary: Mapping[str, Any]) -> str:
    if not summary:
        return "no evaluation results"
    auc = summary.get("mean-site-auc")
    return (f"mean site accuracy {_fmt(summary.get('mean-site-accuracy'))}, pooled accuracy "
            f"{_fmt(summary.get('pooled-accuracy'))}, mean site AUC {_fmt(auc)} "
            f"({summary.get('sites-with-auc')}/{summary.get('sites')} sites with both classes)")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def format_site_table(report: Mapping[str, Any]) -> str:
    """A fixed-width table for terminals and logs."""
    header = (f"{'site':<16}{'train':>6}{'test':>6}{'eps run':>9}{'eps life':>9}"
              f"{'delta':>9}{'acc':>7}{'auc':>7}")
    lines = [header, "-" * len(header)]
    dp_on = report.get("config", {}).get("dp-mode", "off") != "off"
    refusals = report.get("refusals") or {}
    for site, row in report["sites"].items():
        delta = row.get("delta")
        if site in refusals:  # the whole run was refused: this site never trained
            lines.append(f"{site:<16}{'-':>6}{row.get('test-rows') or '-':>6}{'refused':>9}"
                         f"{'-':>9}{'-':>9}{'-':>7}{'-':>7}")
            continue
        lines.append(f"{site:<16}{row.get('train-rows') or '-':>6}{row.get('test-rows') or '-':>6}"
                     f"{_fmt(row.get('epsilon-run'), 3):>9}"
                     f"{_fmt(row.get('epsilon-lifetime', row.get('epsilon')), 3):>9}"
                     f"{(f'{delta:.0e}' if delta else '-' if dp_on else 'no DP'):>9}"
                     f"{_fmt(row.get('accuracy')):>7}{_fmt(row.get('auc')):>7}")
    return "\n".join(lines)


def write_report(run_dir: Path, report: Mapping[str, Any], *, plots: bool = True) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / REPORT_FILENAME
    write_json_atomic(path, report)
    write_summary(run_dir, report, path)
    if plots:
        plot_report(run_dir, report)
    return path


MAX_SITE_LINES = 12
"""Above this many sites the epsilon plot shows the range over sites, not a line each."""


def epsilon_by_round(rounds: list[dict[str, Any]], site: str) -> list[tuple[int, float]]:
    """(round, lifetime epsilon) of one site, for the rounds it trained with DP."""
    pts = [(r["round"], r["train"][site].get("epsilon")) for r in rounds if site in r["train"]]
    return [(x, float(y)) for x, y in pts if y is not None]


def epsilon_band(rounds: list[dict[str, Any]]) -> tuple[list[int], list[float], list[float]]:
    """Per round with any DP spend: the smallest and the largest site's lifetime epsilon
    (each site's own figure; nothing is averaged across sites)."""
    xs, low, high = [], [], []
    for r in rounds:
        eps = [float(m["epsilon"]) for m in r["train"].values() if m.get("epsilon") is not None]
        if eps:
            xs.append(r["round"])
            low.append(min(eps))
            high.append(max(eps))
    return xs, low, high


def _import_plotting() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot


def _prefetch() -> None:
    try:
        _import_plotting()
    except Exception:  # plot_report imports it again and reports what is wrong
        logger.debug("report: matplotlib prefetch failed", exc_info=True)


def prefetch_plotting() -> None:
    """Import matplotlib in a background thread while the rounds run: importing it takes
    ~1 s of CPU, which otherwise lies between the last round and the report.
    :func:`plot_report`'s own import waits for this one (Python's import lock)."""
    threading.Thread(target=_prefetch, name="fedcare-plot-import", daemon=True).start()


def plot_report(run_dir: Path, report: Mapping[str, Any]) -> None:
    """Global accuracy/AUC by round, and each site's lifetime epsilon by round."""
    _import_plotting()
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = report["rounds"]
    xs = [r["round"] for r in rounds if r["global"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("mean-site-accuracy", "mean site accuracy"),
                       ("pooled-accuracy", "pooled accuracy"), ("mean-site-auc", "mean site AUC")):
        ys = [r["global"].get(key) for r in rounds if r["global"]]
        ax.plot(xs, [math.nan if y is None else y for y in ys], marker="o", label=label)
    ax.set(xlabel="round", ylabel="global model on held-out rows", ylim=(0, 1),
           title=f"run {report['run']}")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / PLOT_GLOBAL, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    if len(report["sites"]) <= MAX_SITE_LINES:
        for site in report["sites"]:
            pts = epsilon_by_round(rounds, site)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=site)
    else:  # hundreds of lines and legend entries say nothing (and took minutes to lay out)
        xs_band, low, high = epsilon_band(rounds)
        ax.fill_between(xs_band, low, high, alpha=0.3,
                        label=f"range over {len(report['sites'])} sites (each its own eps)")
        ax.plot(xs_band, high, marker="o", label="largest site's eps")
    budget = report["config"].get("epsilon-budget")
    if budget:
        ax.axhline(budget, color="red", linestyle="--", label="site budget")
    delta = report["config"].get("delta")
    ax.set(xlabel="round", ylabel=f"epsilon spent so far (delta={delta})",
           title="each site's epsilon, lifetime at the site")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / PLOT_EPSILON, dpi=110)
    plt.close(fig)
