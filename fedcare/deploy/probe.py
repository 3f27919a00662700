"""Can this site reach its SuperLink over TLS? Asked before Flower's SuperNode starts.

Flower's SuperNode logs only "Connection attempt failed, retrying" for every failure (no
TLS, a certificate from another CA, nothing listening) and retries forever. This probe
does one TLS handshake per attempt with the site's CA certificate and names the problem;
after ``attempts`` failures the site exits non-zero with that name. A problem that waiting
cannot fix (a certificate from another CA, a site without TLS meeting a TLS SuperLink: the
site's own settings) ends it at the first attempt.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedcare.common.errors import FedcareError

logger = logging.getLogger(__name__)

#: First wait between attempts; doubled after each failure, capped at MAX_WAIT.
FIRST_WAIT = 1.0
MAX_WAIT = 8.0
CONNECT_TIMEOUT = 5.0
GRPC_ALPN = "h2"


class ConnectError(FedcareError):
    """A site cannot open a TLS connection to its SuperLink."""


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    problem: str = ""
    #: the site's own settings are wrong: another attempt would fail the same way
    settings: bool = False


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def probe_once(address: str, root_certificates: bytes | None,
               timeout: float = CONNECT_TIMEOUT) -> ProbeResult:
    """One TCP connect + TLS handshake (verifying the SuperLink's certificate against
    ``root_certificates`` and its host name); ``None``: plain TCP only (insecure)."""
    host, port = _split(address)
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        return ProbeResult(False, f"the SuperLink at {address} must accept connections; "
                                  f"got {type(err).__name__}: {err}")
    with raw:
        if root_certificates is None:
            return _plain_text_is_spoken(raw, address)
        context = ssl.create_default_context(cadata=root_certificates.decode("ascii"))
        context.set_alpn_protocols([GRPC_ALPN])
        try:
            with context.wrap_socket(raw, server_hostname=host):
                return ProbeResult(True)
        except ssl.SSLCertVerificationError as err:
            return ProbeResult(False, f"TLS: the SuperLink's certificate must chain to this "
                                      f"site's CA certificate and name {host}; got "
                                      f"{err.verify_message} (CERTIFICATE_VERIFY_FAILED): "
                                      "check that this site's CA certificate (--root-cert, "
                                      "default CERTS/ca/ca.pem) is the consortium's ca.pem "
                                      "(compare its fingerprint) and that --superlink uses a "
                                      "host name in the SuperLink's certificate",
                               settings=True)
        except (ssl.SSLError, OSError) as err:  # reset, wrong version: not a TLS server
            return ProbeResult(False, f"TLS: the SuperLink at {address} must speak TLS; got "
                                      f"{type(err).__name__}: {err} (is it started with "
                                      "--insecure, or is this another service's port?)")


def _plain_text_is_spoken(raw: socket.socket, address: str) -> ProbeResult:
    """An insecure site (no TLS) meets a SuperLink that speaks TLS: Flower's SuperNode would
    only log "Connection attempt failed" for ever. A TLS handshake that succeeds without
    checking the certificate shows the mismatch."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only asks "is this TLS?"; nothing is sent
    context.set_alpn_protocols([GRPC_ALPN])
    try:
        with context.wrap_socket(raw):
            return ProbeResult(False, f"TLS: the SuperLink at {address} speaks TLS, so this "
                                      "site must too; got --insecure (no TLS): drop "
                                      "--insecure and give the consortium's ca.pem "
                                      "(--root-cert or CERTS/ca/ca.pem)", settings=True)
    except (ssl.SSLError, OSError):  # not a TLS server: plain text, as the site expects
        return ProbeResult(True)


def wait_for_superlink(address: str, root_certificates: bytes | None, attempts: int, *,
                       sleep: Callable[[float], None] = time.sleep,
                       probe: Callable[[str, bytes | None], ProbeResult] = probe_once
                       ) -> int:
    """Probe up to ``attempts`` times with exponential back-off; return the attempts used
    or raise :class:`ConnectError` naming the last problem (at once for a problem of the
    site's own settings)."""
    if attempts < 1:
        raise ValueError(f"supernode: max-connect-attempts must be >= 1; got {attempts}")
    wait = FIRST_WAIT
    for attempt in range(1, attempts + 1):
        result = probe(address, root_certificates)
        if result.ok:
            return attempt
        logger.warning("connection attempt %d/%d failed: %s", attempt, attempts,
                       result.problem)
        if result.settings:
            raise ConnectError(f"supernode: giving up after {attempt} connection attempt(s) "
                               "(this site's settings: another attempt would fail the same "
                               f"way): {result.problem}")
        if attempt < attempts:
            sleep(wait)
            wait = min(wait * 2, MAX_WAIT)
    raise ConnectError(f"supernode: giving up after {attempts} connection attempt(s): "
                       f"{result.problem}")
