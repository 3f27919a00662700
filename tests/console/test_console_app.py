"""The console over real HTTP on 127.0.0.1 (no browser): token, links, files, no CDN."""

from __future__ import annotations

import contextlib
import http.client
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fedcare.common.errors import ConfigError
from fedcare.common.web import WebServer
from fedcare.console.app import TOKEN_COOKIE, ConsoleSettings, make_server
from tests.console.factories import make_site, round_record, write_finished, write_running

TOKEN = "console-token-0123456789"
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    text: str


@dataclass
class Console:
    server: WebServer

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", int(self.server.server_address[1]),
                                          timeout=TIMEOUT_S)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return Reply(response.status, response.headers,
                         response.read().decode("utf-8", "replace"))
        finally:
            conn.close()


@pytest.fixture
def start_console() -> Iterator[Callable[..., Console]]:
    with contextlib.ExitStack() as running:

        def start(settings: ConsoleSettings, token: str | None = None) -> Console:
            server = make_server(settings, token=token)
            return Console(running.enter_context(server.in_thread(TIMEOUT_S)))

        yield start


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    write_finished(tmp_path, "done", [round_record(1, {"a": 0.2}), round_record(2, {"a": 0.3})])
    write_running(tmp_path, "going", [round_record(1, {"a": 0.2, "b": 0.4})], planned=3)
    return tmp_path


def test_runs_list_links_every_run_with_its_progress(
        start_console: Callable[..., Console], runs: Path) -> None:
    console = start_console(ConsoleSettings(runs_dir=runs))

    reply = console.get("/runs")

    assert reply.status == 200
    assert 'href="/runs/done"' in reply.text and 'href="/runs/going"' in reply.text
    assert "1 / 3" in reply.text


def test_a_running_run_page_asks_for_live_figures_and_a_finished_one_does_not(
        start_console: Callable[..., Console], runs: Path) -> None:
    console = start_console(ConsoleSettings(runs_dir=runs))

    going, done = console.get("/runs/going"), console.get("/runs/done")

    assert 'data-live="/runs/going/live"' in going.text and 'data-finished="0"' in going.text
    assert 'data-finished="1"' in done.text
    live = console.get("/runs/going/live")
    assert live.status == 200 and 'id="rounds-done">1<' in live.text
    assert live.text.count('<tr data-site=') == 2


def test_pages_load_scripts_and_styles_from_the_console_only(
        start_console: Callable[..., Console], runs: Path) -> None:
    console = start_console(ConsoleSettings(runs_dir=runs))

    page = console.get("/runs/done").text
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page)

    assert sorted(assets) == ["/static/console.css", "/static/console.js"]
    assert all(console.get(a).status == 200 for a in assets)
    assert "http://" not in page and "https://" not in page


def test_only_the_run_files_are_served(start_console: Callable[..., Console],
                                       runs: Path) -> None:
    (runs / "done" / "attempts.json").write_text("{}")
    console = start_console(ConsoleSettings(runs_dir=runs))

    report = console.get("/runs/done/files/report.json")

    assert report.status == 200 and '"fedcare-run-report"' in report.text
    assert console.get("/runs/done/files/attempts.json").status == 404
    assert console.get("/runs/going/files/report.json").status == 404  # not written yet
    assert console.get("/runs/nope").status == 404


def test_without_the_token_every_page_is_401_but_health_and_assets_are_open(
        start_console: Callable[..., Console], runs: Path) -> None:
    console = start_console(ConsoleSettings(runs_dir=runs), token=TOKEN)

    assert console.get("/runs").status == 401
    assert console.get("/runs/done/files/report.json").status == 401
    assert console.get("/runs?token=wrong-token-0123456789").status == 401
    assert console.get("/health").status == 200
    assert console.get("/static/console.css").status == 200


def test_token_in_the_address_becomes_a_strict_cookie_and_leaves_the_address(
        start_console: Callable[..., Console], runs: Path) -> None:
    console = start_console(ConsoleSettings(runs_dir=runs), token=TOKEN)

    reply = console.get(f"/runs?token={TOKEN}")

    assert reply.status == 303
    assert reply.headers["Location"] == "/runs"
    cookie = reply.headers["Set-Cookie"]
    assert cookie.startswith(f"{TOKEN_COOKIE}={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert console.get("/runs", {"Cookie": f"{TOKEN_COOKIE}={TOKEN}"}).status == 200
    assert console.get("/runs", {"Authorization": f"Bearer {TOKEN}"}).status == 200


def test_binding_beyond_loopback_without_a_token_is_refused(runs: Path) -> None:
    with pytest.raises(ConfigError, match="console: token must be set"):
        make_server(ConsoleSettings(runs_dir=runs), host="0.0.0.0")


def test_hospital_pages_are_404_when_no_site_dir_was_given(
        start_console: Callable[..., Console], runs: Path) -> None:
    console = start_console(ConsoleSettings(runs_dir=runs))

    reply = console.get("/site")

    assert reply.status == 404
    assert "--site-dir" in reply.text


@dataclass(frozen=True)
class FakeColumn:
    name: str
    optional: bool = False
    categories: tuple[float, ...] = ()
    minimum: float | None = 0.0
    maximum: float | None = None


@dataclass
class FakeSchema:
    features: tuple[FakeColumn, ...] = (FakeColumn("age"), FakeColumn("bp", optional=True))


@dataclass
class FakeBundle:
    """risk = age / 100; records the records it was given."""

    schema: FakeSchema = field(default_factory=FakeSchema)
    calls: list[list[dict[str, object]]] = field(default_factory=list)

    def predict_records(self, records: list[dict[str, object]]) -> list[dict[str, Any]]:
        self.calls.append(records)
        risk = float(str(records[0]["age"])) / 100
        return [{"risk": risk, "label": int(risk >= 0.5), "threshold": 0.5,
                 "baseline_risk": 0.3, "pushed_up": [{"feature": "age", "contribution": 0.2}],
                 "pushed_down": []}]

    def describe(self) -> dict[str, Any]:
        return {"run": "r1", "threshold": 0.5}


def post_form(console: Console, body: bytes, length: int | None = None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", int(console.server.server_address[1]),
                                      timeout=TIMEOUT_S)
    try:
        conn.putrequest("POST", "/site/predict")
        conn.putheader("Content-Type", "application/x-www-form-urlencoded")
        conn.putheader("Content-Length", str(len(body) if length is None else length))
        conn.endheaders()
        conn.send(body)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read().decode())
    finally:
        conn.close()


@pytest.fixture
def site_console(tmp_path: Path) -> Iterator[tuple[Console, FakeBundle]]:
    make_site(tmp_path, rounds=1)
    bundle = FakeBundle()
    server = make_server(ConsoleSettings(site_dir=tmp_path), predictor=bundle)
    with server.in_thread(TIMEOUT_S):
        yield Console(server), bundle


def test_the_form_predicts_the_typed_patient_and_leaves_blanks_unrecorded(
        site_console: tuple[Console, FakeBundle]) -> None:
    console, bundle = site_console

    reply = post_form(console, b"age=62&bp=&unknown=1")

    assert reply.status == 200
    assert bundle.calls == [[{"age": "62", "bp": None}]]
    assert 'id="risk">0.620<' in reply.text
    assert 'value="62"' in reply.text  # the typed value, on its own result page only


def test_an_oversized_form_is_refused_before_it_is_read(
        site_console: tuple[Console, FakeBundle]) -> None:
    console, bundle = site_console

    reply = post_form(console, b"age=1", length=10_000_000)

    assert reply.status == 413
    assert bundle.calls == []
