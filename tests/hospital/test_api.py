"""The on-premises prediction service, exercised over real HTTP on 127.0.0.1.

The predictor is a fake (risk = age / 100) so these tests need no model; the real
``ModelBundle`` only has to honour the same two-method protocol.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fedcare.common.errors import ConfigError, DataValidationError, describe_value
from fedcare.common.web import WebServer
from fedcare.data.validate import DataProblem
from fedcare.hospital.api import MAX_BODY_BYTES, MAX_RECORDS, make_server

TOKEN = "test-token-0123456789abcdef"
TIMEOUT_S = 5.0
# A whole Python process starting or stopping: generous, a loaded CI machine is slow at it.
PROCESS_TIMEOUT_S = 60.0
LOGGER = "fedcare.hospital.api"
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- fakes


@dataclass
class FakePredictor:
    """risk = age / 100; a non-numeric age is a DataValidationError naming row (from 1,
    as ``ModelBundle`` counts) and column.

    ``gate`` (if set) holds every call until released; ``fail_with`` makes every call raise.
    It records the calls and how many ran at once.
    """

    gate: threading.Event | None = None
    fail_with: Exception | None = None
    calls: list[list[dict[str, object]]] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def predict_records(self, records: list[dict[str, object]]) -> list[dict[str, Any]]:
        with self._lock:
            self.calls.append(records)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                assert self.gate.wait(TIMEOUT_S), "test gate never opened"
            else:
                time.sleep(0.005)  # long enough for overlapping calls to show up
            if self.fail_with is not None:
                raise self.fail_with
            problems = [DataProblem("request", row, "age",
                                    f"age must be a number; got {describe_value(r.get('age'))}")
                        for row, r in enumerate(records, start=1)
                        if not _is_number(r.get("age"))]
            if problems:
                raise DataValidationError("request", problems)
            return [{"risk": float(r["age"]) / 100, "label": int(float(r["age"]) >= 50)}  # type: ignore[arg-type]
                    for r in records]
        finally:
            with self._lock:
                self.active -= 1

    def describe(self) -> dict[str, Any]:
        return {"model": "fake", "features": ["age"], "privacy": "none (test double)"}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class WrongCountPredictor(FakePredictor):
    def predict_records(self, records: list[dict[str, object]]) -> list[dict[str, Any]]:
        return super().predict_records(records)[:-1]


# --------------------------------------------------------------------------- HTTP client


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: dict[str, Any]


@dataclass
class Api:
    server: WebServer
    predictor: FakePredictor

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def request(self, method: str, path: str, body: bytes | dict[str, Any] | None = None, *,
                content_type: str | None = "application/json", token: str | None = None,
                headers: dict[str, str] | None = None, send_length: bool = True) -> Reply:
        """One request on a fresh connection; headers exactly as given (no auto-length)."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT_S)
        try:
            conn.putrequest(method, path)
            if content_type is not None and data is not None:
                conn.putheader("Content-Type", content_type)
            if data is not None and send_length:
                conn.putheader("Content-Length", str(len(data)))
            if token is not None:
                conn.putheader("Authorization", f"Bearer {token}")
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.endheaders()
            if data:
                conn.send(data)
            response = conn.getresponse()
            raw = response.read()
            assert response.getheader("Content-Type") == "application/json; charset=utf-8"
            return Reply(response.status, response.headers, json.loads(raw))
        finally:
            conn.close()

    def predict(self, patients: list[Any], **kwargs: Any) -> Reply:
        return self.request("POST", "/predict", {"patients": patients}, **kwargs)


@pytest.fixture
def start_api() -> Iterator[Callable[..., Api]]:
    """Factory: a live server on 127.0.0.1:<free port>, shut down after the test."""
    with contextlib.ExitStack() as running:

        def start(predictor: FakePredictor | None = None, *, token: str | None = None) -> Api:
            fake = predictor if predictor is not None else FakePredictor()
            server = make_server(fake, host="127.0.0.1", port=0, token=token)
            return Api(running.enter_context(server.in_thread(TIMEOUT_S)), fake)

        yield start


@pytest.fixture
def api(start_api: Callable[..., Api]) -> Api:
    return start_api()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# --------------------------------------------------------------------------- endpoints


def test_health_answers_ok(api: Api) -> None:
    reply = api.request("GET", "/health")

    assert (reply.status, reply.body) == (200, {"status": "ok"})


def test_model_answers_the_predictor_description(api: Api) -> None:
    reply = api.request("GET", "/model")

    assert reply.status == 200
    assert reply.body == FakePredictor().describe()


