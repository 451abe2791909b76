"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against a live service.

With known events recorded through gRPC, every panel must show the figures the JSON API answers (read
from each figure's data-value, and its text where the format is plain), and the API's headline figures
must match the same figures computed from the events themselves. The controls, event filters and paging,
sorting and the click-through to a user's page are driven as a person would; a refresh must update the
page in place; with auth on the page must ask once per tab for a `read` key and send it as a Bearer token.
No test may leave an error in the browser's console. Every test saves a screenshot under .artefacts/.

Waiting is on the markers the page sets (data-state="ready" with the data-query it shows), never on time.
These tests skip, saying why, only when no Chromium is installed (.ci/run installs Debian's).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import psycopg
import pytest
import redis
import requests

from generation_analytics.service.api import keys
from generation_analytics.service.api.keys import Scope
from generation_analytics.service.api.webpage import api_features
from generation_analytics.service.settings import (
    AuthSettings,
    PostgresSettings,
    RedisSettings,
    ScheduleSettings,
    Settings,
)
from generation_analytics.service.stream import StreamKeys
from generation_analytics.v1 import events_pb2, pipeline_pb2
from tests import reference
from tests.factories import make_event
from tests.fix_server import LiveServer
from tests.fix_services import create_database, drop_database

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Dialog, Page, Route


def chromium_path() -> str | None:
    """GA_CHROMIUM, else Debian's /usr/bin/chromium, else a chromium on PATH."""
    for candidate in (os.environ.get("GA_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium (GA_CHROMIUM, /usr/bin/chromium or `chromium` on PATH): install Debian's with "
    "`apt-get install chromium` (.ci/run does when apt-get works)",
)
ARTEFACTS = Path(os.environ.get("GA_TEST_ARTEFACTS") or Path(__file__).parents[1] / ".artefacts")
API = "/api/v1/analytics/generation/"
MAIN_PANELS = ("overview", "trends", "models", "failures", "peak", "users", "pipeline", "events")
# A checkpoint name a generation service could send: it must show as text, never as markup.
HOSTILE = '<img src=x onerror="alert(1)">&co'
CHECKPOINTS = ("sdxl-1.0", "flux-dev", HOSTILE)
ERRORS = ("Timeout", "OutOfMemory")
TILES = ("total_requests", "success_rate_pct", "p50_duration_ms", "p95_duration_ms", "total_images_generated",
         "unique_users", "cancelled_generations", "avg_queue_length")  # fmt: skip


# ---------------------------------------------------------------- the service and its known events


@dataclass
class Known:
    server: LiveServer
    events: list[events_pb2.GenerationEvent]
    now: datetime

    def raws(self, days: int) -> list[reference.Raw]:
        return reference.in_window([reference.from_message(e) for e in self.events], days, self.now)


def known_events(now: datetime, seed: int = 13) -> list[events_pb2.GenerationEvent]:
    """About 70 generations of 6 users over the last 3 days (and one 10 days ago): requests, successes,
    failures of two kinds, cancellations, on three checkpoints. Never in the future."""
    rng = random.Random(seed)
    users = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(6)]
    events = []
    for i in range(70):
        hours_ago = 240.0 if i == 0 else rng.choice((0.3, 0.6, 2.5, 7, 20, 30, 49, 70))
        at = now - timedelta(hours=hours_ago, minutes=rng.randint(0, 9))
        user = users[min(int(rng.expovariate(0.9)), 5)]
        checkpoint = CHECKPOINTS[rng.randrange(3)]
        gen = f"gen-{i}"
        events.append(make_event("request", user_id=user, generation_id=gen, timestamp=at,
                                 model_checkpoint=checkpoint, queue_length=rng.randint(0, 9)))  # fmt: skip
        outcome = rng.random()
        duration = rng.randint(400, 9000)
        done = at + timedelta(milliseconds=duration)
        if outcome < 0.1:
            events.append(make_event("cancellation", user_id=user, generation_id=gen, timestamp=done,
                                     model_checkpoint=checkpoint))  # fmt: skip
        else:
            failed = outcome < 0.35
            error = ERRORS[rng.randrange(2)] if failed else ""
            events.append(make_event("completion", user_id=user, generation_id=gen, timestamp=done,
                                     model_checkpoint=checkpoint, success=not failed, duration_ms=duration,
                                     batch_size=rng.randint(1, 4), error_type=error,
                                     error_message=f"{error} on worker {i % 4}" if failed else ""))  # fmt: skip
    return events


def settle(server: LiveServer, events: list[events_pb2.GenerationEvent]) -> None:
    """Record `events` and run the pipeline once, so every answer counts them."""
    server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events))
    server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
    server.pipeline.RunAggregation(pipeline_pb2.RunAggregationRequest())


