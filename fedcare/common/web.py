"""Serving an ASGI app (the prediction API, the console) the same safe way: uvicorn.

Both services share one set of rules, checked before a socket is bound:

- bind to 127.0.0.1 by default; any other address needs a bearer token of at least
  ``MIN_TOKEN_CHARS`` printable ASCII characters (compared in constant time, never echoed);
- TLS when ``ssl_certfile`` and ``ssl_keyfile`` are given (both or neither); plain HTTP off
  the loopback interface is allowed but warned about;
- SIGTERM or Ctrl-C stops accepting connections, lets in-flight requests finish (up to
  ``DRAIN_TIMEOUT_S``), then returns normally (exit status 0);
- no access log (a request line may hold values), no ``Server`` header, and a malformed
  request is answered with a JSON 400 that never quotes the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Generator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from fedcare.common.errors import ConfigError, describe_value

logger = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
DRAIN_TIMEOUT_S = 30.0
"""In-flight requests get this long to finish after SIGTERM; then they are cancelled."""
BACKLOG = 64
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP; a host name or ``""`` (all interfaces) is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(where: str, *, host: str, port: object, token: str | None,
               ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> list[str]:
    """Every problem with these settings, as ``<where>: <name> must be <rule>; got <value>``."""
    problems = []
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        problems.append(f"{where}: port must be an integer in 0..65535; got {describe_value(port)}")
    if token is not None:
        # Never echo the token itself in a message.
        if len(token) < MIN_TOKEN_CHARS:
            problems.append(f"{where}: token must be at least {MIN_TOKEN_CHARS} characters; "
                            f"got {len(token)} characters")
        if not all("!" <= ch <= "~" for ch in token):
            problems.append(f"{where}: token must be printable ASCII without spaces; "
                            "got other characters")
    elif not is_loopback(host):
        problems.append(f"{where}: token must be set to bind to a non-loopback address; "
                        f"got host {describe_value(host)} and no token")
    if (ssl_certfile is None) != (ssl_keyfile is None):
        problems.append(f"{where}: ssl-certfile and ssl-keyfile must be given together; "
                        f"got only {'ssl-certfile' if ssl_keyfile is None else 'ssl-keyfile'}")
    for name, path in (("ssl-certfile", ssl_certfile), ("ssl-keyfile", ssl_keyfile)):
        if path is not None and not Path(path).is_file():
            problems.append(f"{where}: {name} must be a readable file; got {describe_value(path)}")
    return problems


class BearerToken:
    """``Authorization: Bearer <token>`` checked in constant time (``None``: no token needed)."""

    def __init__(self, token: str | None) -> None:
        self.required = token is not None
        self._token = b"" if token is None else token.encode("utf-8")

    def admits(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """True when no token is needed, or exactly one Authorization header carries it."""
        if not self.required:
            return True
        values = [v for k, v in headers if k.lower() == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, credentials = values[0].strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials.strip(), self._token)


def json_bytes(payload: object) -> bytes:
    """Strict JSON (no NaN); numpy scalars and arrays (a model's outputs) as plain JSON."""
    return json.dumps(payload, allow_nan=False, default=_json_default,
                      ensure_ascii=False).encode("utf-8")


def _json_default(value: object) -> object:
    for method in ("item", "tolist"):
        convert = getattr(value, method, None)
        if callable(convert):
            return convert()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


async def send_json(send: Any, status: int, payload: object,
                    headers: Mapping[str, str] | None = None) -> None:
    """A whole JSON reply on a raw ASGI ``send`` (for middleware that answers by itself)."""
    body = json_bytes(payload)
    raw = [(b"content-type", JSON_CONTENT_TYPE.encode()),
           (b"content-length", str(len(body)).encode()), *SECURITY_HEADERS,
           *((k.lower().encode("latin-1"), v.encode("latin-1"))
             for k, v in (headers or {}).items())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class JsonErrorH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, but a request h11 cannot parse gets a JSON 400.

    The reply never quotes the request (its line or headers may hold patient values); a
    bad ``Content-Length`` is named, as clients most often get that one wrong.
    """

    def send_400_response(self, msg: str) -> None:
        cause = sys.exc_info()[1]  # called from uvicorn's ``except h11.RemoteProtocolError``
        detail = ("request: Content-Length must be one non-negative integer"
                  if isinstance(cause, h11.RemoteProtocolError) and "Content-Length" in str(cause)
                  else "request: must be a well-formed HTTP/1.x request")
        logger.info("rejected a malformed request -> 400")
        body = json_bytes({"error": "bad request", "detail": detail})
        headers = [(b"content-type", JSON_CONTENT_TYPE.encode()),
                   (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
                   *SECURITY_HEADERS]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, but SIGTERM/SIGINT drain and then return (exit 0), never re-raised."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._drain) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _drain(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:  # a second signal: stop waiting for in-flight requests
            self.force_exit = True
            return
        logger.info("%s: finishing in-flight requests (up to %.0f s), accepting no new ones",
                    signal.Signals(sig).name, DRAIN_TIMEOUT_S)
        self.should_exit = True


class WebServer:
    """A bound socket and the uvicorn server that will serve ``app`` on it."""

    def __init__(self, app: Any, sock: socket.socket, *, tls: bool,
                 ssl_certfile: str | None, ssl_keyfile: str | None) -> None:
        self.socket = sock
        self.server_address: tuple[Any, ...] = sock.getsockname()
        self.tls = tls
        config = uvicorn.Config(app, http=JsonErrorH11Protocol, lifespan="off",
                                log_config=None, access_log=False, server_header=False,
                                date_header=False, backlog=BACKLOG,
                                timeout_graceful_shutdown=int(DRAIN_TIMEOUT_S),
                                ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
        self._server = _DrainingServer(config)
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        scheme = "https" if self.tls else "http"
        return f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"

    def serve_forever(self) -> None:
        """Serve until SIGTERM/SIGINT (main thread) or :meth:`shutdown`, then drain."""
        try:
            asyncio.run(self._server.serve(sockets=[self.socket]))
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        """From another thread: stop serving, drain, and wait for :meth:`serve_forever`."""
        self._server.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()

    @contextlib.contextmanager
    def in_thread(self, timeout: float = DRAIN_TIMEOUT_S) -> Generator[WebServer, None, None]:
        """Serve on a daemon thread for the ``with`` block; then shut down and close."""
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.shutdown(timeout)
            self.server_close()
            thread.join(timeout)


def bind(app: Any, where: str, *, host: str, port: int, token: str | None,
         ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> WebServer:
    """Check the settings, bind (not yet serve) ``app``; ``port=0`` picks a free port.

    Raises ``ConfigError`` listing every problem (see :func:`check_bind`), or naming an
    address that cannot be bound.
    """
    problems = check_bind(where, host=host, port=port, token=token,
                          ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    if problems:
        raise ConfigError(problems)
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.set_inheritable(True)
    except OSError as err:
        sock.close()
        raise ConfigError([f"{where}: address must be free and local to this machine; got "
                           f"{describe_value(host)} port {port} ({err.strerror or err})"]) from err
    tls = ssl_certfile is not None
    server = WebServer(app, sock, tls=tls, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    if token is None:
        logger.warning("%s: no token: any process that can reach %s can use it", where,
                       server.url)
    elif not is_loopback(host) and not tls:
        logger.warning("%s: serving plain HTTP on %s: pass --ssl-certfile/--ssl-keyfile (or put "
                       "a TLS-terminating proxy in front) so data and the token are encrypted "
                       "on the network", where, server.url)
    return server


def read_token(token_file: str | None, env_var: str) -> str | None:
    """The token from ``token_file`` (a regular file readable by its owner only; surrounding
    whitespace dropped), else ``$env_var``."""
    if token_file:
        from fedcare.data.safe_read import read_secret_file

        return read_secret_file(token_file)  # UnreadableFile: a message, rc 2
    return os.environ.get(env_var) or None


def add_server_flags(parser: Any, *, port: int, token_env: str) -> None:
    """``--host --port --token-file --ssl-certfile --ssl-keyfile`` (argparse), one wording."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--token-file", help=f"token file (or set {token_env}); required "
                                             "when --host is not loopback")
    parser.add_argument("--ssl-certfile", help="TLS certificate (PEM); with --ssl-keyfile: "
                                               "HTTPS")
    parser.add_argument("--ssl-keyfile", help="TLS private key (PEM)")