def test_predict_answers_one_prediction_per_patient_in_order(api: Api) -> None:
    patients = [{"age": 70}, {"age": 30.5}, {"age": 55, "note": None}]

    reply = api.predict(patients)

    assert reply.status == 200
    assert reply.body == {"predictions": [{"risk": 0.7, "label": 1}, {"risk": 0.305, "label": 0},
                                          {"risk": 0.55, "label": 1}]}
    assert api.predictor.calls == [patients]
    assert reply.headers["Cache-Control"] == "no-store"


def test_a_query_string_does_not_change_the_route(api: Api) -> None:
    assert api.request("GET", "/health?probe=1").status == 200


# --------------------------------------------------------------------------- 400


def test_bad_patient_values_list_every_problem_with_row_and_column(api: Api) -> None:
    reply = api.predict([{"age": 40}, {"age": "old"}, {"age": None}])

    assert reply.status == 400
    assert reply.body == {
        "error": "invalid patient records",
        "problems": [{"row": 2, "column": "age", "message": "age must be a number; got 'old'"},
                     {"row": 3, "column": "age", "message": "age must be a number; got nothing"}],
        "total": 2,
    }


def test_non_object_patients_and_nested_values_are_listed_by_row_from_1(api: Api) -> None:
    reply = api.predict([{"age": 1}, 5, "x", {"age": {"years": 1}}])

    assert reply.status == 400
    assert [(p["row"], p["column"]) for p in reply.body["problems"]] == [
        (2, None), (3, None), (4, "age")]
    assert reply.body["problems"][0]["message"] == "record must be a JSON object; got number"
    assert api.predictor.calls == []


TOO_MANY = json.dumps({"patients": [{"age": 1}] * (MAX_RECORDS + 1)}).encode()


@pytest.mark.parametrize(("body", "error", "detail"), [
    (b"{not json", "invalid JSON", "must be valid JSON"),
    (b"", "invalid JSON", "must be valid JSON"),
    (b'{"patients": [{"age": 1}]}\xff', "invalid JSON", "UTF-8"),
    (b'{"patients": [{"age": NaN}]}', "invalid JSON", "NaN is not valid JSON"),
    (b'{"patients": [{"age": 1, "age": 2}]}', "invalid JSON", "duplicate key 'age'"),
    (b"[" * 100_000, "invalid JSON", "nested too deeply"),
    (b"[]", "invalid request", "body must be a JSON object"),
    (b"{}", "invalid request", 'must hold "patients"'),
    (b'{"patients": [{"age": 1}], "debug": true}', "invalid request", "unknown key(s) 'debug'"),
    (b'{"patients": {"age": 1}}', "invalid request", "patients must be a JSON array; got object"),
    (b'{"patients": []}', "invalid request", "at least 1 record; got 0"),
    (TOO_MANY, "invalid request", f"at most {MAX_RECORDS} records; got {MAX_RECORDS + 1}"),
], ids=["syntax", "empty", "not-utf8", "nan", "duplicate-key", "deep", "array", "no-patients",
        "unknown-key", "patients-object", "no-records", "too-many"])
def test_malformed_requests_are_400_and_never_reach_the_predictor(
        api: Api, body: bytes, error: str, detail: str) -> None:
    reply = api.request("POST", "/predict", body)

    assert reply.status == 400
    assert reply.body["error"] == error
    assert detail in reply.body["detail"]
    assert api.predictor.calls == []


def test_exactly_max_records_are_accepted(api: Api) -> None:
    reply = api.predict([{"age": 1}] * MAX_RECORDS)

    assert reply.status == 200
    assert len(reply.body["predictions"]) == MAX_RECORDS


@pytest.mark.parametrize("length", ["abc", "-1", "1e3"])
def test_a_malformed_content_length_is_400(api: Api, length: str) -> None:
    reply = api.request("POST", "/predict", b"", headers={"Content-Length": length},
                        send_length=False)

    assert reply.status == 400
    assert "Content-Length" in reply.body["detail"]


# --------------------------------------------------------------------------- 404 to 415


def test_unknown_path_is_404(api: Api) -> None:
    reply = api.request("GET", "/admin")

    assert reply.status == 404
    assert reply.body["error"] == "not found"


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("POST", "/health", "GET"), ("GET", "/predict", "POST"), ("DELETE", "/model", "GET"),
    ("PUT", "/predict", "POST"),
])
def test_wrong_method_is_405_with_allow(api: Api, method: str, path: str, allow: str) -> None:
    reply = api.request(method, path, {"patients": [{"age": 1}]})

    assert reply.status == 405
    assert reply.headers["Allow"] == allow
    assert api.predictor.calls == []