@pytest.fixture(scope="module")
def known(pg_admin_dsn: str, template_db: str, redis_url: str) -> Iterator[Known]:
    """One service for the read-only tests of this module: its own database and namespace, known events."""
    name = f"ga_test_{uuid.uuid4().hex[:12]}"
    namespace = f"ga_test_{uuid.uuid4().hex[:12]}"
    dsn = create_database(pg_admin_dsn, name, template=template_db)
    settings = replace(
        Settings(),
        postgres=PostgresSettings(dsn=dsn, pool_max_size=4),
        redis=RedisSettings(url=redis_url, namespace=namespace),
        schedule=ScheduleSettings(enabled=False),
    )
    server = LiveServer(settings)
    try:
        now = datetime.now(UTC)
        events = known_events(now)
        settle(server, events)
        yield Known(server, events, now)
    finally:
        server.close()
        drop_database(pg_admin_dsn, name)
        client = redis.Redis.from_url(redis_url)
        stale = list(client.scan_iter(match=StreamKeys(namespace).pattern))
        if stale:
            client.delete(*stale)
        client.close()


def overview_query(days: int) -> str:
    """The page asks for the previous equal window too when the API can answer it."""
    return f"overview?days={days}" + ("&compare_previous=true" if api_features()["compare_previous"] else "")


