"""``fedcare perf-web``: the prediction API before and after the move to FastAPI, and the
console's page render time, measured in one run on one machine.

"Before" is the hand-written ``http.server`` API as it was at ``--before-ref`` (default
``main``): its source is read from git (``git show REF:fedcare/hospital/api.py``) into a
temporary module for this measurement only; it is no part of the package any more.
"After" is ``fedcare.hospital.api``. Each is served by its own child process (as ``fedcare
serve`` runs in production, so client and server share no interpreter lock) with the same
predictor, and called by the same client (``http.client``, a new connection per request,
as the old server closed every connection), one after the other:

- 1 row: ``--requests`` sequential requests, latency p50 and p95;
- batch: ``--batches`` requests of ``MAX_RECORDS`` (1000) rows, rows per second of the median.

The predictor is the real model when ``--model`` and ``--site-dir`` are given (prediction
plus its explanation dominate), else a constant one (HTTP, JSON and checks only). The
console figure is the time to answer ``/runs/<run>`` (and its live fragment) for a
synthetic finished run of ``--console-rounds`` rounds and ``--console-sites`` sites written
in the ServerApp's report shape.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

API_PATH = "fedcare/hospital/api.py"
BATCH_ROWS = 1000
TIMEOUT_S = 120.0


class ConstantPredictor:
    """risk 0.5 for every patient: what is left is HTTP, JSON and the request checks."""

    def predict_records(self, records: list[dict[str, object]]) -> list[dict[str, Any]]:
        return [{"risk": 0.5, "label": 1} for _ in records]

    def describe(self) -> dict[str, Any]:
        return {"model": "constant"}


def old_api_source(ref: str, repo: Path) -> Path:
    """The http.server API as it was at ``ref``, written from git into a temporary file."""
    source = subprocess.run(["git", "show", f"{ref}:{API_PATH}"], cwd=repo, check=True,
                            capture_output=True, text=True).stdout
    if "ThreadingHTTPServer" not in source:
        raise RuntimeError(f"perf-web: {API_PATH} at {ref} must be the http.server API; "
                           "got another implementation")
    path = Path(tempfile.mkdtemp(prefix="fedcare-api-before-")) / "fedcare_api_before.py"
    path.write_text(source, encoding="utf-8")
    return path


def _load_module(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def child_main(argv: list[str]) -> None:
    """In the server process: ``API_FILE|new MODEL|- SITE_DIR|-``; prints the port, serves."""
    api_file, model, site_dir = argv
    if api_file == "new":
        from fedcare.hospital import api as module
    else:
        module = _load_module(api_file)  # type: ignore[assignment]
    predictor: Any = ConstantPredictor()
    if model != "-":
        from fedcare.hospital.bundle import ModelBundle
        from fedcare.site.site import PREPROCESSOR_FILENAME

        predictor = ModelBundle.load(model_path=model,
                                     preprocessor_path=Path(site_dir) / PREPROCESSOR_FILENAME,
                                     site_dir=site_dir)
    server = module.make_server(predictor, host="127.0.0.1", port=0, token=None)
    sys.stdout.write(f"{server.server_address[1]}\n")
    sys.stdout.flush()
    server.serve_forever()


_CHILD = ("import sys; from fedcare.research.web_bench import child_main; "
          "child_main(sys.argv[1:])")


@contextmanager
def _process(args: list[str], ready: Callable[[str], int | None]) -> Iterator[int]:
    """A child process; ``ready`` turns one of its output lines into the port it serves."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    try:
        port = None
        for line in proc.stdout or ():
            port = ready(line)
            if port is not None:
                break
        if port is None:
            raise RuntimeError(f"perf-web: {args[2:]} must start serving; it exited "
                               f"with {proc.wait()}")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serving_api(api_file: str, model: str | None, site_dir: str | None) -> Any:
    """The prediction API (``api_file`` or "new") in a child process; yields its port."""
    args = [sys.executable, "-c", _CHILD, api_file, model or "-", site_dir or "-"]
    return _process(args, lambda line: int(line) if line.strip().isdigit() else None)


def _call(port: int, method: str, path: str, body: bytes | None = None) -> float:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"perf-web: {method} {path} must answer 200; got "
                               f"{response.status}")
    finally:
        conn.close()
    return time.perf_counter() - started


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure_api(port: int, patient: dict[str, object], *, requests: int,
                batches: int) -> dict[str, float]:
    one = json.dumps({"patients": [patient]}).encode()
    batch = json.dumps({"patients": [patient] * BATCH_ROWS}).encode()
    for _ in range(3):  # warm-up: first model call, first connection
        _call(port, "POST", "/predict", one)
    singles = [_call(port, "POST", "/predict", one) for _ in range(requests)]
    _call(port, "POST", "/predict", batch)
    batch_times = [_call(port, "POST", "/predict", batch) for _ in range(batches)]
    return {"p50_ms": 1000 * _percentile(singles, 0.5), "p95_ms": 1000 * _percentile(singles, 0.95),
            "batch_rows_per_s": BATCH_ROWS / statistics.median(batch_times)}