def test_missing_content_length_is_411(api: Api) -> None:
    reply = api.request("POST", "/predict", b"", send_length=False)

    assert reply.status == 411
    assert reply.body["error"] == "length required"


def test_chunked_body_is_411(api: Api) -> None:
    reply = api.request("POST", "/predict", b"0\r\n\r\n", send_length=False,
                        headers={"Transfer-Encoding": "chunked"})

    assert reply.status == 411


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
def test_oversized_body_is_413_without_being_read(api: Api, expect: bool) -> None:
    # Only the headers are sent: a server that tried to read the body would hang here
    # until the client timeout instead of answering.
    headers = {"Content-Length": str(MAX_BODY_BYTES + 1)}
    if expect:
        headers["Expect"] = "100-continue"
    started = time.monotonic()

    reply = api.request("POST", "/predict", b"", headers=headers, send_length=False)

    assert reply.status == 413
    assert str(MAX_BODY_BYTES) in reply.body["detail"]
    assert time.monotonic() - started < TIMEOUT_S / 2


def test_a_body_at_the_size_limit_is_read(api: Api) -> None:
    body = json.dumps({"patients": [{"age": 42}]}).encode()
    body += b" " * (MAX_BODY_BYTES - len(body))

    reply = api.request("POST", "/predict", body)

    assert reply.status == 200


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1",
])
def test_non_json_content_type_is_415(api: Api, content_type: str | None) -> None:
    reply = api.predict([{"age": 1}], content_type=content_type)

    assert reply.status == 415
    assert api.predictor.calls == []


def test_json_content_type_with_utf8_charset_is_accepted(api: Api) -> None:
    reply = api.predict([{"age": 1}], content_type="Application/JSON; charset=UTF-8")

    assert reply.status == 200


# --------------------------------------------------------------------------- 500


def test_predictor_failure_is_500_without_internals(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    api.predictor.fail_with = RuntimeError("secret: /srv/site-0/model.keras shape (30, 16)")
    caplog.set_level(logging.INFO, logger=LOGGER)

    reply = api.predict([{"age": 1}])

    assert reply.status == 500
    text = json.dumps(reply.body)
    for leak in ("secret", "model.keras", "RuntimeError", "Traceback", "File "):
        assert leak not in text
    incident = reply.body["detail"].split("incident ")[1].split()[0]
    failure = next(r for r in caplog.records if r.exc_info)
    assert incident in failure.getMessage()
    assert "secret: /srv/site-0/model.keras" in caplog.text  # the operator sees it


def test_a_predictor_that_drops_a_prediction_is_500(start_api: Callable[..., Api]) -> None:
    api = start_api(WrongCountPredictor())

    reply = api.predict([{"age": 1}, {"age": 2}])

    assert reply.status == 500
    assert reply.body["error"] == "internal error"


# --------------------------------------------------------------------------- token


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({"Authorization": "Bearer wrong-token-0123456789"}, 401),
    ({"Authorization": f"Bearer {TOKEN}x"}, 401),
    ({"Authorization": f"Basic {TOKEN}"}, 401),
    ({"Authorization": TOKEN}, 401),
    ({"Authorization": f"Bearer {TOKEN}"}, 200),
    ({"Authorization": f"bearer {TOKEN}"}, 200),
], ids=["none", "wrong", "longer", "basic", "no-scheme", "right", "lowercase-scheme"])
@pytest.mark.parametrize("endpoint", ["model", "predict"])
def test_token_guards_model_and_predict(start_api: Callable[..., Api], endpoint: str,
                                        headers: dict[str, str], status: int) -> None:
    api = start_api(token=TOKEN)

    if endpoint == "model":
        reply = api.request("GET", "/model", headers=headers)
    else:
        reply = api.predict([{"age": 60}], headers=headers)

    assert reply.status == status
    if status == 401:
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert reply.body["error"] == "unauthorized"
        assert api.predictor.calls == []


def test_health_is_open_when_a_token_is_set(start_api: Callable[..., Api]) -> None:
    api = start_api(token=TOKEN)

    assert api.request("GET", "/health").status == 200


def test_unknown_paths_do_not_reveal_themselves_without_the_token(
        start_api: Callable[..., Api]) -> None:
    api = start_api(token=TOKEN)

    assert api.request("GET", "/admin").status == 401
    assert api.request("GET", "/admin", token=TOKEN).status == 404