def api(server: LiveServer, query: str, key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = requests.get(server.http + API + query, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (`make install`)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Tab:
    """One page with what its console said; `allowed` are console errors a test provokes on purpose."""

    page: Page
    base: str
    errors: list[str] = field(default_factory=list)
    allowed: re.Pattern[str] | None = None

    def watch(self) -> Tab:
        self.page.on("console", lambda m: self._error(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        self.page.on("dialog", self._dialog)
        return self

    def _dialog(self, dialog: Dialog) -> None:
        """The page never opens alert/confirm/prompt (the key is asked in a <dialog>): one means injected markup."""
        self.errors.append(f"dialog opened: {dialog.message}")
        dialog.dismiss()

    def _error(self, text: str) -> None:
        if not (self.allowed and self.allowed.search(text)):
            self.errors.append(text)

    def open(self, path: str = "/") -> None:
        self.page.goto(self.base + path)
        self.page.locator("body[data-state=ready]").wait_for()

    def ready(self, panel: str, query: str) -> None:
        """Wait until `panel` shows the answer to `query` (the marker the page sets after rendering it)."""
        self.page.locator(f'[data-panel="{panel}"][data-state="ready"][data-query="{query}"]').wait_for()

    def values(self, selector: str) -> list[str]:
        found: list[str] = self.page.eval_on_selector_all(selector, "els => els.map(e => e.dataset.value)")
        return found

    def texts(self, selector: str) -> list[str]:
        return [t.strip() for t in self.page.locator(selector).all_inner_texts()]

    def value(self, selector: str) -> str:
        found = self.page.locator(selector).get_attribute("data-value")
        assert found is not None, selector
        return found


OpenTab = Callable[..., Tab]


@pytest.fixture
def open_tab(browser: Browser, request: pytest.FixtureRequest) -> Iterator[OpenTab]:
    """Tabs on a laptop-sized screen in a non-UTC zone (the page shows UTC, as the API counts); each is
    photographed into .artefacts/ afterwards, and none may have logged a console error."""
    contexts: list[BrowserContext] = []
    tabs: list[Tab] = []

    def open_(server: LiveServer, **options: Any) -> Tab:
        settings = {"viewport": {"width": 1400, "height": 900}, "locale": "en-US", "timezone_id": "America/New_York"}
        context = browser.new_context(**{**settings, **options})
        context.set_default_timeout(15_000)
        contexts.append(context)
        tab = Tab(context.new_page(), server.http).watch()
        tabs.append(tab)
        return tab

    yield open_
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    for i, tab in enumerate(tabs):
        suffix = f"-{i + 1}" if len(tabs) > 1 else ""
        tab.page.screenshot(path=ARTEFACTS / f"dashboard-{request.node.name}{suffix}.png", full_page=True)
    for context in contexts:
        context.close()
    assert [e for tab in tabs for e in tab.errors] == [], "console errors"


def number(text: str) -> float:
    return float(text)


# ---------------------------------------------------------------- every panel, against the API


def test_every_panel_shows_what_the_api_answers(known: Known, open_tab: OpenTab) -> None:
    tab = open_tab(known.server)
    tab.open("/")
    queries = {
        "overview": overview_query(7),
        "trends": "trends?days=7&interval=hourly",
        "models": "models?days=7",
        "failures": "failures?days=7",
        "peak": "peak-hours?days=7",
        "users": "users?days=7&limit=10",
        "pipeline": "pipeline/status",
        "events": "events?days=7&order=newest&page_size=25",
    }
    for panel, query in queries.items():
        tab.ready(panel, query)
    answers = {panel: api(known.server, query) for panel, query in queries.items()}

    # Headline tiles and freshness; and the API's figures are the events' own.
    overview = answers["overview"]
    expected = reference.summarize(known.raws(7))
    assert (overview["total_requests"], overview["successful_generations"], overview["failed_generations"],
            overview["cancelled_generations"], overview["unique_users"], overview["total_images_generated"]) == (
        expected.total_requests, expected.successful, expected.failed, expected.cancelled, len(expected.users),
        expected.images)  # fmt: skip
    for name in TILES:
        assert number(tab.value(f'#tiles [data-field="{name}"] .value')) == overview[name], name
    for name in ("total_requests", "total_images_generated", "unique_users", "cancelled_generations"):
        assert tab.texts(f'#tiles [data-field="{name}"] .value') == [f"{overview[name]:,}"]
    assert tab.texts('#tiles [data-field="success_rate_pct"] .value') == [f"{overview['success_rate_pct']:.1f} %"]
    previous = overview.get("previous")
    if previous:  # the API compares with the previous equal window: each tile shows that figure too
        for name in TILES:
            assert number(tab.value(f'#tiles [data-field="{name}"] .prev')) == previous[name], name
    else:  # it does not (yet): nothing is shown, certainly no made-up figure
        assert tab.page.locator("#tiles .prev:visible").count() == 0
    # Nothing is waiting for aggregation, so the API says "as of now": the page shows the moment it was told.
    as_of = tab.value("#data-as-of")
    assert tab.page.evaluate("gaDashboard.last.overview.data_as_of") == as_of
    assert known.now <= datetime.fromisoformat(as_of) <= datetime.fromisoformat(overview["data_as_of"])
    assert tab.texts("#data-as-of") == [as_of[:19].replace("T", " ") + " UTC"]
    assert int(tab.value("#pending")) == overview["pending_events"]

    # Time series: what each chart draws is the API's series.
    points = answers["trends"]["data_points"]
    drawn = tab.page.evaluate("gaDashboard.series('requests')")
    assert drawn["x"] == [datetime.fromisoformat(p["timestamp"]).timestamp() for p in points]
    for label, name in (("successful", "successful_generations"), ("failed", "failed_generations"),
                        ("cancelled", "cancelled_generations"), ("requests", "total_requests")):  # fmt: skip
        assert drawn[label] == [p[name] for p in points], label
    completed = [p["successful_generations"] + p["failed_generations"] > 0 for p in points]
    rate = tab.page.evaluate("gaDashboard.series('success')")["success rate"]
    assert rate == [
        pytest.approx(p["success_rate"] * 100) if c else None for p, c in zip(points, completed, strict=True)
    ]
    latency = tab.page.evaluate("gaDashboard.series('latency')")
    for q in ("p50", "p95", "p99"):
        assert latency[q] == [p[f"{q}_duration_ms"] if c else None for p, c in zip(points, completed, strict=True)]
    assert sum(drawn["requests"]) == overview["total_requests"]

    # Checkpoints: busiest first, the hostile name as text.
    models = sorted(answers["models"]["models"], key=lambda m: -m["total_generations"])
    assert tab.values("#models-table tbody td.name") == [m["model_checkpoint"] for m in models]
    assert tab.texts("#models-table tbody td.name") == [m["model_checkpoint"] for m in models]
    assert HOSTILE in tab.texts("#models-table tbody td.name")
    assert tab.page.locator("[data-panel] img").count() == 0
    rows = tab.page.locator("#models-table tbody tr")
    for i, model in enumerate(models):
        cells = [number(v) for v in tab.values(f"#models-table tbody tr:nth-child({i + 1}) td[data-value]")[1:8]]
        assert cells == [model[k] for k in ("total_generations", "success_rate_pct", "avg_duration_ms",
                                            "p50_duration_ms", "p95_duration_ms", "p99_duration_ms",
                                            "total_images_generated")]  # fmt: skip
    assert rows.count() == len(models) == 3

    # Failures: totals, error types (the events' own counts) and the daily trend.
    failures = answers["failures"]
    for name in ("total_failures", "total_completions", "failure_rate_pct"):
        assert number(tab.value(f'#failures-summary [data-field="{name}"]')) == failures[name]
    shown = dict(zip(tab.values("#failures-table tbody td.name"),
                     map(int, tab.values("#failures-table tbody td.name + td")), strict=True))  # fmt: skip
    assert shown == {e["error_type"]: e["count"] for e in failures["error_types"]}
    assert shown == dict(reference.error_counts(known.raws(7)))
    trend = tab.page.evaluate("gaDashboard.series('failures')")
    assert trend["failures"] == [t["failures"] for t in failures["failure_trends"]]
    assert trend["x"] == [datetime.fromisoformat(t["date"]).replace(tzinfo=UTC).timestamp()
                          for t in failures["failure_trends"]]  # fmt: skip

    # Peak hours: all 168 cells hold the API's averages.
    cells = tab.page.eval_on_selector_all(
        "#heatmap .cell", "els => els.map(e => [+e.dataset.dow, +e.dataset.hour, +e.dataset.value])"
    )
    assert len(cells) == 168
    heat = {(c["day_of_week"], c["hour_of_day"]): c["avg_requests"] for c in answers["peak"]["heatmap"]}
    assert {(d, h): v for d, h, v in cells} == {(d, h): heat.get((d, h), 0) for d, h, _ in cells}
    assert any(v > 0 for _, _, v in cells)

    # Top users, the event list, pipeline health.
    users = answers["users"]["users"]
    assert tab.values("#users-table tbody td:first-child") == [u["user_id"] for u in users]
    assert [int(v) for v in tab.values("#users-table tbody td:nth-child(2)")] == [u["total_requests"] for u in users]
    events = answers["events"]["events"]
    assert tab.page.eval_on_selector_all("#events-table tbody tr", "rows => rows.map(r => +r.dataset.id)") == [
        e["id"] for e in events
    ]
    assert tab.texts("#events-table tbody td:first-child")[:1] == [events[0]["timestamp"][:19].replace("T", " ")]
    status = answers["pipeline"]
    for name in ("stream_length", "undelivered_entries", "pending_entries", "dead_letter_count", "dirty_hours",
                 "failing_hours_count", "total_events", "total_hours"):  # fmt: skip
        assert number(tab.value(f'#pipeline-tiles [data-field="{name}"] .value')) == status[name], name
    assert tab.values("#runs-table tbody td:nth-child(4)") == [
        str(status["last_transfer"]["processed"]),
        str(status["last_aggregation"]["processed"]),
    ]
    assert tab.page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == "rgb(244, 246, 249)"


def test_tiles_show_the_previous_window_when_the_answer_has_it(known: Known, open_tab: OpenTab) -> None:
    """The page's half of the comparison: given an overview answer with `previous` (the same figures for
    the previous equal window, as the comparison issue defines it), each tile shows that figure beside its
    own, and colours only the changes the answer calls significant. The real answer is fetched and only
    `previous`/`changes` are added, so this holds whether or not this API version compares yet."""
    tab = open_tab(known.server)

    def with_previous(route: Route) -> None:
        answer = route.fetch().json()
        answer["previous"] = {name: answer[name] * 2 + 1 for name in TILES}
        answer["changes"] = [{"metric": "p95_duration_ms", "significant": True}]
        route.fulfill(json=answer)

    tab.page.route("**/api/v1/analytics/generation/overview?*", with_previous)
    tab.open("/")
    tab.ready("overview", overview_query(7))
    overview = api(known.server, overview_query(7))
    for name in TILES:
        assert number(tab.value(f'#tiles [data-field="{name}"] .prev')) == overview[name] * 2 + 1, name
    requests_ = overview["total_requests"]
    change = (requests_ - (requests_ * 2 + 1)) / (requests_ * 2 + 1) * 100
    assert tab.texts('#tiles [data-field="total_requests"] .prev') == [
        f"previous {requests_ * 2 + 1:,} ({change:.1f} %)"
    ]
    # Lower p95 than before is better, and called significant: green. Requests changed as much, untested: plain.
    assert tab.page.locator('#tiles [data-field="p95_duration_ms"] .prev').get_attribute("class") == "prev up"
    assert tab.page.locator('#tiles [data-field="total_requests"] .prev').get_attribute("class") == "prev"


def test_window_and_bucket_controls_ask_the_api_again(known: Known, open_tab: OpenTab) -> None:
    tab = open_tab(known.server)
    tab.open("/")
    tab.ready("overview", overview_query(7))
    week = api(known.server, overview_query(7))
    tab.page.select_option("#days", "1")
    tab.ready("overview", overview_query(1))
    day = api(known.server, overview_query(1))
    assert day["total_requests"] < week["total_requests"], "the known events differ between 1 and 7 days"
    assert int(tab.value('#tiles [data-field="total_requests"] .value')) == day["total_requests"]
    for panel, query in (("models", "models?days=1"), ("users", "users?days=1&limit=10"),
                         ("events", "events?days=1&order=newest&page_size=25")):  # fmt: skip
        tab.ready(panel, query)
    tab.page.select_option("#interval", "daily")
    tab.ready("trends", "trends?days=1&interval=daily")
    points = api(known.server, "trends?days=1&interval=daily")["data_points"]
    assert tab.page.evaluate("gaDashboard.series('requests')")["requests"] == [p["total_requests"] for p in points]
    assert "days=1" in tab.page.url and "interval=daily" in tab.page.url
    tab.page.reload()  # the window is in the address: a reload (or a shared link) shows the same
    tab.ready("trends", "trends?days=1&interval=daily")
    assert tab.page.locator("#days").input_value() == "1"


def events_query(**filters: str) -> str:
    """The query the page sends: days, then the filters in the form's order, empty ones left out."""
    order = ("user_id", "model_checkpoint", "event_type", "success", "error_type", "min_duration_ms", "order",
             "page_size", "page_token")  # fmt: skip
    values = {"order": "newest", "page_size": "25", **filters}
    return "events?" + urlencode({"days": "7", **{k: values[k] for k in order if values.get(k)}})


def shown_ids(tab: Tab) -> list[int]:
    ids: list[int] = tab.page.eval_on_selector_all(
        "#events-table tbody tr[data-id]", "rs => rs.map(r => +r.dataset.id)"
    )
    return ids


def test_event_filters_and_paging_show_what_the_api_answers(known: Known, open_tab: OpenTab) -> None:
    tab = open_tab(known.server)
    tab.open("/")
    form = tab.page.locator("#event-filters")
    form.locator("[name=model_checkpoint]").fill("flux-dev")
    form.locator("[name=success]").select_option("false")
    form.locator("[name=page_size]").select_option("10")
    form.locator("button[type=submit]").click()
    query = events_query(model_checkpoint="flux-dev", success="false", page_size="10")
    tab.ready("events", query)
    answer = api(known.server, query)["events"]
    assert answer and shown_ids(tab) == [e["id"] for e in answer]
    assert all(e["model_checkpoint"] == "flux-dev" and e["success"] is False for e in answer)

    form.locator("#filters-clear").click()
    form.locator("[name=order]").select_option("slowest")
    form.locator("[name=min_duration_ms]").fill("2000")
    form.locator("[name=page_size]").select_option("10")
    form.locator("button[type=submit]").click()
    query = events_query(order="slowest", min_duration_ms="2000", page_size="10")
    tab.ready("events", query)
    first = api(known.server, query)
    assert shown_ids(tab) == [e["id"] for e in first["events"]]
    durations = [e["duration_ms"] for e in first["events"]]
    assert durations == sorted(durations, reverse=True) and min(durations) >= 2000

    # Paging follows the API's tokens, forward and back.
    assert first["next_page_token"], "the known events fill more than one page of 10"
    tab.page.click("#page-next")
    second_query = events_query(order="slowest", min_duration_ms="2000", page_size="10",
                                page_token=first["next_page_token"])  # fmt: skip
    tab.ready("events", second_query)
    second = api(known.server, second_query)["events"]
    assert shown_ids(tab) == [e["id"] for e in second] and tab.texts("#page-number") == ["page 2"]
    tab.page.click("#page-prev")
    tab.ready("events", query)
    assert shown_ids(tab) == [e["id"] for e in first["events"]]

    # A refused filter says which field, in the panel (the browser logs the 400 it got: expected here).
    tab.allowed = re.compile(r"status of 400")
    form.locator("[name=user_id]").fill("not-a-user")
    form.locator("button[type=submit]").click()
    tab.page.locator('[data-panel="events"][data-state="error"]').wait_for()
    assert "user_id" in tab.texts('[data-panel="events"] .panel-error')[0]
    assert form.locator("[name=user_id]").get_attribute("aria-invalid") == "true"


def test_checkpoints_sort_by_any_column(known: Known, open_tab: OpenTab) -> None:
    tab = open_tab(known.server)
    tab.open("/")
    tab.ready("models", "models?days=7")
    models = api(known.server, "models?days=7")["models"]
    header = tab.page.locator('#models-table th[data-key="p95_duration_ms"]')
    header.locator("button").click()
    assert header.get_attribute("aria-sort") == "descending"
    by_p95 = sorted(models, key=lambda m: -m["p95_duration_ms"])
    assert tab.values("#models-table tbody td.name") == [m["model_checkpoint"] for m in by_p95]
    header.locator("button").click()
    assert header.get_attribute("aria-sort") == "ascending"
    assert tab.values("#models-table tbody td.name") == [m["model_checkpoint"] for m in reversed(by_p95)]
    tab.page.locator('#models-table th[data-key="model_checkpoint"] button').click()
    assert tab.values("#models-table tbody td.name") == sorted(m["model_checkpoint"] for m in models)


def test_a_top_user_opens_their_page_and_their_events(known: Known, open_tab: OpenTab) -> None:
    tab = open_tab(known.server)
    tab.open("/")
    tab.ready("users", "users?days=7&limit=10")
    link = tab.page.locator("#users-table tbody a.user-link").first
    user_id = link.get_attribute("data-user")
    assert user_id
    link.click()
    tab.ready("user", f"users/{user_id}?days=7")
    assert tab.page.locator("#main-view").is_hidden()
    user = api(known.server, f"users/{user_id}?days=7")
    assert tab.texts("#user-id") == [user_id]
    for name in ("total_requests", "success_rate_pct", "p50_duration_ms", "p95_duration_ms", "total_images_generated",
                 "cancelled_generations"):  # fmt: skip
        assert number(tab.value(f'#user-tiles [data-field="{name}"] .value')) == user[name], name
    own = [e for e in known.raws(7) if e.user_id == user_id]
    assert user["total_requests"] == reference.summarize(own).total_requests
    assert tab.values("#user-failures tbody td:first-child") == [f["error_type"] for f in user["failure_breakdown"]]
    assert tab.values("#user-models tbody td:first-child") == [m["model_checkpoint"] for m in user["models_used"]]
    assert tab.page.eval_on_selector_all("#user-activity tbody tr[data-id]", "rs => rs.map(r => +r.dataset.id)") == [
        e["id"] for e in user["recent_activity"]
    ]

    tab.page.click("#user-all-events")
    query = events_query(user_id=user_id)
    tab.ready("events", query)
    assert tab.page.locator("#user-view").is_hidden()
    assert shown_ids(tab) == [e["id"] for e in api(known.server, query)["events"]]
    assert all(v == user_id for v in tab.values("#events-table tbody td:nth-child(3)"))

    # And back: a user link in the event list leads to the same page.
    tab.page.locator("#events-table tbody a.user-link").first.click()
    tab.ready("user", f"users/{user_id}?days=7")


def test_refresh_updates_the_page_in_place(live_server: LiveServer, open_tab: OpenTab) -> None:
    now = datetime.now(UTC)
    settle(live_server, known_events(now, seed=5)[:20])
    tab = open_tab(live_server)
    tab.open("/?refresh=1")
    tab.ready("overview", overview_query(7))
    before = api(live_server, overview_query(7))["total_requests"]
    # Keep the nodes and chart shown now, and every panel state the page goes through from here on.
    tab.page.evaluate(
        """() => {
        window.kept = {tile: document.querySelector('#tiles [data-field="total_requests"] .value'),
                       chart: gaDashboard.charts.requests, row: document.querySelector('#heatmap .cell')};
        window.states = [];
        new MutationObserver(ms => ms.forEach(m => window.states.push(m.target.dataset.state)))
            .observe(document.querySelector('main'), {subtree: true, attributeFilter: ['data-state']});
    }"""
    )
    more = [make_event("request", timestamp=now - timedelta(minutes=1)) for _ in range(7)]
    settle(live_server, more)
    after = api(live_server, overview_query(7))["total_requests"]
    assert after == before + 7
    tab.page.locator(f'#tiles [data-field="total_requests"] .value[data-value="{after}"]').wait_for()
    tab.page.locator('body[data-busy="0"]').wait_for()
    same = tab.page.evaluate(
        """() => kept.tile === document.querySelector('#tiles [data-field="total_requests"] .value')
               && kept.chart === gaDashboard.charts.requests && kept.row === document.querySelector('#heatmap .cell')"""
    )
    assert same, "refresh rebuilt the tiles, charts or heatmap instead of updating them"
    states = tab.page.evaluate("window.states")
    assert states and set(states) <= {"refreshing", "ready"}, f"a panel blanked during refresh: {states}"
    assert sum(tab.page.evaluate("gaDashboard.series('requests')")["requests"]) == after


@pytest.fixture
def secured(settings: Settings) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    tokens = {}
    with psycopg.connect(settings.postgres.dsn) as conn:
        for scope in (Scope.READ, Scope.INGEST):
            tokens[scope.value] = keys.create_key(conn, name=f"dashboard-{scope}", scopes=frozenset({scope}))[1]
    server = LiveServer(replace(settings, auth=AuthSettings(mode="on", cache_s=0.3)))
    try:
        yield server, tokens
    finally:
        server.close()


def test_with_auth_the_page_asks_once_per_tab_and_sends_a_bearer_key(
    secured: tuple[LiveServer, dict[str, str]], open_tab: OpenTab
) -> None:
    server, tokens = secured
    tab = open_tab(server)
    tab.allowed = re.compile(r"status of 403")  # the ingest-only key below is refused: expected
    sent: list[tuple[str, str | None]] = []
    tab.page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))) if API in r.url else None)
    tab.page.goto(server.http + "/")
    dialog = tab.page.locator("#key-dialog[open]")
    dialog.wait_for()
    assert sent == [], "no data is asked for before there is a key"

    tab.page.fill("#key-input", tokens["ingest"])
    tab.page.click("#key-form button[type=submit]")
    tab.page.locator('#key-message[data-kind="refused"]').wait_for()
    assert "read" in tab.texts("#key-message")[0]

    tab.page.fill("#key-input", tokens["read"])
    tab.page.click("#key-form button[type=submit]")
    tab.page.locator("body[data-state=ready]").wait_for()
    tab.ready("overview", overview_query(7))
    overview = api(server, overview_query(7), tokens["read"])
    assert int(tab.value('#tiles [data-field="total_requests"] .value')) == overview["total_requests"]
    assert all("ga_" not in url for url, _ in sent), "the key never goes into a URL"
    assert sent[-1][1] == f"Bearer {tokens['read']}"
    assert {auth for _, auth in sent} <= {f"Bearer {tokens['ingest']}", f"Bearer {tokens['read']}"}

    asked = len(sent)
    tab.page.reload()  # the same tab: the key is kept
    tab.page.locator("body[data-state=ready]").wait_for()
    assert tab.page.locator("#key-dialog[open]").count() == 0
    assert all(auth == f"Bearer {tokens['read']}" for _, auth in sent[asked:])

    other = Tab(tab.page.context.new_page(), server.http).watch()  # another tab: asked again
    other.page.goto(server.http + "/")
    other.page.locator("#key-dialog[open]").wait_for()
    assert other.errors == []


