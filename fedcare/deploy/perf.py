"""``fedcare perf-deploy``: a real TLS federation on 127.0.0.1, measured (a benchmark,
not a test: its figures go in docs/performance.md).

Reports seconds per round (median of rounds 2..N from the run's report), peak RSS of the
whole process tree (sampled from /proc), each process's peak RSS, each process's idle
CPU (sites connected, no run), and how long the server takes to drop a site killed
mid-round.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fedcare.deploy.memory import proc_kb
from fedcare.deploy.testbed import Testbed, wait_until, write_synthetic_heart

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY = 0.25
IDLE_WINDOW = 10.0
SETTLE = 3.0
ROWS_PER_SITE = 150
RUN_TIMEOUT = 900.0
DEAD_SITE_ROUNDS = 3
DEAD_SITE_TIMEOUT = 30.0  # round-timeout of the dead-site run (seconds)
MB = 1024.0
ROUND_DONE = "aggregate_evaluate: Received"  # Flower's line at the end of each round


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def descendants(roots: Iterable[int]) -> set[int]:
    """``roots`` and every process below them, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def rss_kb(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[21]) * PAGE_KB if fields else 0


def pss_kb(pid: int) -> int:
    """Proportional set size: resident memory with each shared page divided among the
    processes that map it (``/proc/PID/smaps_rollup``); 0 if unreadable. Four sites on
    one host share TensorFlow's library pages, which each one's RSS counts whole."""
    return proc_kb(Path(f"/proc/{pid}/smaps_rollup"), "Pss") or 0


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICKS if fields else 0.0


def label(pid: int, names: dict[int, str]) -> str:
    if pid in names:
        return names[pid]
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    return name_of(argv) or str(pid)


def name_of(argv: list[bytes]) -> str:
    """A process's name in the table, from its command line ("" if it has none)."""
    words = [Path(a.decode(errors="replace")).name for a in argv if a]
    if "fedcare.flower_compat" in words:  # python -m fedcare.flower_compat superexec ...
        return f"flower-{words[words.index('fedcare.flower_compat') + 1]} (fedcare)"
    if "fedcare.cli" in words:  # python -m fedcare.cli certs sync ... (a helper)
        start = words.index("fedcare.cli") + 1
        return " ".join(["fedcare", *[w for w in words[start:start + 2]
                                      if not w.startswith("-")]])
    named = [w for w in words if w.startswith(("flwr-", "flower-"))]
    return named[0] if named else (words[0] if words else "")