def test_a_wrong_token_is_checked_before_the_body_is_judged(
        start_api: Callable[..., Api]) -> None:
    api = start_api(token=TOKEN)

    reply = api.request("POST", "/predict", b"{not json", content_type="text/plain")

    assert reply.status == 401


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.1.2.3", "hospital-ml.local"])
def test_binding_beyond_loopback_without_a_token_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="token must be set") as err:
        make_server(FakePredictor(), host=host, port=0)

    assert repr(host) in str(err.value)


@pytest.mark.parametrize("token", ["short-token", "", "x" * 15, "sixteen chars ok",
                                   "pässwörd-0123456789"],
                         ids=["short", "empty", "15-chars", "space", "non-ascii"])
def test_a_weak_or_unusable_token_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(ConfigError, match="token must be") as err:
        make_server(FakePredictor(), host="0.0.0.0", port=0, token=token)

    assert not token or token not in str(err.value)


@pytest.mark.parametrize("port", [-1, 65536])
def test_a_port_out_of_range_is_refused(port: int) -> None:
    with pytest.raises(ConfigError, match=r"port must be an integer in 0\.\.65535"):
        make_server(FakePredictor(), port=port)


def test_a_port_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="address must be free"):
            make_server(FakePredictor(), port=port)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_binds_without_a_token(host: str) -> None:
    server = make_server(FakePredictor(), host=host, port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert server.url.startswith("http://")
    finally:
        server.server_close()


def test_ipv6_loopback_binds_without_a_token() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = make_server(FakePredictor(), host="::1", port=0)
    try:
        assert server.url.startswith("http://[::1]:")
    finally:
        server.server_close()


# --------------------------------------------------------------------------- concurrency, logs


def test_parallel_requests_each_get_their_own_predictions(api: Api) -> None:
    ages = list(range(20, 36))

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda age: api.predict([{"age": age}, {"age": age + 1}]), ages))
        health = list(pool.map(lambda _: api.request("GET", "/health").status, range(8)))

    assert [r.status for r in replies] == [200] * len(ages)
    assert [[p["risk"] for p in r.body["predictions"]] for r in replies] == [
        [age / 100, (age + 1) / 100] for age in ages]
    assert health == [200] * 8
    assert api.predictor.max_active == 1  # the model is never entered twice at once


def test_health_answers_while_a_prediction_is_running(start_api: Callable[..., Api]) -> None:
    gate = threading.Event()
    api = start_api(FakePredictor(gate=gate))

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(api.predict, [{"age": 80}])
        try:
            wait_for(lambda: api.predictor.active == 1, "the prediction to start")
            assert api.request("GET", "/health").status == 200
            assert not pending.done()
        finally:
            gate.set()
        assert pending.result(TIMEOUT_S).status == 200


