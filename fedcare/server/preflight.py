"""Pre-flight: before round 1, ask every connected site whether it takes part in the run.

Each site answers from its own policy and ledger (fedcare.site.preflight); the run then
goes on with the sites that accepted only, and only if at least ``min-sites`` did.
Refusals, with their reasons, go into the log, ``report.json`` and the sites' own logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.server import Grid

from fedcare.common.config import RunConfig
from fedcare.common.errors import FedcareError
from fedcare.common.preflight import (
    ANSWER_RECORD,
    KIND_DEPLOYED,
    KNOWN_RECORD,
    PREFLIGHT_MESSAGE,
    REQUEST_RECORD,
    PreflightAnswer,
)
from fedcare.flower_compat import ReplyPoller, reported_gone
from fedcare.server.site_registry import SiteRegistry
from fedcare.server.summary import silent_node_label

logger = logging.getLogger(__name__)

PREFLIGHT_GROUP = "preflight"
CONNECT_POLL_SECONDS = 0.5
#: Once min-sites are connected, the node list is read again this often until it stops
#: growing: sites that connect at the same moment, and a simulation's virtual sites (Flower
#: starts the ServerApp before its engine has registered them all), get the pre-flight too.
NODE_SETTLE_SECONDS = 0.1


class RunRefused(FedcareError):
    """Too few sites accepted the run in pre-flight: it does not start. ``run_dir`` is the
    run folder whose report says so (``None``: a refusal without a report)."""

    def __init__(self, message: str, *, run_dir: Path | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir


@dataclass
class Preflight:
    """Every answer by node id; nodes that did not answer in time; registry flags."""

    answers: dict[int, PreflightAnswer] = field(default_factory=dict)
    silent: list[int] = field(default_factory=list)
    excluded: dict[str, list[str]] = field(default_factory=dict)
    timeout: float | None = None  # round-timeout the answers were awaited for (seconds)
    #: Each silent node's history ("answered as SITE in run RUN"), when it answered before.
    silent_history: dict[int, str] = field(default_factory=dict)
    #: Nodes that answered with a site name another node also gave (neither trains).
    claimed_twice: set[int] = field(default_factory=set)

    @property
    def accepted_nodes(self) -> list[int]:
        return sorted(n for n, a in self.answers.items()
                      if a.accepted and a.site not in self.excluded)

    def sites(self) -> list[str]:
        return sorted(self.answers[n].site for n in self.accepted_nodes)

    def lines(self) -> list[str]:
        out = [a.line() for _, a in sorted(self.answers.items(), key=lambda i: i[1].site)]
        out += [f"{site}: EXCLUDED by the server: {'; '.join(why)}"
                for site, why in sorted(self.excluded.items())]
        waited = ("" if self.timeout is None else
                  f" (round-timeout={self.timeout:g} s; a site calibrating its noise on a busy "
                  "host may need longer: raise round-timeout)")
        out += [f"{silent_node_label(n, self.silent_history.get(n))}: no pre-flight answer "
                f"before the timeout{waited}" for n in self.silent]
        return out

    def to_report(self) -> dict[str, Any]:
        return {"sites": {a.site: {**a.to_record(), "excluded": self.excluded.get(a.site, [])}
                          for a in self.answers.values()},
                "accepted": self.sites(), "silent-nodes": list(self.silent),
                "silent-node-history": {str(n): h for n, h in sorted(self.silent_history.items())}}

    def deployed_sites_by_node(self) -> dict[int, str]:
        """Each deployed site's node id, from this pre-flight's answers (unique names only:
        a name two nodes claimed belongs to neither)."""
        return {node: answer.site for node, answer in self.answers.items()
                if answer.kind == KIND_DEPLOYED and node not in self.claimed_twice}


def _wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    """The connected nodes, once at least ``minimum`` are and their number has stopped
    growing (:data:`NODE_SETTLE_SECONDS`); whatever is connected at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= minimum or time.monotonic() > deadline:
            break
        time.sleep(CONNECT_POLL_SECONDS)
    while time.monotonic() <= deadline:
        time.sleep(NODE_SETTLE_SECONDS)
        latest = sorted(grid.get_node_ids())
        if len(latest) <= len(nodes):
            return latest
        nodes = latest
    return nodes


