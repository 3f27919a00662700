"""A small prediction service on the hospital's own premises (FastAPI, served by uvicorn).

    GET  /health        200 {"status": "ok"}                      never needs the token
    GET  /model         200 predictor.describe()
    POST /predict       {"patients": [{feature: value, ...}, ...]} -> 200 {"predictions": [...]}
    GET  /openapi.json  the OpenAPI schema of the three above

Every reply is JSON (``application/json; charset=utf-8``); every error is
``{"error": <short>, "detail": <sentence>}`` or, for per-record findings,
``{"error": <short>, "problems": [{"row", "column", "message"}, ...], "total": n}``.
``row`` is the patient's position in ``patients`` counted from 1 (as ``ModelBundle``
numbers them), or null for a problem with the whole request.

Fail closed: the service binds to 127.0.0.1 by default, and binding anywhere else
requires a bearer token (``Authorization: Bearer <token>``, compared in constant time);
TLS with ``ssl_certfile``/``ssl_keyfile`` (``fedcare.common.web``). Path, token, method,
content type and size are checked before a byte of the body is read (an oversized body is
refused unread, also under ``Expect: 100-continue``); JSON is parsed strictly (no
NaN/Infinity, no duplicate keys) and nothing is ever evaluated or unpickled. Unexpected
failures answer 500 with an incident id, the traceback goes to the server log only. The
log holds method, path, status, record count and timing, never a patient value.

Calls into the predictor are serialized with a lock (a Keras model is not guaranteed to
be safe under concurrent ``predict``) and run on a worker thread, so ``/health`` answers
while a prediction runs. SIGTERM drains in-flight requests, then the service exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, NoReturn, Protocol

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from fedcare.common.errors import DataValidationError, describe_value
from fedcare.common.files import strict_json_loads
from fedcare.common.web import JSON_CONTENT_TYPE, SECURITY_HEADERS, BearerToken, WebServer, bind
from fedcare.common.web import json_bytes as _dumps
from fedcare.common.web import send_json as _send_json

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000
MAX_RECORDS = 1000
REQUEST_TIMEOUT_S = 10.0
"""A client that stalls longer than this while sending a request body gets a 408."""
MAX_LISTED_PROBLEMS = 200
"""At most this many per-record problems are listed in one reply; ``total`` counts all."""

WHERE = "serve"


class Predictor(Protocol):
    """What the service needs from a model (``fedcare.hospital.bundle.ModelBundle`` fits)."""

    def predict_records(self, records: list[dict[str, object]]) -> list[dict[str, Any]]:
        """One prediction per record, in order; ``DataValidationError`` lists bad cells."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-serializable facts about the model (schema, run, privacy statement)."""
        ...


# --------------------------------------------------------------------------- errors


@dataclass
class _HttpError(Exception):
    """A reply with an error status, raised anywhere while answering and sent once."""

    status: HTTPStatus
    error: str
    detail: str | None = None
    problems: list[dict[str, object]] | None = None
    total: int | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.error}
        if self.detail is not None:
            body["detail"] = self.detail
        if self.problems is not None:
            body["problems"] = self.problems
            body["total"] = len(self.problems) if self.total is None else self.total
        return body


def _bad_request(detail: str, error: str = "invalid request") -> NoReturn:
    raise _HttpError(HTTPStatus.BAD_REQUEST, error, detail)


# --------------------------------------------------------------------------- JSON


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _parse_json(body: bytes) -> object:
    try:
        return strict_json_loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        _bad_request("request: body must be UTF-8 encoded JSON", "invalid JSON")
    except json.JSONDecodeError as err:
        _bad_request(f"request: body must be valid JSON; {err.msg} at line {err.lineno} "
                     f"column {err.colno}", "invalid JSON")
    except RecursionError:
        _bad_request("request: body must be valid JSON; nested too deeply", "invalid JSON")
    except ValueError as err:  # duplicate keys, NaN/Infinity
        _bad_request(f"request: body must be valid JSON; {err}", "invalid JSON")



# --------------------------------------------------------------------------- request shape


