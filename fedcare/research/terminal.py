"""A quiet terminal for research commands: progress bars and the answer; logs to files.

``simulate``, ``sweep``, the benchmarks and ``perf`` show one progress bar per run
(rounds, the sites' replies in the current round, the largest per-site epsilon of this
run so far) and, for many runs, an overall bar with its ETA; then the result table.
Library and framework logs (fedcare, Flower, Ray, TensorFlow, Python warnings) go to the
run's ``run.log`` and the command's log file instead of the screen; warnings and errors
still reach the screen. ``-v`` brings every log line back (and no bars).

TensorFlow and CUDA print their start-up notes from C++ as soon as TensorFlow is
imported; :func:`quiet_start_up` sets the variables that silence them, so it must run
before anything imports TensorFlow (the CLI calls it first). Ray's site workers get the
same variables through their runtime environment (:mod:`fedcare.research.cluster`).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Set before TensorFlow is imported: no C++ INFO/WARNING/ERROR start-up lines (CUDA
#: drivers, cuDNN/cuFFT/cuBLAS factories, TensorRT, CPU instruction and oneDNN notes;
#: oneDNN itself stays on), no gRPC chatter, no Flower telemetry.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR",
             "FLWR_TELEMETRY_ENABLED": "0"}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RUN_LOG = "run.log"
#: Log records kept in memory until the run folder exists (pre-flight comes before it).
EARLY_RECORDS = 10_000


def quiet_start_up() -> None:
    """Silence TensorFlow's and CUDA's start-up noise (call before TensorFlow is imported;
    a value already set by the user is kept)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


@dataclass
class _State:
    verbose: bool = True
    display: Any = None  # rich.progress.Progress while a quiet research command runs
    console: logging.Handler | None = None  # the handler configure_logging added last
    lock: threading.Lock = field(default_factory=threading.Lock)


_STATE = _State()


def configure_logging(*, verbose: bool, quiet: bool) -> None:
    """Console logging for the CLI: everything with ``-v``; for a quiet research command
    only warnings and errors (the rest goes to the log files); INFO otherwise."""
    _STATE.verbose = verbose or not quiet
    console = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if _STATE.console is not None:  # called again in one process (tests): replace, not add
        root.removeHandler(_STATE.console)
    handler = logging.StreamHandler(sys.stderr)
    _STATE.console = handler
    handler.setLevel(console)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    logging.captureWarnings(quiet and not verbose)
    if quiet and not verbose:  # framework notes and Python warnings below ERROR: files only
        handler.addFilter(_framework_notes_to_files)
    logging.getLogger("flwr").propagate = False  # Flower logs through its own handler


def _framework_notes_to_files(record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.ERROR or
            record.name.partition(".")[0] not in ("absl", "tensorflow", "keras", "py"))


def tame_flower() -> None:
    """Flower's console handler (made when flwr is imported) at WARNING in a quiet
    command; its INFO lines still reach the log files, which sit on the flwr logger."""
    if _STATE.verbose:
        return
    for handler in logging.getLogger("flwr").handlers:
        if type(handler).__name__ == "ConsoleHandler":
            handler.setLevel(logging.WARNING)