def _answer_of(reply: Message) -> PreflightAnswer:
    fallback = f"node {reply.metadata.src_node_id} (unnamed)"
    if reply.has_error():
        return PreflightAnswer(site=fallback, accepted=False,
                               reasons=(f"error reply {reply.error.code}: {reply.error.reason}",))
    record = reply.content.config_records.get(ANSWER_RECORD)
    if record is None:
        return PreflightAnswer(site=fallback, accepted=False,
                               reasons=("pre-flight answer: must carry a 'preflight' record",))
    return PreflightAnswer.from_record(dict(record), fallback_site=fallback)


def screen_history(result: Preflight, registry: SiteRegistry, *, run_name: str,
                   accept_site_resets: bool) -> None:
    """Hold each deployed site that accepted to what it reported before (its lifetime eps
    must not go down, its audit chain must extend the last head the server saw): a flagged
    site is excluded unless the run accepts resets; the others are remembered."""
    for answer in result.answers.values():
        if not (answer.accepted and answer.kind == KIND_DEPLOYED):
            continue
        screening = registry.screen(answer.site, answer.history,
                                    accept_site_resets=accept_site_resets)
        if not screening.admitted:
            result.excluded[answer.site] = list(screening.flags)
            continue
        registry.update(answer.site, answer.history, run=run_name)


def remember_outcome(preflight: Preflight, registry: SiteRegistry,
                     rounds: Iterable[Mapping[str, Any]], *, run_name: str) -> None:
    """After the run: each deployed site's last lifetime eps and audit head, as its train
    replies gave them, so the next run holds it to what it spent in this one."""
    last: dict[str, Mapping[str, Any]] = {}
    trained: dict[str, int] = {}
    for rnd in rounds:
        for site, metrics in rnd.get("train", {}).items():
            last[site] = metrics
            trained[site] = trained.get(site, 0) + 1
    for answer in preflight.answers.values():
        metrics = last.get(answer.site)
        if (answer.kind != KIND_DEPLOYED or answer.site in preflight.excluded
                or metrics is None or not answer.history
                or not isinstance(metrics.get("audit-length"), int)):
            continue
        registry.update(answer.site, {
            **answer.history, "lifetime-epsilon": metrics["epsilon"],
            "audit-length": metrics["audit-length"], "audit-head": metrics["audit-hash"],
            "entries": int(answer.history.get("entries", 0)) + trained[answer.site],
            "runs": int(answer.history.get("runs", 0)) + 1}, run=run_name)


def run_preflight(grid: Grid, config: RunConfig, *, run_name: str, ledger_run_id: str,
                  rounds: int, poller: ReplyPoller | None = None,
                  known_heads: Mapping[str, str] | None = None,
                  node_history: Mapping[int, str] | None = None) -> Preflight:
    """Send the pre-flight question to every connected site and read the answers
    (``known_heads``: site -> "length:head" of the audit chain the server last saw;
    ``node_history``: node id -> what it answered as before, to label a silent node)."""
    nodes = _wait_for_nodes(grid, config.min_sites, config.round_timeout)
    request = ConfigRecord({"run-name": run_name, "ledger-run-id": ledger_run_id,
                            "rounds-planned": int(rounds)})
    messages = [Message(  # Flower 1.23 deprecates grid.create_message for this constructor
        RecordDict({REQUEST_RECORD: request,
                    KNOWN_RECORD: ConfigRecord(dict(known_heads or {}))}),
        node, PREFLIGHT_MESSAGE, group_id=PREFLIGHT_GROUP)
        for node in nodes]
    send = poller.send_and_receive if poller is not None else grid.send_and_receive
    replies = list(send(messages, timeout=config.round_timeout))
    result = Preflight(timeout=config.round_timeout)
    for reply in replies:
        result.answers[reply.metadata.src_node_id] = _answer_of(reply)
    result.silent = sorted(set(nodes) - set(result.answers))
    result.silent_history = {n: node_history[n] for n in result.silent
                             if node_history and n in node_history}
    names = [a.site for a in result.answers.values()]
    for node, answer in list(result.answers.items()):
        if names.count(answer.site) > 1:  # two nodes claim one site: neither trains
            result.claimed_twice.add(node)
            result.answers[node] = PreflightAnswer(
                site=f"{answer.site} (node {node})", accepted=False,
                reasons=(f"pre-flight: site name must be unique; got {answer.site!r} "
                         "from several nodes",))
    for line in result.lines():
        logger.info("pre-flight: %s", line)
    return result