def _records_from(payload: object) -> list[dict[str, object]]:
    """``{"patients": [...]}`` -> the records, or a 400 naming what is wrong."""
    if not isinstance(payload, dict):
        _bad_request('request: body must be a JSON object {"patients": [...]}; '
                     f"got {_json_type(payload)}")
    unknown = sorted(set(payload) - {"patients"})
    if unknown:
        shown = ", ".join(describe_value(k[:40]) for k in unknown[:5])
        _bad_request(f'request: body must hold only "patients"; got unknown key(s) {shown}')
    if "patients" not in payload:
        _bad_request('request: body must hold "patients"; got nothing')
    patients = payload["patients"]
    if not isinstance(patients, list):
        _bad_request(f"request: patients must be a JSON array; got {_json_type(patients)}")
    if not patients:
        _bad_request("request: patients must hold at least 1 record; got 0")
    if len(patients) > MAX_RECORDS:
        _bad_request(f"request: patients must hold at most {MAX_RECORDS} records; "
                     f"got {len(patients)}")

    problems: list[dict[str, object]] = []
    for row, record in enumerate(patients, start=1):
        if not isinstance(record, dict):
            problems.append({"row": row, "column": None,
                             "message": f"record must be a JSON object; got {_json_type(record)}"})
            continue
        for column, value in record.items():
            if isinstance(value, dict | list):
                problems.append({"row": row, "column": column,
                                 "message": "value must be a number, string, boolean or null; "
                                            f"got {_json_type(value)}"})
    if problems:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "invalid patient records",
                         problems=problems[:MAX_LISTED_PROBLEMS], total=len(problems))
    return patients


def _problem_json(problem: object) -> dict[str, object]:
    """A ``DataProblem`` (or anything alike) as ``{"row", "column", "message"}``."""
    row = getattr(problem, "row", None)
    column = getattr(problem, "column", None)
    message = getattr(problem, "message", None)
    return {"row": row if isinstance(row, int) and not isinstance(row, bool) else None,
            "column": column if isinstance(column, str) else None,
            "message": message if isinstance(message, str) else str(problem)}


# --------------------------------------------------------------------------- OpenAPI models
# They document the contract in /openapi.json. Bodies are parsed by the strict reader above
# (duplicate keys, NaN and row-numbered problems are beyond a schema), replies are sent as
# the predictor made them.


class PredictRequest(BaseModel):
    """Up to MAX_RECORDS patients, each mapping every feature column to its raw value."""

    patients: list[dict[str, float | str | bool | None]] = Field(
        min_length=1, max_length=MAX_RECORDS,
        description="one object per patient; null or \"\" = not recorded (optional columns)")


class PredictResponse(BaseModel):
    predictions: list[dict[str, Any]] = Field(
        description="one per patient, in order: risk, label, threshold, baseline_risk, "
                    "pushed_up and pushed_down (the top features each way)")


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Problem(BaseModel):
    row: int | None = Field(description="the patient's position in patients, from 1")
    column: str | None
    message: str


class ErrorReply(BaseModel):
    error: str
    detail: str | None = None
    problems: list[Problem] | None = None
    total: int | None = None


def _errors(*statuses: HTTPStatus) -> dict[int | str, dict[str, Any]]:
    return {int(s): {"model": ErrorReply, "description": s.phrase} for s in statuses}


_GUARDED = (HTTPStatus.UNAUTHORIZED, HTTPStatus.METHOD_NOT_ALLOWED,
            HTTPStatus.INTERNAL_SERVER_ERROR)


class _JsonReply(Response):
    media_type = JSON_CONTENT_TYPE

    def render(self, content: Any) -> bytes:
        return _dumps(content)  # before any header goes out, so a failure is still a 500


# --------------------------------------------------------------------------- the app


@dataclass(frozen=True)
class _Route:
    method: str
    needs_token: bool


_ROUTES: dict[str, _Route] = {
    "/health": _Route("GET", needs_token=False),
    "/model": _Route("GET", needs_token=True),
    "/predict": _Route("POST", needs_token=True),
    "/openapi.json": _Route("GET", needs_token=True),
}