def synthetic_run(root: Path, name: str, *, rounds: int, sites: int) -> Path:
    """A finished run in the ServerApp's report shape (figures made up, shape faithful)."""
    names = [f"site-{i}" for i in range(sites)]
    rows: list[dict[str, Any]] = []
    for n in range(1, rounds + 1):
        train = {s: {"num-examples": 200, "epsilon": 0.05 * n + 0.01 * i,
                     "epsilon-run": 0.05 * n, "delta": 1e-3, "audit-hash": f"{n:064x}"}
                 for i, s in enumerate(names)}
        evaluate = {s: {"num-examples": 70, "accuracy": 0.9, "auc": 0.95} for s in names}
        rows.append({"round": n, "seconds": 1.0, "train": train, "evaluate": evaluate,
                     "failures": [], "rejected": [], "capped-example-counts": {},
                     "update-norms": {}, "global": {"mean-site-accuracy": 0.9,
                                                    "pooled-accuracy": 0.9,
                                                    "mean-site-auc": 0.95}})
    table = {s: {"train-rows": 200, "epsilon": 0.05 * rounds + 0.01 * i, "delta": 1e-3,
                 "accuracy": 0.9, "auc": 0.95} for i, s in enumerate(names)}
    config = {"num-rounds": rounds, "dataset": "breast-cancer", "strategy": "fedavg",
              "dp-mode": "target-epsilon", "epsilon-budget": 5.0, "accountant": "rdp",
              "sampling": "poisson"}
    run = root / name
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({
        "format": "fedcare-run-report", "version": 1, "run": name, "seconds": 1.0,
        "config": config, "sites": table, "privacy": {}, "final": {}, "rounds": rows}))
    return run


def measure_console(*, rounds: int, sites: int, requests: int) -> dict[str, float]:
    """``fedcare console --runs`` in a child process, on a synthetic finished run."""
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_run(Path(tmp), "bench", rounds=rounds, sites=sites)
        args = [sys.executable, "-c", "from fedcare.cli import main; raise SystemExit(main())",
                "console", "--runs", tmp, "--port", "0"]

        def port_of(line: str) -> int | None:
            if "console listening on" not in line:
                return None
            return int(line.split("listening on ")[1].split()[0].rstrip("/").rsplit(":", 1)[1])

        with _process(args, port_of) as port:
            _call(port, "GET", "/runs/bench")
            page = [_call(port, "GET", "/runs/bench") for _ in range(requests)]
            live = [_call(port, "GET", "/runs/bench/live") for _ in range(requests)]
    return {"page_p50_ms": 1000 * _percentile(page, 0.5),
            "page_p95_ms": 1000 * _percentile(page, 0.95),
            "live_p50_ms": 1000 * _percentile(live, 0.5)}


def _patient(args: argparse.Namespace) -> tuple[dict[str, object], str]:
    if not args.model:
        return {"age": 61}, "constant predictor (HTTP, JSON and checks only)"
    from fedcare.data.datasets.breast_cancer import LABEL, raw_frame

    row = raw_frame().drop(columns=[LABEL]).iloc[0]
    return ({str(k): float(v) for k, v in row.items()},
            f"real model {args.model} (prediction + explanation)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    repo = Path(__file__).resolve().parents[2]
    before = old_api_source(args.before_ref, repo)
    patient, what = _patient(args)
    result: dict[str, Any] = {"predictor": what, "before_ref": args.before_ref,
                              "requests": args.requests, "batches": args.batches}
    for label, api_file in (("before (http.server)", str(before)),
                            ("after (FastAPI + uvicorn)", "new")):
        with serving_api(api_file, args.model, args.site_dir) as port:
            result[label] = measure_api(port, patient, requests=args.requests,
                                        batches=args.batches)
    result["console"] = {"rounds": args.console_rounds, "sites": args.console_sites,
                         **measure_console(rounds=args.console_rounds,
                                           sites=args.console_sites, requests=args.requests)}
    return result


def format_result(result: dict[str, Any]) -> str:
    lines = [f"prediction API, {result['predictor']}; before = {result['before_ref']}'s "
             f"{API_PATH}; {result['requests']} one-row requests, {result['batches']} "
             f"batches of {BATCH_ROWS}",
             f"{'':28}{'1-row p50 ms':>14}{'1-row p95 ms':>14}{'batch rows/s':>14}"]
    for label in ("before (http.server)", "after (FastAPI + uvicorn)"):
        r = result[label]
        lines.append(f"{label:28}{r['p50_ms']:>14.2f}{r['p95_ms']:>14.2f}"
                     f"{r['batch_rows_per_s']:>14.0f}")
    c = result["console"]
    lines.append(f"console /runs/<run>, {c['rounds']} rounds x {c['sites']} sites: p50 "
                 f"{c['page_p50_ms']:.1f} ms, p95 {c['page_p95_ms']:.1f} ms; live fragment "
                 f"p50 {c['live_p50_ms']:.1f} ms")
    return "\n".join(lines)


def cmd_perf_web(args: argparse.Namespace) -> int:
    result = run(args)
    sys.stdout.write(format_result(result) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("perf-web", help="prediction API before/after FastAPI and console "
                                        "render time, measured in one run")
    p.add_argument("--before-ref", default="main",
                   help="git ref whose fedcare/hospital/api.py is the http.server API")
    p.add_argument("--model", help="model.keras for the real predictor (else a constant one)")
    p.add_argument("--site-dir", help="the site's state dir (its preprocessor), with --model")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--batches", type=int, default=7)
    p.add_argument("--console-rounds", type=int, default=40)
    p.add_argument("--console-sites", type=int, default=4)
    p.add_argument("--out", help="write the results JSON here")
    p.set_defaults(func=cmd_perf_web)