def test_logs_name_method_path_and_status_but_never_patient_values(
        api: Api, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    api.predict([{"age": 61.25, "name": "Jane Roe"}])
    api.predict([{"age": "Jane Roe"}])
    api.request("GET", "/patients/Jane-Roe")
    wait_for(lambda: caplog.text.count(" -> ") >= 3, "three request log lines")

    assert "POST /predict -> 200 (1 records)" in caplog.text
    assert "POST /predict -> 400 (1 records)" in caplog.text
    assert "GET <unknown path> -> 404" in caplog.text
    for value in ("61.25", "Jane", "Roe"):
        assert value not in caplog.text
    assert "HTTP/1.1" not in capsys.readouterr().err  # the base class's stderr lines are off


# --------------------------------------------------------------------------- serve()


def _spawn(script: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """A Python process running ``script``, and a queue of its stderr lines."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for text in proc.stderr or ():
            lines.put(text)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


_SERVE_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from fedcare.hospital.api import serve
class P:
    def predict_records(self, records): return [{"risk": 0.5} for _ in records]
    def describe(self): return {"model": "p"}
serve(P(), host="127.0.0.1", port=0, token=None)
"""


@pytest.mark.slow
def test_serve_logs_its_url_and_stops_cleanly_on_ctrl_c() -> None:
    proc, lines = _spawn(_SERVE_SCRIPT)
    try:
        line = ""
        while "listening on" not in line:
            line = lines.get(timeout=PROCESS_TIMEOUT_S)
        url = line.split("listening on ")[1].split()[0]
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        conn.close()

        proc.send_signal(signal.SIGINT)

        assert proc.wait(timeout=PROCESS_TIMEOUT_S) == 0
        rest: list[str] = []
        while "prediction service stopped" not in "".join(rest):
            rest.append(lines.get(timeout=TIMEOUT_S))
        assert "Traceback" not in "".join(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT_S)


# --------------------------------------------------------------------------- FastAPI additions


def test_openapi_schema_documents_the_three_endpoints(api: Api) -> None:
    reply = api.request("GET", "/openapi.json")

    assert reply.status == 200
    paths = reply.body["paths"]
    assert sorted(paths) == ["/health", "/model", "/predict"]
    predict = paths["/predict"]["post"]
    body_schema = predict["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["properties"]["patients"]["maxItems"] == MAX_RECORDS
    assert {"200", "400", "401", "411", "413", "415"} <= set(predict["responses"])


def test_openapi_schema_needs_the_token_when_one_is_set(start_api: Callable[..., Api]) -> None:
    api = start_api(token=TOKEN)

    assert api.request("GET", "/openapi.json").status == 401
    assert api.request("GET", "/openapi.json", token=TOKEN).status == 200


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_no_documentation_page_that_would_load_scripts_from_a_cdn(api: Api, path: str) -> None:
    assert api.request("GET", path).status == 404


def test_leading_slashes_collapse_as_before(api: Api) -> None:
    assert api.request("GET", "//health").status == 200


def test_a_malformed_request_line_is_a_json_400_that_does_not_quote_it(api: Api) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(b"GET /patients/Jane Roe HTTP/1.1 extra\r\nHost: x\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk

    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/json; charset=utf-8" in head.lower()
    assert json.loads(body)["error"] == "bad request"
    assert b"Jane" not in raw


def test_replies_carry_no_server_header(api: Api) -> None:
    reply = api.request("GET", "/health")

    assert "Server" not in reply.headers
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


def test_half_a_tls_pair_is_refused(tmp_path: Path) -> None:
    cert = tmp_path / "server.pem"
    cert.write_text("not used")

    with pytest.raises(ConfigError, match="ssl-certfile and ssl-keyfile must be given together"):
        make_server(FakePredictor(), ssl_certfile=str(cert))


def test_a_missing_tls_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ssl-keyfile must be a readable file"):
        make_server(FakePredictor(), ssl_certfile=__file__,
                    ssl_keyfile=str(tmp_path / "absent.key"))


def test_tls_serves_https_that_a_client_trusting_the_ca_can_verify(tmp_path: Path) -> None:
    import ssl

    from fedcare.deploy.certs import CA_CERT, SERVER_CERT, SERVER_KEY, create_ca, issue_server_cert

    create_ca(tmp_path)
    issue_server_cert(tmp_path, hosts=["127.0.0.1"])
    server = make_server(FakePredictor(), ssl_certfile=str(tmp_path / SERVER_CERT),
                         ssl_keyfile=str(tmp_path / SERVER_KEY))
    with server.in_thread(TIMEOUT_S):
        context = ssl.create_default_context(cafile=str(tmp_path / CA_CERT))
        conn = http.client.HTTPSConnection("127.0.0.1", int(server.server_address[1]),
                                           timeout=TIMEOUT_S, context=context)
        conn.request("GET", "/health")
        response = conn.getresponse()

        assert server.url.startswith("https://127.0.0.1:")
        assert (response.status, json.loads(response.read())) == (200, {"status": "ok"})
        conn.close()


_DRAIN_SCRIPT = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from fedcare.hospital.api import serve
class Slow:
    def predict_records(self, records):
        print("predicting", file=sys.stderr, flush=True)
        time.sleep(1.0)
        return [{"risk": 0.5} for _ in records]
    def describe(self): return {"model": "slow"}
serve(Slow(), host="127.0.0.1", port=0, token=None)
"""


@pytest.mark.slow
def test_sigterm_lets_the_in_flight_prediction_finish_then_exits_0() -> None:
    proc, lines = _spawn(_DRAIN_SCRIPT)

    def wait_line(text: str) -> str:
        line = ""
        while text not in line:
            line = lines.get(timeout=PROCESS_TIMEOUT_S)
        return line

    try:
        url = wait_line("listening on").split("listening on ")[1].split()[0]
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(_predict_on, host, int(port))
            wait_line("predicting")

            proc.send_signal(signal.SIGTERM)

            status, body = pending.result(PROCESS_TIMEOUT_S)
        assert (status, body) == (200, {"predictions": [{"risk": 0.5}]})
        assert proc.wait(timeout=PROCESS_TIMEOUT_S) == 0
        wait_line("prediction service stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT_S)


def _predict_on(host: str, port: int) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=PROCESS_TIMEOUT_S)
    try:
        conn.request("POST", "/predict", json.dumps({"patients": [{"age": 1}]}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()