def create_app(predictor: Predictor, *, token: str | None = None) -> FastAPI:
    """The ASGI app: three endpoints behind :class:`_Gate` (checks before any body byte)."""
    app = FastAPI(title="fedcare prediction service", version="1",
                  description=__doc__.split("\n\n")[1], docs_url=None, redoc_url=None,
                  openapi_url=None, default_response_class=_JsonReply)
    predict_lock = threading.Lock()

    @app.get("/health", response_model=Health)
    async def health() -> Response:
        return _JsonReply({"status": "ok"})

    @app.get("/model", responses={200: {"description": "provenance, inputs, threshold and "
                                                       "privacy statement of the model"},
                                  **_errors(*_GUARDED)})
    async def model() -> Response:
        return _JsonReply(predictor.describe())

    @app.post("/predict", responses={
        200: {"model": PredictResponse, "description": "one prediction per patient"},
        **_errors(HTTPStatus.BAD_REQUEST, HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.LENGTH_REQUIRED,
                  HTTPStatus.REQUEST_ENTITY_TOO_LARGE, HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                  *_GUARDED)},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(request: Request) -> Response:
        try:
            body = await asyncio.wait_for(request.body(), REQUEST_TIMEOUT_S)
        except TimeoutError:
            raise _HttpError(HTTPStatus.REQUEST_TIMEOUT, "request timeout", "request: body "
                             f"must arrive within {REQUEST_TIMEOUT_S:.0f} s") from None
        records = _records_from(_parse_json(body))
        request.state.records = len(records)
        predictions = await run_in_threadpool(_predict_locked, predictor, predict_lock, records)
        return _JsonReply({"predictions": predictions})

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> Response:  # served here for the same headers as every reply
        return _JsonReply(app.openapi())

    app.add_middleware(_Gate, token=BearerToken(token))
    return app


def _predict_locked(predictor: Predictor, lock: threading.Lock,
                    records: list[dict[str, object]]) -> list[dict[str, Any]]:
    try:
        with lock:
            predictions = predictor.predict_records(records)
    except DataValidationError as err:
        listed = [_problem_json(p) for p in err.problems[:MAX_LISTED_PROBLEMS]]
        raise _HttpError(HTTPStatus.BAD_REQUEST, "invalid patient records", problems=listed,
                         total=max(err.total, len(listed))) from None
    if not isinstance(predictions, list) or len(predictions) != len(records):
        got = len(predictions) if isinstance(predictions, list) else type(predictions)
        raise RuntimeError(f"predictor must return one prediction per record; "
                           f"got {got} for {len(records)}")
    return predictions


class _Gate:
    """ASGI middleware in front of the routes: every check that needs no body byte (path,
    token, method, content type, length), error replies, the 500 for anything unexpected,
    security headers and the one log line per request."""

    def __init__(self, app: Any, token: BearerToken) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        # Leading slashes collapse ("//predict" is /predict), as http.server did.
        path = "/" + scope["path"].lstrip("/")
        scope = {**scope, "path": path}
        method = scope["method"]
        shown = path if path in _ROUTES else "<unknown path>"  # a stray path may hold values
        status = 0

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        try:
            headers = _Headers(scope["headers"])
            self._check(method, path, headers)
            await self.app(scope, receive, send_with_headers)
        except _HttpError as err:
            if not status:
                if err.status != HTTPStatus.REQUEST_TIMEOUT:
                    await _discard_small_body(scope, receive)
                status = err.status
                await _send_json(send, err.status, err.payload(),
                                 {**err.headers, "Connection": "close"})
        except ClientDisconnect:
            logger.info("%s %s: client went away", method, shown)
        except Exception:
            incident = uuid.uuid4().hex[:12]
            logger.exception("%s %s failed (incident %s)", method, shown, incident)
            if not status:  # else a reply has started: the connection just closes
                status = HTTPStatus.INTERNAL_SERVER_ERROR
                await _send_json(send, status, {
                    "error": "internal error",
                    "detail": f"the server could not answer; quote incident {incident} "
                              "to its operator"}, {"Connection": "close"})
        finally:
            ms = (time.monotonic() - started) * 1000.0
            records = scope.get("state", {}).get("records")
            shown_records = "" if records is None else f" ({records} records)"
            logger.log(logging.INFO if status < 500 else logging.ERROR, "%s %s -> %s%s in %.1f ms",
                       method, shown, status or "-", shown_records, ms)

    def _check(self, method: str, path: str, headers: _Headers) -> None:
        route = _ROUTES.get(path)
        if (route is None or route.needs_token) and not self.token.admits(headers.raw):
            raise _HttpError(HTTPStatus.UNAUTHORIZED, "unauthorized",
                             "request: Authorization must be 'Bearer <token>'",
                             headers={"WWW-Authenticate": 'Bearer realm="fedcare"'})
        if route is None:
            raise _HttpError(HTTPStatus.NOT_FOUND, "not found",
                             "request: path must be one of " + ", ".join(_ROUTES))
        if method != route.method:
            raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed",
                             f"request: method must be {route.method} for {path}",
                             headers={"Allow": route.method})
        if method == "POST":
            _check_body_headers(headers)


