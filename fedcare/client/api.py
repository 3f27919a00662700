"""A small prediction service on the hospital's own premises (standard library only).

    GET  /health   200 {"status": "ok"}                      never needs the token
    GET  /model    200 predictor.describe()
    POST /predict  {"patients": [{feature: value, ...}, ...]} -> 200 {"predictions": [...]}

Every reply is JSON (``application/json; charset=utf-8``); every error is
``{"error": <short>, "detail": <sentence>}`` or, for per-record findings,
``{"error": <short>, "problems": [{"row", "column", "message"}, ...], "total": n}``.
``row`` is the patient's position in ``patients`` counted from 1 (as ``ModelBundle``
numbers them), or null for a problem with the whole request.

Fail closed: the service binds to 127.0.0.1 by default, and binding anywhere else
requires a bearer token (``Authorization: Bearer <token>``, compared in constant time).
Bodies are size-capped and checked before they are read; JSON is parsed strictly (no
NaN/Infinity, no duplicate keys) and nothing is ever evaluated or unpickled. Unexpected
failures answer 500 with an incident id, the traceback goes to the server log only. The
log holds method, path, status, record count and timing, never a patient value.

Calls into the predictor are serialized with a lock (a Keras model is not guaranteed to
be safe under concurrent ``predict``); requests are otherwise handled on their own threads.
Traffic is plain HTTP: off the loopback interface, put a TLS-terminating proxy in front.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn, Protocol
from urllib.parse import urlsplit

from fedcare.common.errors import ConfigError, DataValidationError, describe_value

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000
MAX_RECORDS = 1000
MIN_TOKEN_CHARS = 16
REQUEST_TIMEOUT_S = 10.0
"""A client that stalls longer than this while sending a request is disconnected."""
MAX_LISTED_PROBLEMS = 200
"""At most this many per-record problems are listed in one reply; ``total`` counts all."""

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
WHERE = "serve"


class Predictor(Protocol):
    """What the service needs from a model (``fedcare.client.bundle.ModelBundle`` fits)."""

    def predict_records(self, records: list[dict[str, object]]) -> list[dict[str, Any]]:
        """One prediction per record, in order; ``DataValidationError`` lists bad cells."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-serializable facts about the model (schema, run, privacy statement)."""
        ...


# --------------------------------------------------------------------------- errors


@dataclass
class _HttpError(Exception):
    """A reply with an error status, raised anywhere in a handler and sent once."""

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


class _DuplicateKey(ValueError):
    pass


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


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"key {key!r} must appear once per object")
        out[key] = value
    return out


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON; send null for a value not recorded")


def _parse_json(body: bytes) -> object:
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_object_without_duplicates,
                          parse_constant=_reject_constant)
    except UnicodeDecodeError:
        _bad_request("request: body must be UTF-8 encoded JSON", "invalid JSON")
    except json.JSONDecodeError as err:
        _bad_request(f"request: body must be valid JSON; {err.msg} at line {err.lineno} "
                     f"column {err.colno}", "invalid JSON")
    except RecursionError:
        _bad_request("request: body must be valid JSON; nested too deeply", "invalid JSON")
    except ValueError as err:  # duplicate keys, NaN/Infinity
        _bad_request(f"request: body must be valid JSON; {err}", "invalid JSON")


def _json_default(value: object) -> object:
    """numpy scalars and arrays (a model's outputs) as plain JSON; anything else is a bug."""
    for method in ("item", "tolist"):
        convert = getattr(value, method, None)
        if callable(convert):
            return convert()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, allow_nan=False, default=_json_default,
                      ensure_ascii=False).encode("utf-8")


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


# --------------------------------------------------------------------------- configuration


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" (all interfaces)
        return False


def _check_settings(host: str, port: int, token: str | None) -> list[str]:
    problems = []
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        problems.append(f"{WHERE}: port must be an integer in 0..65535; got {describe_value(port)}")
    if token is not None:
        # Never echo the token itself in a message.
        if len(token) < MIN_TOKEN_CHARS:
            problems.append(f"{WHERE}: token must be at least {MIN_TOKEN_CHARS} characters; "
                            f"got {len(token)} characters")
        if not all("!" <= ch <= "~" for ch in token):
            problems.append(f"{WHERE}: token must be printable ASCII without spaces; "
                            "got other characters")
    elif not _is_loopback(host):
        problems.append(f"{WHERE}: token must be set to bind to a non-loopback address; "
                        f"got host {describe_value(host)} and no token")
    return problems


# --------------------------------------------------------------------------- server


class PredictionServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` that holds the predictor, the token and the predict lock."""

    daemon_threads = True
    request_queue_size = 32

    def __init__(self, host: str, port: int, predictor: Predictor, token: str | None) -> None:
        self.predictor = predictor
        self.token_required = token is not None
        self._token = b"" if token is None else token.encode("ascii")
        self.predict_lock = threading.Lock()
        try:
            is_v6 = ipaddress.ip_address(host).version == 6
        except ValueError:
            is_v6 = False
        self.address_family = socket.AF_INET6 if is_v6 else socket.AF_INET
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind also does a reverse-DNS lookup (getfqdn) we do not need.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def token_matches(self, presented: bytes) -> bool:
        return hmac.compare_digest(presented, self._token)

    @property
    def url(self) -> str:
        host = self.server_name
        return f"http://[{host}]:{self.server_port}/" if ":" in host else \
            f"http://{host}:{self.server_port}/"


def make_server(predictor: Predictor, *, host: str = "127.0.0.1", port: int = 0,
                token: str | None = None) -> PredictionServer:
    """Bind (not yet serve) the prediction service; ``port=0`` picks a free port.

    Raises ``ConfigError`` for a non-loopback host without a token, a token shorter than
    16 characters or not printable ASCII, a bad port, or an address that cannot be bound.
    """
    problems = _check_settings(host, port, token)
    if problems:
        raise ConfigError(problems)
    try:
        server = PredictionServer(host, port, predictor, token)
    except OSError as err:
        raise ConfigError([f"{WHERE}: address must be free and local to this machine; got "
                           f"{describe_value(host)} port {port} ({err.strerror or err})"]) from err
    if token is None:
        logger.warning("no API token: any process that can reach %s can query the model",
                       server.url)
    elif not _is_loopback(host):
        logger.warning("serving plain HTTP on %s: put a TLS-terminating proxy in front so "
                       "patient data and the token are encrypted on the network", server.url)
    return server


def serve(predictor: Predictor, *, host: str, port: int, token: str | None) -> None:
    """Serve until Ctrl-C (KeyboardInterrupt), then close the socket and return."""
    server = make_server(predictor, host=host, port=port, token=token)
    logger.info("prediction service listening on %s (token %s); Ctrl-C stops it", server.url,
                "required" if token is not None else "not required")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("prediction service stopping")
    finally:
        server.server_close()
    logger.info("prediction service stopped")


# --------------------------------------------------------------------------- handler


@dataclass(frozen=True)
class _Route:
    method: str
    action: Callable[[_Handler], None]
    needs_token: bool


class _Handler(BaseHTTPRequestHandler):
    server: PredictionServer
    server_version = "fedcare"
    # HTTP/1.1 for "Expect: 100-continue" (a refused body is then never sent), but one
    # request per connection: every reply says "Connection: close", so no idle threads.
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT_S

    _status: int = 0
    _records: int | None = None
    _body_pending: bool = True  # a declared body nobody has read (or discarded) yet

    # Every method goes through one dispatcher, so unknown paths get 404 and known paths
    # 405 with an Allow header, whatever the method.
    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    # -- endpoints

    def _health(self) -> None:
        self._send_json(HTTPStatus.OK, {"status": "ok"})

    def _model(self) -> None:
        self._send_json(HTTPStatus.OK, self.server.predictor.describe())

    def _predict(self) -> None:
        records = _records_from(_parse_json(self._read_body(self._checked_body_length())))
        self._records = len(records)
        try:
            with self.server.predict_lock:
                predictions = self.server.predictor.predict_records(records)
        except DataValidationError as err:
            listed = [_problem_json(p) for p in err.problems[:MAX_LISTED_PROBLEMS]]
            raise _HttpError(HTTPStatus.BAD_REQUEST, "invalid patient records", problems=listed,
                             total=max(err.total, len(listed))) from None
        if not isinstance(predictions, list) or len(predictions) != len(records):
            got = len(predictions) if isinstance(predictions, list) else type(predictions)
            raise RuntimeError(f"predictor must return one prediction per record; "
                               f"got {got} for {len(records)}")
        self._send_json(HTTPStatus.OK, {"predictions": predictions})

    # -- request checks (all of them run before any body byte is read)

    def _checked_route(self, path: str) -> _Route:
        route = _ROUTES.get(path)
        if (route is None or route.needs_token) and not self._authorized():
            raise _HttpError(HTTPStatus.UNAUTHORIZED, "unauthorized",
                             "request: Authorization must be 'Bearer <token>'",
                             headers={"WWW-Authenticate": 'Bearer realm="fedcare"'})
        if route is None:
            raise _HttpError(HTTPStatus.NOT_FOUND, "not found",
                             "request: path must be one of " + ", ".join(_ROUTES))
        if self.command != route.method:
            raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed",
                             f"request: method must be {route.method} for {path}",
                             headers={"Allow": route.method})
        return route

    def _checked_body_length(self) -> int:
        media_type, _, params = (self.headers.get("Content-Type") or "").partition(";")
        charset = next((v.strip().strip('"').lower() for k, _, v in
                        (p.strip().partition("=") for p in params.split(";"))
                        if k.strip().lower() == "charset"), "utf-8")
        if media_type.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
            raise _HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported media type",
                             f"request: Content-Type must be {JSON_CONTENT_TYPE}")
        if "Transfer-Encoding" in self.headers:
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "length required",
                             "request: body must be sent with Content-Length, not chunked")
        length = self._declared_length()
        if length is None:
            if not self.headers.get_all("Content-Length"):
                raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "length required",
                                 "request: Content-Length must be set")
            _bad_request("request: Content-Length must be one non-negative integer")
        if length > MAX_BODY_BYTES:  # refused unread
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large",
                             f"request: body must be at most {MAX_BODY_BYTES} bytes; "
                             f"got {length}")
        return length

    def _declared_length(self) -> int | None:
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if len(values) != 1 or "Transfer-Encoding" in self.headers:
            return None
        text = values.pop()
        return int(text) if text.isascii() and text.isdigit() else None

    def _read_body(self, length: int) -> bytes:
        self._body_pending = False
        body = self.rfile.read(length)
        if len(body) != length:
            _bad_request(f"request: body must be {length} bytes as Content-Length says; "
                         f"got {len(body)}")
        return body

    def _discard_unread_body(self) -> None:
        """Drain a small body an error reply did not need, so the client sees the reply
        instead of a connection reset. Bodies over MAX_BODY_BYTES are never read."""
        length = self._declared_length() if self._body_pending else None
        self._body_pending = False
        if not length or length > MAX_BODY_BYTES:
            return
        deadline = time.monotonic() + 2.0
        with contextlib.suppress(OSError):
            while length > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(length, 65536))
                if not chunk:
                    break
                length -= len(chunk)

    def _authorized(self) -> bool:
        if not self.server.token_required:
            return True
        values = self.headers.get_all("Authorization") or []
        if len(values) != 1:
            return False
        scheme, _, credentials = values[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Header values arrive decoded as latin-1, so this round-trips the client's bytes.
        return self.server.token_matches(credentials.strip().encode("latin-1", "replace"))

    def handle_expect_100(self) -> bool:
        """Answer "Expect: 100-continue" with the final error if the body would be refused."""
        path = urlsplit(self.path).path
        try:
            if self._checked_route(path).method == "POST":
                self._checked_body_length()
        except _HttpError as err:
            self._body_pending = False  # the client waits and never sends it
            self._send_json(err.status, err.payload(), err.headers)
            self._log(path if path in _ROUTES else "<unknown path>", time.monotonic())
            return False
        return super().handle_expect_100()

    # -- dispatch and replies

    def _dispatch(self) -> None:
        started = time.monotonic()
        path = urlsplit(self.path).path
        shown = path if path in _ROUTES else "<unknown path>"  # a stray path may hold values
        try:
            self._checked_route(path).action(self)
        except _HttpError as err:
            self._send_json(err.status, err.payload(), err.headers)
        except TimeoutError:
            logger.warning("%s %s: client stalled for %ss; disconnected", self.command, shown,
                           self.timeout)
            self._body_pending = False
            self._send_error_safely(HTTPStatus.REQUEST_TIMEOUT, "request timeout",
                                    "request: body must arrive within the timeout")
        except (BrokenPipeError, ConnectionResetError):
            logger.info("%s %s: client went away", self.command, shown)
            self._body_pending = False
        except Exception:
            incident = uuid.uuid4().hex[:12]
            logger.exception("%s %s failed (incident %s)", self.command, shown, incident)
            self._send_error_safely(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error",
                                    f"the server could not answer; quote incident {incident} "
                                    "to its operator")
        finally:
            self._log(shown, started)
            self._discard_unread_body()

    def _send_error_safely(self, status: HTTPStatus, error: str, detail: str) -> None:
        if self._status:  # a reply has already started: the connection just closes
            return
        with contextlib.suppress(OSError):
            self._send_json(status, {"error": error, "detail": detail})

    def _send_json(self, status: HTTPStatus | int, payload: object,
                   headers: dict[str, str] | None = None) -> None:
        body = _dumps(payload)  # before any header goes out, so a failure can still be a 500
        self._status = int(status)
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", JSON_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _log(self, path: str, started: float) -> None:
        ms = (time.monotonic() - started) * 1000.0
        records = "" if self._records is None else f" ({self._records} records)"
        level = logging.INFO if self._status < 500 else logging.ERROR
        logger.log(level, "%s %s -> %s%s in %.1f ms", self.command, path, self._status or "-",
                   records, ms)

    # -- the base class's own replies and logging (malformed requests, stderr lines)

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        # Called by the base class for malformed request lines, oversized headers and
        # unknown methods. Its message may quote the raw request line: not echoed or logged.
        try:
            phrase = HTTPStatus(code).phrase.lower()
        except ValueError:
            phrase = "error"
        logger.info("rejected a malformed request -> %d", code)
        self._body_pending = False
        with contextlib.suppress(OSError):
            self._send_json(code, {"error": phrase,
                                   "detail": "request: must be a well-formed HTTP/1.x request"})

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _log writes one line per request instead

    def log_message(self, format: str, *args: Any) -> None:
        pass  # never stderr; never the raw request line (it may carry patient values)


_ROUTES: dict[str, _Route] = {
    "/health": _Route("GET", _Handler._health, needs_token=False),
    "/model": _Route("GET", _Handler._model, needs_token=True),
    "/predict": _Route("POST", _Handler._predict, needs_token=True),
}
