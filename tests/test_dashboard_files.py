"""The dashboard's files as the gateway serves them: open without a key while the data stays behind one,
no CDN, within the page-weight budget, cached and compressed, and the `dashboard` CLI command.

No browser needed here; tests/test_dashboard.py drives the page in Chromium.
"""

from __future__ import annotations

import gzip
import html
import json
import re
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from generation_analytics.cli import main as cli_main
from generation_analytics.service.api import keys
from generation_analytics.service.api.auth import Access, http_requirement
from generation_analytics.service.api.gateway import PREFIX
from generation_analytics.service.api.keys import Scope
from generation_analytics.service.api.webpage import CSP, FILES_DIR, PAGE, api_features
from generation_analytics.service.embedded import free_port
from generation_analytics.service.settings import AuthSettings, Settings
from tests.fix_server import LiveServer

PAGE_WEIGHT_BUDGET = 200 * 1024  # the limit for everything the page loads


class Links(HTMLParser):
    """The files a page loads: script src, stylesheet and icon href."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" and found.get("src"):
            self.loads.append(str(found["src"]))
        if tag == "link" and found.get("href"):
            self.loads.append(str(found["href"]))


def page_loads() -> list[str]:
    parser = Links()
    parser.feed((FILES_DIR / PAGE).read_text())
    return parser.loads


def test_the_page_loads_only_its_own_files_within_the_weight_budget(live_server: LiveServer) -> None:
    loads = page_loads()
    assert set(loads) == {
        "dashboard/favicon.svg",
        "dashboard/uPlot.min.css",
        "dashboard/style.css",
        "dashboard/uPlot.iife.min.js",
        "dashboard/app.js",
    }
    total = 0
    for path in ["/", *(f"/{name}" for name in loads)]:
        response = requests.get(live_server.http + path, headers={"Accept-Encoding": "identity"}, timeout=10)
        assert response.status_code == 200, path
        total += len(response.content)
    assert total <= PAGE_WEIGHT_BUDGET, f"the page loads {total:,} bytes; the budget is {PAGE_WEIGHT_BUDGET:,}"


@pytest.mark.parametrize("name", ["index.html", "app.js", "style.css"])
def test_no_file_reaches_outside_the_origin(name: str) -> None:
    """No CDN, no font service, no absolute URL: the page works offline."""
    text = (FILES_DIR / name).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), name
    assert not re.search(r"""(fetch|import)\(\s*["'`](https?:)?//""", text), name
    assert "@import" not in text and "url(http" not in text


def test_vendored_uplot_is_the_noted_version_with_its_licence() -> None:
    script = (FILES_DIR / "uPlot.iife.min.js").read_text()
    note = (FILES_DIR / "VENDORED.md").read_text()
    version = re.search(r"uPlot \(v(\d+\.\d+\.\d+)\)", script)
    assert version and f"uPlot {version[1]}" in note
    assert "MIT" in (FILES_DIR / "uPlot.LICENSE").read_text()


def test_page_is_served_at_root_and_dashboard_with_a_strict_policy(live_server: LiveServer) -> None:
    for path in ("/", "/dashboard"):
        response = requests.get(live_server.http + path, timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["Content-Security-Policy"] == CSP
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert 'data-panel="overview"' in response.text
    moved = requests.get(live_server.http + "/dashboard/", allow_redirects=False, timeout=10)
    assert moved.status_code == 308 and moved.headers["Location"] == "/dashboard"
    script = requests.get(live_server.http + "/dashboard/app.js", timeout=10)
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"


def test_files_are_compressed_and_revalidated(live_server: LiveServer) -> None:
    url = live_server.http + "/dashboard/uPlot.iife.min.js"
    plain = requests.get(url, headers={"Accept-Encoding": "identity"}, timeout=10)
    assert "Content-Encoding" not in plain.headers
    assert plain.content == (FILES_DIR / "uPlot.iife.min.js").read_bytes()
    packed = requests.get(url, headers={"Accept-Encoding": "gzip"}, stream=True, timeout=10)
    assert packed.headers["Content-Encoding"] == "gzip"
    body = packed.raw.read()
    assert len(body) < len(plain.content) / 2 and gzip.decompress(body) == plain.content
    again = requests.get(url, headers={"If-None-Match": plain.headers["ETag"]}, timeout=10)
    assert again.status_code == 304 and not again.content


def test_unknown_files_answer_json_404(live_server: LiveServer) -> None:
    for path in ("/dashboard/nothing.js", "/dashboard/VENDORED.md", "/dashboard/..%2Fgateway.py", "/dashboard/%2e%2e"):
        response = requests.get(live_server.http + path, timeout=10)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "NOT_FOUND"
    response = requests.post(live_server.http + "/", timeout=10)
    assert response.status_code == 405 and response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def page_config(server: LiveServer) -> Any:
    """The settings the gateway writes into the page (whether to ask for a key first, ...)."""
    found = re.search(r'<meta name="ga-config" content="([^"]*)">', requests.get(server.http + "/", timeout=10).text)
    assert found, "the page carries its settings"
    return json.loads(html.unescape(found[1]))


def test_the_page_says_whether_to_ask_for_a_key(live_server: LiveServer) -> None:
    assert page_config(live_server) == {"auth_required": False, "refresh_s": 30, "features": api_features()}


@pytest.mark.parametrize(
    ("path", "open_"),
    [
        ("/", True),
        ("/dashboard", True),
        ("/dashboard/app.js", True),
        ("/healthz", True),
        (f"{PREFIX}/overview", False),
        ("/metrics", False),
        ("/dashboardx", False),
        ("/api/dashboard/", False),
    ],
)
def test_only_the_page_and_health_are_open(path: str, open_: bool) -> None:
    assert (http_requirement(path) is Access.OPEN) is open_


@pytest.fixture
def secured(settings: Settings) -> tuple[LiveServer, dict[str, str]]:
    tokens = {}
    with psycopg.connect(settings.postgres.dsn) as conn:
        for scope in (Scope.READ, Scope.INGEST):
            tokens[scope.value] = keys.create_key(conn, name=f"dash-{scope}", scopes=frozenset({scope}))[1]
    return LiveServer(replace(settings, auth=AuthSettings(mode="on", cache_s=0.3))), tokens


def test_with_auth_on_the_page_is_open_and_the_data_needs_a_read_key(
    secured: tuple[LiveServer, dict[str, str]],
) -> None:
    server, tokens = secured
    try:
        for path in ("/", "/dashboard", "/dashboard/app.js", "/dashboard/uPlot.iife.min.js"):
            assert requests.get(server.http + path, timeout=10).status_code == 200, path
        assert page_config(server)["auth_required"] is True
        data = server.http + PREFIX + "/overview"
        assert requests.get(data, timeout=10).status_code == 401
        # A path that starts like the page's cannot reach the data.
        for sneaky in ("/dashboard/../api/v1/analytics/generation/overview", "/dashboard/..%2Fapi%2Fv1%2Fanalytics"):
            assert requests.get(server.http + sneaky, timeout=10).status_code in {401, 404}, sneaky
        ingest = {"Authorization": f"Bearer {tokens['ingest']}"}
        assert requests.get(data, headers=ingest, timeout=10).status_code == 403
        read = {"Authorization": f"Bearer {tokens['read']}"}
        assert requests.get(data, headers=read, timeout=10).status_code == 200
    finally:
        server.close()


def test_cli_dashboard_prints_the_url_of_a_running_gateway(
    live_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    port = live_server.http.rsplit(":", 1)[1]
    assert cli_main(["dashboard", "--http", f"127.0.0.1:{port}", "--no-browser"]) == 0
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:{port}/" in out


def test_cli_dashboard_says_when_nothing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert cli_main(["dashboard", "--http", f"127.0.0.1:{port}", "--no-browser"]) == 2
    captured = capsys.readouterr()
    assert f"http://127.0.0.1:{port}/" in captured.out
    assert "make run" in captured.err


def test_cli_dashboard_mentions_the_key_when_auth_is_on(
    secured: tuple[LiveServer, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = secured
    try:
        port = server.http.rsplit(":", 1)[1]
        assert cli_main(["dashboard", "--http", f"127.0.0.1:{port}", "--no-browser"]) == 0
        assert "read" in capsys.readouterr().out
    finally:
        server.close()


def test_package_data_ships_the_files() -> None:
    """pyproject's package data names every file the page needs (a wheel would lack any it misses)."""
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"dashboard/*"' in pyproject
    assert {p.name for p in FILES_DIR.iterdir()} >= {PAGE, "app.js", "style.css", "uPlot.iife.min.js", "uPlot.LICENSE"}