class GridWrapper(Grid):  # type: ignore[misc]
    """A grid that hands every call to ``grid``; subclasses change what they need."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run_id: int) -> None:
        self._grid.set_run(run_id)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


class SiteGrid(GridWrapper):
    """The run's grid restricted to the sites that accepted, with a short reply poll
    (``poller``) in deployment; Flower's strategies sample from it as from any grid.

    Flower's strategies wait, without limit, until ``min-sites`` nodes are online before
    each round. A site that died mid-run (its node gone from the SuperLink) would hold
    the run forever; after ``wait_limit`` seconds short of ``min_online`` sites the grid
    shows every accepted site, so the round goes out, the dead sites' messages come
    back as Flower's "Node Unavailable" errors, and the report names them. A site the
    SuperLink has already reported gone in one of this grid's exchanges (e.g. killed
    in a SecAgg+ stage) is not waited for again: it is shown at once, so its next
    message fails at once; it is shown as online again when it reconnects."""

    def __init__(self, grid: Grid, nodes: Iterable[int], poller: ReplyPoller | None, *,
                 min_online: int = 0, wait_limit: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(grid)
        self._nodes = frozenset(nodes)
        self._poller = poller
        self._min_online = min_online
        self._wait_limit = wait_limit
        self._clock = clock
        self._short_since: float | None = None
        self._gone: set[int] = set()  # reported gone by the SuperLink, not back since

    def get_node_ids(self) -> list[int]:
        online = [n for n in self._grid.get_node_ids() if n in self._nodes]
        self._gone.difference_update(online)
        if self._gone and len(online) + len(self._gone) >= self._min_online:
            self._short_since = None
            return sorted([*online, *self._gone])
        if len(online) >= self._min_online or self._wait_limit is None:
            self._short_since = None
            return online
        now = self._clock()
        if self._short_since is None:
            self._short_since = now
            logger.warning("%d of the %d sites that accepted the run are online; min-sites "
                           "is %d: waiting up to %g s", len(online), len(self._nodes),
                           self._min_online, self._wait_limit)
        if now - self._short_since < self._wait_limit:
            return online
        logger.error("%d of the %d sites that accepted the run are still online after %g s; "
                     "the round goes out to every accepted site and the offline ones are "
                     "reported as dropped", len(online), len(self._nodes), self._wait_limit)
        return sorted(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        strays = [m.metadata.dst_node_id for m in messages
                  if m.metadata.dst_node_id not in self._nodes]
        if strays:
            raise RunRefused(f"grid: messages must go to sites that accepted the run; got "
                             f"node(s) {sorted(strays)}")
        return self._grid.push_messages(messages)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        replies = list(self._grid.send_and_receive(messages, timeout=timeout)
                       if self._poller is None else
                       self._poller.send_and_receive(messages, timeout=timeout))
        gone = {r.metadata.src_node_id for r in replies if reported_gone(r)} & self._nodes
        if gone - self._gone:
            logger.warning("the SuperLink reports %d site(s) gone (node ids %s): the run "
                           "no longer waits for them", len(gone - self._gone),
                           sorted(gone - self._gone))
        self._gone.update(gone)
        return replies
