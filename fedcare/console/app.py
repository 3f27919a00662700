"""``fedcare console``: the consortium view of a runs folder and the hospital view of a site.

Read-only: the pages read the run folder the ServerApp writes and the site's state dir;
nothing is written, nothing is started or stopped. The one form (a prediction for one
patient) computes and shows a result; the values typed into it appear on its result page
only, and are never logged or stored.

Served like the prediction API (``fedcare.common.web``): 127.0.0.1 by default, a token
for any other address, optional TLS. With a token, a browser presents it once as
``/?token=...``; the console answers with an HttpOnly, SameSite=Strict cookie and
redirects to the same page without it (so the token is not left in the address bar).
Scripts and styles ship in the package (``static/``); no CDN, no build step.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from fedcare.common.errors import DataValidationError
from fedcare.common.web import BearerToken, WebServer, bind
from fedcare.console.charts import Series, line_chart
from fedcare.console.hospital import drift_view, load_site
from fedcare.console.runs import RUN_FILES, list_runs, load_run
from fedcare.privacy.config import DEFAULT_ACCOUNTANT
from fedcare.privacy.statement import format_delta, format_epsilon

logger = logging.getLogger(__name__)

WHERE = "console"
REFRESH_SECONDS = 3
"""How often a run page asks for fresh figures while the run is going (default)."""
TOKEN_COOKIE = "fedcare-console-token"
MAX_FORM_BYTES = 64_000
STATIC_DIR = Path(__file__).with_name("static")

_templates = Environment(loader=PackageLoader("fedcare.console", "templates"),
                         autoescape=select_autoescape(["html"]), trim_blocks=True,
                         lstrip_blocks=True)


def _eps(value: object, digits: int = 3) -> str:
    return format_epsilon(float(value), digits) if isinstance(value, int | float) else "n/a"


def _num(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "n/a"


_templates.filters["eps"] = _eps
_templates.filters["num"] = _num
_templates.filters["delta"] = lambda v: format_delta(float(v)) if isinstance(v, int | float) \
    else "n/a"


@dataclass(frozen=True)
class ConsoleSettings:
    """What the console shows; ``runs_dir`` and ``site_dir`` may each be absent."""

    runs_dir: Path | None = None
    site_dir: Path | None = None
    policy: Path | None = None
    validation_dir: Path | None = None
    epsilon_budget: float | None = None
    delta: float = 1e-3
    accountant: str = DEFAULT_ACCOUNTANT
    refresh_seconds: int = REFRESH_SECONDS
    drift_csv: Path | None = None


def _page(name: str, **context: Any) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(name).render(**context),
                        headers={"Cache-Control": "no-store"})


def _run_charts(view: Any) -> dict[str, str]:
    metrics = [Series(label, view.series(key)) for key, label in
               (("mean-site-accuracy", "mean site accuracy"),
                ("pooled-accuracy", "pooled accuracy"), ("mean-site-auc", "mean site AUC"))]
    per_site: dict[str, list[tuple[float, float]]] = {}
    for rnd in view.rounds:
        for site, m in (rnd.get("train") or {}).items():
            value = m.get("epsilon-run", m.get("epsilon"))
            if isinstance(value, int | float):
                per_site.setdefault(site, []).append((int(rnd["round"]), float(value)))
    return {
        "metrics": line_chart([s for s in metrics if s.points], title="Global model by round",
                              y_label="score", y_min=0.0, y_max=1.0),
        "epsilon": line_chart([Series(site, pts) for site, pts in sorted(per_site.items())],
                              title="Each site's ε this run, by round (not averaged)",
                              y_label="ε (this run)", y_min=0.0),
    }


def create_app(settings: ConsoleSettings, *, token: str | None = None,
               predictor: Any = None) -> FastAPI:
    """The console app. ``predictor`` (a ``ModelBundle``) enables the prediction form."""
    app = FastAPI(title="fedcare console", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    predict_lock = threading.Lock()
    nav = {"runs": settings.runs_dir is not None, "site": settings.site_dir is not None}

    def runs_root() -> Path:
        if settings.runs_dir is None:
            raise HTTPException(404, "this console was started without --runs")
        return settings.runs_dir

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> Response:
        if nav["runs"] and not nav["site"]:
            return RedirectResponse("/runs", status_code=303)
        if nav["site"] and not nav["runs"]:
            return RedirectResponse("/site", status_code=303)
        return _page("index.html", nav=nav)

    @app.get("/runs", response_class=HTMLResponse)
    async def runs() -> Response:
        root = runs_root()
        return _page("runs.html", nav=nav, root=root, runs=list_runs(root),
                     refresh=settings.refresh_seconds)

    def run_page(template: str, name: str) -> Response:
        view = load_run(runs_root(), name)
        if view is None:
            raise HTTPException(404, "no such run")
        return _page(template, nav=nav, run=view, charts=_run_charts(view),
                     refresh=settings.refresh_seconds)

    @app.get("/runs/{name}", response_class=HTMLResponse)
    async def run(name: str) -> Response:
        return await run_in_threadpool(run_page, "run.html", name)

    @app.get("/runs/{name}/live", response_class=HTMLResponse)
    async def run_live(name: str) -> Response:
        """The part of the run page that changes while the run goes (fetched by script)."""
        return await run_in_threadpool(run_page, "run_live.html", name)

    @app.get("/runs/{name}/files/{filename}")
    async def run_file(name: str, filename: str) -> Response:
        root = runs_root()
        view = load_run(root, name)
        if view is None or filename not in RUN_FILES or filename not in view.files:
            raise HTTPException(404, "no such file")
        media = "application/json" if filename.endswith(".json") else "application/octet-stream"
        return FileResponse(root / name / filename, media_type=media, filename=filename)

    def site_page(**extra: Any) -> Response:
        if settings.site_dir is None:
            raise HTTPException(404, "this console was started without --site-dir")
        view = load_site(settings.site_dir, delta=settings.delta,
                         accountant=settings.accountant, policy=settings.policy,
                         epsilon_budget=settings.epsilon_budget,
                         validation_dir=settings.validation_dir)
        features = list(predictor.schema.features) if predictor is not None else []
        drift = (drift_view(predictor, settings.site_dir, settings.drift_csv)
                 if predictor is not None and settings.drift_csv is not None else None)
        return _page("site.html", nav=nav, site=view, features=features, drift=drift,
                     model=predictor.describe() if predictor is not None else None, **extra)

    @app.get("/site", response_class=HTMLResponse)
    async def site() -> Response:
        return await run_in_threadpool(site_page)

    @app.post("/site/predict", response_class=HTMLResponse)
    async def site_predict(request: Request) -> Response:
        if predictor is None:
            raise HTTPException(404, "this console was started without --model")
        declared = request.headers.get("content-length", "")
        if not declared.isdigit() or int(declared) > MAX_FORM_BYTES:  # checked before reading
            raise HTTPException(413 if declared.isdigit() else 411,
                                f"the form must be sent with a Content-Length of at most "
                                f"{MAX_FORM_BYTES} bytes")
        body = await request.body()
        names = [c.name for c in predictor.schema.features]
        typed = {k: v for k, v in parse_qsl(body.decode("utf-8", "replace"),
                                            keep_blank_values=True) if k in names}
        record: dict[str, object] = {n: (typed.get(n, "").strip() or None) for n in names}

        def predict() -> tuple[dict[str, Any] | None, list[str]]:
            try:
                with predict_lock:
                    return predictor.predict_records([record])[0], []
            except DataValidationError as err:
                return None, [_problem_text(p) for p in err.problems]

        started = time.monotonic()
        result, problems = await run_in_threadpool(predict)
        logger.info("console prediction: %s in %.1f ms", "ok" if result else "invalid input",
                    (time.monotonic() - started) * 1000)
        return await run_in_threadpool(site_page, typed=typed, result=result,
                                       form_problems=problems)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        response = _page("error.html", nav=nav, status=exc.status_code, detail=exc.detail)
        response.status_code = exc.status_code
        return response

    app.add_middleware(_TokenGate, token=token)
    return app


def _problem_text(problem: object) -> str:
    """``column: message`` (the schema's words: a rule and the typed value, nothing else)."""
    column, message = getattr(problem, "column", None), getattr(problem, "message", problem)
    return f"{column}: {message}" if column else str(message)


class _TokenGate:
    """Every page needs the token when one is set (header, or the cookie set by ?token=).

    ``/health`` and ``/static/`` (the package's own CSS and JS) are open.
    """

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.bearer = BearerToken(token)
        self.token = token

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"] == "/health" \
                or scope["path"].startswith("/static/"):
            await self.app(scope, receive, send)
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        offered = query.pop("token", None)
        if offered is not None and hmac.compare_digest(offered.encode(), self.token.encode()):
            rest = urlencode(query)
            target = scope["path"] + (f"?{rest}" if rest else "")
            response: Response = RedirectResponse(target, status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict",
                                secure=scope.get("scheme") == "https")
        elif self.bearer.admits(scope["headers"]) or self._cookie_matches(scope["headers"]):
            await self.app(scope, receive, send)
            return
        else:
            response = _page("error.html", nav={}, status=401,
                             detail="This console needs its token: open the address its "
                                    "operator gave you, ending in ?token=...")
            response.status_code = 401
        await response(scope, receive, send)

    def _cookie_matches(self, headers: list[tuple[bytes, bytes]]) -> bool:
        assert self.token is not None
        for key, value in headers:
            if key != b"cookie":
                continue
            for part in value.decode("latin-1").split(";"):
                name, _, presented = part.strip().partition("=")
                if name == TOKEN_COOKIE and hmac.compare_digest(presented.encode(),
                                                                self.token.encode()):
                    return True
        return False


def make_server(settings: ConsoleSettings, *, host: str = "127.0.0.1", port: int = 0,
                token: str | None = None, predictor: Any = None,
                ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> WebServer:
    """Bind (not yet serve) the console; same rules as the prediction API."""
    return bind(create_app(settings, token=token, predictor=predictor), WHERE, host=host,
                port=port, token=token, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)


def serve(settings: ConsoleSettings, *, host: str, port: int, token: str | None,
          predictor: Any = None, ssl_certfile: str | None = None,
          ssl_keyfile: str | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C; finish in-flight requests, close, and return."""
    server = make_server(settings, host=host, port=port, token=token, predictor=predictor,
                         ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    logger.info("console listening on %s (token %s); Ctrl-C or SIGTERM stops it", server.url,
                "required" if token is not None else "not required")
    try:
        server.serve_forever()
    finally:
        server.server_close()
    logger.info("console stopped")