def test_phone_width_in_dark_mode(known: Known, open_tab: OpenTab) -> None:
    tab = open_tab(known.server, viewport={"width": 390, "height": 844}, color_scheme="dark", is_mobile=True,
                   has_touch=True)  # fmt: skip
    tab.open("/")
    for panel in MAIN_PANELS:
        tab.page.locator(f'[data-panel="{panel}"][data-state="ready"]').wait_for()
    width = tab.page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page is wider than the phone: {width}"
    assert tab.page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == "rgb(14, 17, 23)"
    tile = tab.page.locator('#tiles [data-field="total_requests"]').bounding_box()
    assert tile and tile["width"] < 200, "tiles sit two to a row"


# ---------------------------------------------------------------- alerts


def test_the_alert_panels_show_rules_firing_first_and_their_transitions(
    live_server: LiveServer, pipeline: Any, stream_client: redis.Redis, open_tab: OpenTab
) -> None:
    from tests.test_alerts import BASE, FAILURE_RULE, add_rule, completions, load, tick

    settings = live_server.settings

    def evaluate() -> None:  # in a thread of its own: Playwright's event loop runs in this one
        load(pipeline, stream_client, settings.redis.namespace, completions(BASE, 60, 30))  # 50 % failed
        add_rule(settings, replace(FAILURE_RULE, name="quiet", threshold=90, pending_for_s=0))
        add_rule(settings, replace(FAILURE_RULE, pending_for_s=0))
        tick(settings, BASE + timedelta(minutes=5))

    with ThreadPoolExecutor(1) as pool:
        pool.submit(evaluate).result(120)
    tab = open_tab(live_server)
    tab.open("/")
    tab.ready("alerts", "alerts/rules")
    tab.ready("alert-events", "alerts/events?page_size=10")
    rules = api(live_server, "alerts/rules")["rules"]
    assert {r["spec"]["name"]: r["state"] for r in rules} == {"quiet": "ok", "sdxl failing": "firing"}
    assert tab.texts("#alerts-table tbody td:nth-child(2)") == ["sdxl failing", "quiet"]  # firing first
    assert tab.values("#alerts-table tbody td:nth-child(1)") == ["firing", "ok"]
    assert [number(v) for v in tab.values("#alerts-table tbody td:nth-child(4)")] == [50.0, 50.0]
    assert tab.texts("#alerts-table tbody td:nth-child(3)")[0] == "failure_rate_pct of everything > 10 over 15 min"
    (event,) = api(live_server, "alerts/events?page_size=10")["events"]
    assert tab.texts("#alert-events-table tbody td:nth-child(2)") == [event["rule_name"]]
    assert tab.values("#alert-events-table tbody td:nth-child(3)") == ["ok"]
    assert tab.values("#alert-events-table tbody td:nth-child(4)") == ["firing"]