@dataclass
class Sampler:
    """Samples the RSS of a process tree until stopped; keeps peaks."""

    roots: dict[int, str]
    peak_total_kb: int = 0
    peak_kb: dict[str, int] = field(default_factory=dict)
    peak_total_pss_kb: int = 0
    peak_pss_kb: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        total = total_pss = 0
        for pid in descendants(self.roots):
            kb = rss_kb(pid)
            if not kb:
                continue
            pss = pss_kb(pid)
            total += kb
            total_pss += pss
            name = label(pid, self.roots)
            self.peak_kb[name] = max(self.peak_kb.get(name, 0), kb)
            self.peak_pss_kb[name] = max(self.peak_pss_kb.get(name, 0), pss)
        self.peak_total_kb = max(self.peak_total_kb, total)
        self.peak_total_pss_kb = max(self.peak_total_pss_kb, total_pss)

    def run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self.sample()

    def start(self) -> None:
        threading.Thread(target=self.run, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def idle_cpu(roots: dict[int, str], window: float) -> dict[str, float]:
    """Per process: percent of one core used over ``window`` seconds."""
    pids = descendants(roots)
    before = {pid: cpu_seconds(pid) for pid in pids}
    time.sleep(window)
    return {label(pid, roots): 100.0 * (cpu_seconds(pid) - before[pid]) / window
            for pid in pids}


@dataclass(frozen=True)
class PerfResult:
    sites: int
    rounds: int
    round_seconds: tuple[float, ...]
    peak_total_mb: float
    peak_mb: dict[str, float]
    idle_cpu: dict[str, float]
    dead_site_seconds: float | None
    dead_site_line: str
    #: the same peaks as proportional set sizes (:func:`pss_kb`)
    peak_total_pss_mb: float = 0.0
    peak_pss_mb: dict[str, float] = field(default_factory=dict)

    @property
    def median_round(self) -> float:
        steady = self.round_seconds[1:] or self.round_seconds
        return statistics.median(steady)

    def table(self) -> str:
        lines = [f"perf-deploy: {self.sites} sites, {self.rounds} rounds, TLS + node auth, "
                 "DP on, loopback",
                 f"{'s/round (median of rounds 2..N)':<40} {self.median_round:.2f}",
                 f"{'s/round (each)':<40} "
                 + ", ".join(f"{s:.2f}" for s in self.round_seconds),
                 f"{'peak RSS, whole process tree':<40} {self.peak_total_mb / MB:.2f} GB",
                 f"{'peak PSS, whole process tree':<40} {self.peak_total_pss_mb / MB:.2f} GB",
                 "per process: peak RSS, peak PSS (shared pages divided among the processes "
                 "that map them), idle CPU:"]
        for name in sorted(self.peak_mb):
            cpu = self.idle_cpu.get(name)
            shown = "-" if cpu is None else f"{cpu:.1f} % of a core idle"
            pss = self.peak_pss_mb.get(name)
            pss_shown = "-" if pss is None else f"{pss:4.0f} MB"
            lines.append(f"  {name:<38} {self.peak_mb[name]:7.0f} MB  {pss_shown:>7}   {shown}")
        dead = ("not measured" if self.dead_site_seconds is None
                else f"{self.dead_site_seconds:.1f} s after the kill")
        lines.append(f"{'site killed mid-round dropped':<40} {dead}")
        if self.dead_site_line:
            lines.append(f"  {self.dead_site_line.strip()}")
        return "\n".join(lines)


def _run_config(out: Path, name: str, sites: int, rounds: int, extra: str = "") -> str:
    return (f'dataset="heart-disease" num-rounds={rounds} min-sites={sites} '
            f'output-dir="{out}" run-name="{name}" target-epsilon=1.0 delta=0.001 {extra}')


def _wait_report(bed: Testbed, streamed: object, path: Path) -> dict[str, object]:
    proc = streamed.proc  # type: ignore[attr-defined]
    proc.wait(timeout=RUN_TIMEOUT)
    if not path.exists():
        raise RuntimeError(f"perf-deploy: the run wrote no report {path}; see {bed.root}")
    return dict(json.loads(path.read_text()))


def run_perf(root: Path, *, sites: int, rounds: int, poll_interval: float | None,
             dead_site: bool = True) -> PerfResult:
    names = [f"site{k + 1}" for k in range(sites)]
    bed = Testbed.create(root, names)
    sampler = Sampler({})
    try:
        bed.start_superlink()
        for k, site in enumerate(names):
            csv_path = write_synthetic_heart(root / "data" / f"{site}.csv", ROWS_PER_SITE, k)
            bed.start_site(site, csv_path, poll_interval=poll_interval)
        sampler.roots.update({p.pid: n for n, p in bed.procs.items()})
        sampler.start()
        wait_until(f"{sites} sites online", lambda: bed.online_nodes() == sites
                   or bed.exited(), 300.0, 1.0)
        if bed.exited():
            raise RuntimeError(f"perf-deploy: {', '.join(bed.exited())} exited; logs in {root}")
        time.sleep(SETTLE)
        idle = idle_cpu({p.pid: n for n, p in bed.procs.items()}, IDLE_WINDOW)
        out = root / "runs"
        run = bed.submit(_run_config(out, "perf", sites, rounds))
        sampler.roots[run.proc.pid] = "flwr run (operator)"
        report = _wait_report(bed, run, out / "perf" / "report.json")
        seconds = tuple(float(r["seconds"]) for r in report["rounds"])  # type: ignore[attr-defined]
        dead_seconds, dead_line = None, ""
        sys.stdout.write(f"s/round: {', '.join(f'{x:.2f}' for x in seconds)}; peak RSS so far "
                         f"{sampler.peak_total_kb / MB / MB:.2f} GB; idle CPU "
                         f"{ {k: round(v, 1) for k, v in idle.items()} }\n")
        sys.stdout.flush()
        if dead_site:
            dead_seconds, dead_line = _dead_site(bed, out, names)
        sampler.sample()
        return PerfResult(sites=sites, rounds=rounds, round_seconds=seconds,
                          peak_total_mb=sampler.peak_total_kb / MB,
                          peak_mb={k: v / MB for k, v in sampler.peak_kb.items()},
                          idle_cpu=idle, dead_site_seconds=dead_seconds,
                          dead_site_line=dead_line,
                          peak_total_pss_mb=sampler.peak_total_pss_kb / MB,
                          peak_pss_mb={k: v / MB for k, v in sampler.peak_pss_kb.items()})
    finally:
        sampler.stop()
        bed.stop_all()


def _dead_site(bed: Testbed, out: Path, names: list[str]) -> tuple[float | None, str]:
    """Kill the last site as round 2 starts; seconds until the server drops it."""
    victim = names[-1]
    run = bed.submit(_run_config(out, "dead-site", len(names) - 1, DEAD_SITE_ROUNDS,
                                 f"round-timeout={DEAD_SITE_TIMEOUT}"))
    wait_until("round 1 to finish", lambda: run.first(ROUND_DONE) is not None
               or run.proc.poll() is not None, RUN_TIMEOUT)
    killed = time.monotonic()
    bed.kill(victim)
    run.proc.wait(timeout=RUN_TIMEOUT)
    for at, line in run.lines:
        if at >= killed and victim in line and ("dropped out" in line
                                                or "did not contribute" in line):
            return at - killed, line
    return None, ""