@dataclass(frozen=True)
class _Headers:
    raw: list[tuple[bytes, bytes]]

    def all(self, name: bytes) -> list[str]:
        return [v.decode("latin-1") for k, v in self.raw if k == name]


def _check_body_headers(headers: _Headers) -> None:
    media_type, _, params = (headers.all(b"content-type") or [""])[0].partition(";")
    charset = next((v.strip().strip('"').lower() for k, _, v in
                    (p.strip().partition("=") for p in params.split(";"))
                    if k.strip().lower() == "charset"), "utf-8")
    if media_type.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        raise _HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported media type",
                         f"request: Content-Type must be {JSON_CONTENT_TYPE}")
    if headers.all(b"transfer-encoding"):
        raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "length required",
                         "request: body must be sent with Content-Length, not chunked")
    length = _declared_length(headers)
    if length is None:
        if not headers.all(b"content-length"):
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "length required",
                             "request: Content-Length must be set")
        _bad_request("request: Content-Length must be one non-negative integer")
    if length > MAX_BODY_BYTES:  # refused unread
        raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large",
                         f"request: body must be at most {MAX_BODY_BYTES} bytes; got {length}")


def _declared_length(headers: _Headers) -> int | None:
    values = {v.strip() for v in headers.all(b"content-length")}
    if len(values) != 1:
        return None
    text = values.pop()
    return int(text) if text.isascii() and text.isdigit() else None


async def _discard_small_body(scope: dict[str, Any], receive: Any) -> None:
    """Read a small body an error reply did not need, so the client sees the reply instead
    of a connection reset. Bodies over MAX_BODY_BYTES, and bodies a client holds back
    until "100 Continue", are never asked for."""
    headers = _Headers(scope["headers"])
    length = _declared_length(headers)
    if not length or length > MAX_BODY_BYTES or headers.all(b"expect"):
        return
    try:
        async with asyncio.timeout(2.0):
            while (await receive()).get("more_body", False):
                pass
    except (TimeoutError, ClientDisconnect):
        return


# --------------------------------------------------------------------------- serving


def make_server(predictor: Predictor, *, host: str = "127.0.0.1", port: int = 0,
                token: str | None = None, ssl_certfile: str | None = None,
                ssl_keyfile: str | None = None) -> WebServer:
    """Bind (not yet serve) the prediction service; ``port=0`` picks a free port.

    Raises ``ConfigError`` for a non-loopback host without a token, a token shorter than
    16 characters or not printable ASCII, a bad port, half a TLS pair, or an address that
    cannot be bound.
    """
    return bind(create_app(predictor, token=token), WHERE, host=host, port=port, token=token,
                ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)


def serve(predictor: Predictor, *, host: str, port: int, token: str | None,
          ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C; finish in-flight requests, close, and return."""
    server = make_server(predictor, host=host, port=port, token=token,
                         ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    logger.info("prediction service listening on %s (token %s); Ctrl-C or SIGTERM stops it",
                server.url, "required" if token is not None else "not required")
    try:
        server.serve_forever()
    finally:
        server.server_close()
    logger.info("prediction service stopped")