def _file_handler(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


class _OncePerRecord(logging.Filter):
    """A handler on both the root and the ``flwr`` logger sees each Flower record twice
    while ``flwr`` propagates (Flower can switch that at run time): pass it once."""

    def __init__(self) -> None:
        super().__init__()
        self._last: logging.LogRecord | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record is self._last:
            return False
        self._last = record
        return True


def _attach(handler: logging.Handler) -> list[logging.Logger]:
    handler.addFilter(_OncePerRecord())
    loggers = [logging.getLogger(), logging.getLogger("flwr")]
    for logger in loggers:
        logger.addHandler(handler)
    return loggers


@contextlib.contextmanager
def log_file(path: Path) -> Iterator[None]:
    """Every log record of this block (fedcare, Flower, Ray, TensorFlow) also in ``path``
    (appended)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _file_handler(path)
    loggers = _attach(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


class RunLog:
    """A run's ``run.log``: records are held in memory until the run folder exists (it
    is made by the run, after pre-flight), then written there with the rest."""

    def __init__(self) -> None:
        self._memory = logging.handlers.MemoryHandler(EARLY_RECORDS,
                                                      flushLevel=logging.CRITICAL + 1)
        self._file: logging.Handler | None = None
        self._loggers = _attach(self._memory)

    def open(self, run_dir: Path) -> None:
        if self._file is not None:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._file = _file_handler(run_dir / RUN_LOG)
        self._memory.setTarget(self._file)
        self._memory.flush()
        self._memory.capacity = 1  # from now on, straight through

    def close(self) -> None:
        for logger in self._loggers:
            logger.removeHandler(self._memory)
        if self._file is not None:
            self._memory.flush()
            self._file.close()
        self._memory.close()


@contextlib.contextmanager
def research_display(enabled: bool) -> Iterator[None]:
    """The progress display of one research command (nothing with ``-v`` or when off)."""
    if not enabled or _STATE.verbose:
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    display = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24),
                       TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                       TextColumn("{task.fields[eta]}"),
                       console=Console(file=sys.stderr), transient=False)
    _STATE.display = display
    try:
        with display:
            yield
    finally:
        _STATE.display = None


def display_active() -> bool:
    return _STATE.display is not None


class RunBar:
    """One run's bar: rounds, this round's site replies, the largest per-site epsilon
    this run so far (each site's own whole-run figure; never an average)."""

    def __init__(self, name: str, *, rounds: int, sites: int, delta: float | None,
                 keep: bool) -> None:
        self.name, self.rounds, self.sites, self.delta = name, rounds, sites, delta
        self.keep = keep
        self.round, self.replied, self.failed = 0, 0, 0
        self.epsilon: dict[int, float] = {}  # per reply's round: largest site figure
        self.largest = 0.0
        self._lock = threading.Lock()
        display = _STATE.display
        self._task = (display.add_task(name, total=rounds, status=self._status(), eta="")
                      if display is not None else None)

    def _status(self) -> str:
        text = f"round {self.round}/{self.rounds} | {self.replied}/{self.sites} sites"
        if self.failed:
            text += f" ({self.failed} refused/failed)"
        if self.delta is not None and self.largest:
            text += f" | eps this run <= {self.largest:.3g} per site (delta {self.delta:g})"
        return text

    def on_reply(self, reply: Any) -> None:
        """A :class:`fedcare.flower_compat.SiteReply` from the engine."""
        if reply.kind != "train" or self._task is None:
            return
        with self._lock:
            if reply.server_round != self.round:
                self.round, self.replied, self.failed = reply.server_round, 0, 0
            self.replied += 1
            self.failed += int(reply.error)
            eps = reply.metrics.get("epsilon-run")
            if isinstance(eps, (int, float)):
                self.largest = max(self.largest, float(eps))
            done = self.round - 1 + self.replied / max(1, self.sites)
            _STATE.display.update(self._task, completed=done, status=self._status())

    def finish(self) -> None:
        display = _STATE.display
        if self._task is None or display is None:
            return
        display.remove_task(self._task)
        if self.keep:  # one line in the output's flow, before the run's table
            display.console.print(f"{self.name}: {self._status()}", soft_wrap=True)


class CellsBar:
    """A sweep's overall bar: cells done (cached ones count), and the ETA from the mean
    time of the cells run in this session."""

    def __init__(self, name: str, *, total: int, skipped: int) -> None:
        self.total, self.done, self.ran, self.seconds = total, skipped, 0, 0.0
        self.skipped = skipped
        display = _STATE.display
        self._task = (display.add_task(name, total=total, completed=skipped,
                                       status=self._status(), eta="ETA ?")
                      if display is not None else None)

    def _status(self) -> str:
        return f"{self.done}/{self.total} cells ({self.skipped} cached)"

    def advance(self, seconds: float) -> None:
        self.done += 1
        self.ran += 1
        self.seconds += seconds
        if self._task is None:
            return
        left = self.seconds / self.ran * (self.total - self.done)
        minutes, secs = divmod(round(left), 60)
        _STATE.display.update(self._task, completed=self.done, status=self._status(),
                              eta=f"ETA {minutes}m{secs:02d}s")


def command_log_path(args: Any) -> Path | None:
    """Where a quiet research command's own log goes (a single simulation logs to its
    run folder's ``run.log`` alone): the sweep folder, the table's cache, or the
    output folder (``runs``)."""
    if getattr(args, "command", "") == "simulate":
        return None
    folder = (getattr(args, "out_dir", None) or getattr(args, "cache_dir", None)
              or getattr(args, "output_dir", None) or "runs")
    return Path(folder) / f"fedcare-{args.command}.log"


@contextlib.contextmanager
def command_output(args: Any) -> Iterator[None]:
    """A research command's display and log file; nothing for other commands."""
    if not getattr(args, "quiet_terminal", False):
        yield
        return
    path = None if _STATE.verbose else command_log_path(args)
    with research_display(True), (log_file(path) if path else contextlib.nullcontext()):
        yield
