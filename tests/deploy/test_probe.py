"""The site's TLS probe: it names the problem Flower's SuperNode only retries on."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcare.deploy import certs as certs_mod
from fedcare.deploy.probe import (
    FIRST_WAIT,
    MAX_WAIT,
    ConnectError,
    ProbeResult,
    probe_once,
    wait_for_superlink,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("certs")
    certs_mod.init(root / "ours", hosts=["localhost", "127.0.0.1"], sites=[])
    certs_mod.create_ca(root / "other")
    return root


def _serve(listener: socket.socket, tls: ssl.SSLContext | None) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        try:
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)
            else:  # an HTTP/2 server without TLS: answers a ClientHello with a frame
                conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            conn.recv(1)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()


@pytest.fixture
def server(request: pytest.FixtureRequest, certs: Path) -> Iterator[str]:
    """A loopback server: TLS with the SuperLink certificate, or plain TCP."""
    tls = None
    if request.param == "tls":
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(certs / "ours" / certs_mod.SERVER_CERT,
                            certs / "ours" / certs_mod.SERVER_KEY)
        tls.set_alpn_protocols(["h2"])
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_serve, args=(listener, tls), daemon=True).start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _ca(certs: Path, which: str) -> bytes:
    return (certs / which / certs_mod.CA_CERT).read_bytes()


@pytest.mark.parametrize("server", ["tls"], indirect=True)
def test_the_consortium_ca_verifies_the_superlink(server: str, certs: Path) -> None:
    assert probe_once(server, _ca(certs, "ours")) == ProbeResult(True)


@pytest.mark.parametrize("server", ["tls"], indirect=True)
def test_another_ca_is_named_as_a_certificate_problem(server: str, certs: Path) -> None:
    result = probe_once(server, _ca(certs, "other"))
    assert not result.ok
    assert "CERTIFICATE_VERIFY_FAILED" in result.problem and "CA certificate" in result.problem
    assert "(--root-cert, default CERTS/ca/ca.pem)" in result.problem  # the flag supernode has
    assert result.settings  # waiting cannot fix it


@pytest.mark.parametrize("server", ["plain"], indirect=True)
def test_a_superlink_without_tls_is_named_as_such(server: str, certs: Path) -> None:
    result = probe_once(server, _ca(certs, "ours"), timeout=2.0)
    assert not result.ok
    assert "must speak TLS" in result.problem
    assert not result.settings  # a SuperLink restarted with TLS would answer a later attempt


@pytest.mark.parametrize("server", ["tls"], indirect=True)
def test_an_insecure_site_meeting_a_tls_superlink_is_told_to_use_tls(server: str) -> None:
    result = probe_once(server, None)
    assert not result.ok
    assert "speaks TLS" in result.problem and "got --insecure (no TLS)" in result.problem
    assert result.settings


@pytest.mark.parametrize("server", ["plain"], indirect=True)
def test_an_insecure_site_meeting_a_plain_superlink_connects(server: str) -> None:
    assert probe_once(server, None, timeout=2.0) == ProbeResult(True)


def test_nothing_listening_is_named_as_unreachable() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    result = probe_once(address, None)
    assert not result.ok and "must accept connections" in result.problem


def test_gives_up_after_the_given_attempts_with_growing_waits() -> None:
    waits: list[float] = []
    calls: list[str] = []

    def failing(address: str, roots: bytes | None) -> ProbeResult:
        calls.append(address)
        return ProbeResult(False, "TLS: broken")

    with pytest.raises(ConnectError, match=r"after 6 connection attempt\(s\): TLS: broken"):
        wait_for_superlink("h:1", None, 6, sleep=waits.append, probe=failing)

    assert len(calls) == 6
    assert waits == [FIRST_WAIT, 2 * FIRST_WAIT, 4 * FIRST_WAIT, MAX_WAIT, MAX_WAIT]


def test_a_problem_of_the_sites_own_settings_ends_at_the_first_attempt() -> None:
    # Arrange: a certificate from another CA (the probe marks it as the site's settings)
    calls: list[str] = []

    def wrong_ca(address: str, roots: bytes | None) -> ProbeResult:
        calls.append(address)
        return ProbeResult(False, "TLS: the SuperLink's certificate must chain", settings=True)

    # Act / Assert: no wait, no second attempt
    with pytest.raises(ConnectError, match=r"after 1 connection attempt\(s\) \(this site's "
                                           r"settings.*\): TLS: the SuperLink's certificate"):
        wait_for_superlink("h:1", None, 5, sleep=lambda s: pytest.fail("waited"),
                           probe=wrong_ca)
    assert calls == ["h:1"]


def test_returns_the_attempt_that_succeeded() -> None:
    answers = iter([ProbeResult(False, "down"), ProbeResult(True)])
    used = wait_for_superlink("h:1", None, 3, sleep=lambda s: None,
                              probe=lambda a, r: next(answers))
    assert used == 2


def test_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max-connect-attempts must be >= 1; got 0"):
        wait_for_superlink("h:1", None, 0)
