"""``fedcare submit``: Flower's ``flwr run`` without TensorFlow, telemetry off, and, when it
streams the run's log, an exit status that says how the run ended.

``flwr run --stream`` exits 0 whatever became of the run. While relaying the stream
line by line, :func:`relay_stream` watches for the ServerApp's ``RUN REFUSED`` block
(:data:`fedcare.server.summary.REFUSED_MARKER`), so the operator's command (and a
script around it) can tell a refused run from a completed one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from fedcare.server.summary import REFUSED_MARKER

TELEMETRY_ENV = "FLWR_TELEMETRY_ENABLED"
STREAM_FLAG = "--stream"


def flwr_run_command(flwr_args: Sequence[str]) -> list[str]:
    """``flwr run ARGS`` in a Python process that never imports TensorFlow."""
    return [sys.executable, "-m", "fedcare.flower_compat", "flwr", "run", *flwr_args]


def submit_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment with Flower's telemetry off unless it was set."""
    return {**environ, TELEMETRY_ENV: environ.get(TELEMETRY_ENV, "0")}


@dataclass(frozen=True)
class StreamOutcome:
    returncode: int  # of `flwr run`
    refused: bool    # the streamed log said the run was refused


def relay_stream(command: Sequence[str], env: Mapping[str, str],
                 out: TextIO | None = None) -> StreamOutcome:
    """Run ``command``, copying its output (stdout and stderr) to ``out`` line by line,
    and note whether a line carried :data:`REFUSED_MARKER`."""
    out = sys.stdout if out is None else out
    refused = False
    with subprocess.Popen(list(command), env={**env, "PYTHONUNBUFFERED": "1"},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            out.flush()
            refused = refused or REFUSED_MARKER in line
    return StreamOutcome(returncode=proc.returncode, refused=refused)


def exec_flwr_run(flwr_args: Sequence[str]) -> None:
    """Replace this process with ``flwr run ARGS`` (no stream to watch)."""
    sys.stdout.flush()
    os.execve(sys.executable, flwr_run_command(flwr_args), submit_env(os.environ))
