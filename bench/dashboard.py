"""The dashboard's page weight and first render, in Debian's Chromium (Playwright), on the 10M-event data set.

Page weight: every file the page loads (HTML, script, styles, uPlot, icon, config), as the browser
decoded them and as they crossed the wire (gzip); the API's JSON answers are counted apart (they are the
data, not the page). First render: from the start of navigation to the moment every panel has rendered
its first answer (the page records `performance.now()` when it sets body[data-state=ready]), each load
in a fresh browser context (nothing cached), after one warm-up load; median, min and max of `--loads`.

By default it starts `generation-analytics serve` on the data set `bench.dataset` built (`--dbname`,
default ga_bench); `--url` measures a gateway already running instead (e.g. `make run` + `demo`), and
`--screenshot PATH` saves what a person sees there (docs/dashboard.png is made that way on demo data).

    .venv/bin/python -m bench.dataset --dbname ga_bench_dashboard          # once, ~6 min
    .venv/bin/python -m bench.dashboard --dbname ga_bench_dashboard
    .venv/bin/python -m bench.dashboard --url http://127.0.0.1:8001/ --screenshot docs/dashboard.png
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import make_conninfo

from bench.common import ADMIN_DSN, Figure, print_figures, scratch_namespace, start_service
from generation_analytics.service.embedded import free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser

API = "/api/v1/analytics/generation/"
WEIGHT_BUDGET = 200 * 1024
FIRST_RENDER_TARGET_MS = 1000.0


@dataclass
class Load:
    """One page load: when every panel had rendered, and what crossed the wire."""

    first_render_ms: float
    slowest_api_ms: float
    first_ask_ms: float  # when the page sent its first API request (its own files loaded and run)
    last_answer_ms: float  # when the last API answer of the first render arrived
    panels_ms: dict[str, float] = field(default_factory=dict)  # when each panel first rendered
    page_bytes: dict[str, tuple[int, int]] = field(default_factory=dict)  # url -> (decoded, transferred)
    api_bytes: int = 0


def chromium() -> str:
    path = os.environ.get("GA_CHROMIUM") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        found = shutil.which("chromium")
        if not found:
            raise SystemExit("no Chromium: apt-get install chromium (or set GA_CHROMIUM)")
        path = found
    return path


def load_once(browser: Browser, url: str, *, width: int = 1400, screenshot: str | None = None) -> Load:
    context = browser.new_context(viewport={"width": width, "height": 900}, locale="en-US")
    page = context.new_page()
    responses: list[Any] = []
    errors: list[str] = []

    def keep(response: Any) -> None:  # a plain function: Playwright tags its handlers with an attribute
        responses.append(response)

    page.on("response", keep)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(url)
        page.locator("body[data-state=ready]").wait_for(timeout=60_000)
        first_render = float(page.evaluate("gaDashboard.firstRenderMs"))
        timing = page.evaluate(
            f"""() => {{
            const api = performance.getEntriesByType('resource').filter(e => e.name.includes('{API}'));
            return [Math.max(...api.map(e => e.responseEnd - e.startTime)), Math.min(...api.map(e => e.startTime)),
                    Math.max(...api.map(e => e.responseEnd))];
        }}"""
        )
        broken = page.eval_on_selector_all("[data-panel][data-state=error]", "els => els.map(e => e.dataset.panel)")
        if broken or errors:
            raise SystemExit(f"the page did not render cleanly: panels in error {broken}, console {errors}")
        if screenshot:
            page.screenshot(path=screenshot, full_page=True)
        slowest, first_ask, last_answer = (float(t) for t in timing)
        result = Load(first_render, slowest, first_ask, last_answer, page.evaluate("gaDashboard.readyMs"))
        for response in responses:
            size = len(response.body()) if response.status == 200 else 0
            wire = response.request.sizes()["responseBodySize"]
            if API in response.url:
                result.api_bytes += wire
            else:
                result.page_bytes[response.url] = (size, wire)
        return result
    finally:
        context.close()


@contextlib.contextmanager
def service_on(dbname: str) -> Iterator[str]:
    """`serve` on the data set `dbname` (pipeline off: the data set is complete), its gateway's URL."""
    dsn = make_conninfo(ADMIN_DSN, dbname=dbname)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM generation_events)").fetchone()
    if not row or not row[0]:
        raise SystemExit(f"no events in {dbname}: run `.venv/bin/python -m bench.dataset --dbname {dbname}` first")
    http = f"127.0.0.1:{free_port()}"
    with scratch_namespace() as namespace:
        process, _ = start_service(dsn, namespace=namespace, **{"GA_HTTP_ADDR": http, "GA_SCHEDULER_ENABLED": "false"})
        try:
            yield f"http://{http}/"
        finally:
            process.terminate()
            process.wait(30)


def measure(url: str, *, loads: int, screenshot: str | None, width: int) -> list[Figure]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium())
        try:
            load_once(browser, url)  # warm-up: the service's first queries, Chromium's first start
            runs = [load_once(browser, url, width=width) for _ in range(loads)]
            month = [load_once(browser, url + "#days=30&interval=hourly", width=width) for _ in range(loads)]
            if screenshot:
                load_once(browser, url, width=width, screenshot=screenshot)
        finally:
            browser.close()
    files = runs[-1].page_bytes
    decoded = sum(size for size, _ in files.values())
    wire = sum(sent for _, sent in files.values())
    times = [r.first_render_ms for r in runs]
    month_times = [r.first_render_ms for r in month]
    return [
        Figure(
            "page weight (decoded)", f"{decoded:,} bytes in {len(files)} files", "≤ 200 KB", decoded <= WEIGHT_BUDGET
        ),
        Figure("page weight (on the wire, gzip)", f"{wire:,} bytes"),
        Figure("API answers of one load (on the wire)", f"{runs[-1].api_bytes:,} bytes"),
        Figure(
            "first render, 7 days hourly (default view)",
            f"median {statistics.median(times):.0f} ms (min {min(times):.0f}, max {max(times):.0f}; {loads} loads)",
            "≤ 1 s",
            statistics.median(times) <= FIRST_RENDER_TARGET_MS,
        ),
        Figure(
            "  the page's own files, until its first API request",
            f"median {statistics.median(r.first_ask_ms for r in runs):.0f} ms",
        ),
        Figure(
            "  the slowest API answer (request to response)",
            f"median {statistics.median(r.slowest_api_ms for r in runs):.0f} ms",
        ),
        Figure(
            "  drawing after the last answer arrived",
            f"median {statistics.median(r.first_render_ms - r.last_answer_ms for r in runs):.0f} ms",
        ),
        *(
            Figure(f"  panel {name} ready", f"median {statistics.median(r.panels_ms[name] for r in runs):.0f} ms")
            for name in sorted(runs[0].panels_ms, key=lambda n: statistics.median(r.panels_ms[n] for r in runs))
        ),
        Figure(
            "first render, 30 days hourly",
            f"median {statistics.median(month_times):.0f} ms (min {min(month_times):.0f}, max {max(month_times):.0f})",
            "≤ 1 s",
            statistics.median(month_times) <= FIRST_RENDER_TARGET_MS,
        ),
        *(
            Figure(f"  {u.rsplit('/', 1)[-1] or '/'}", f"{d:,} bytes ({w:,} on the wire)")
            for u, (d, w) in files.items()
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dbname", default="ga_bench", help="the data set to serve (built by bench.dataset)")
    parser.add_argument("--url", help="measure this running dashboard instead (e.g. http://127.0.0.1:8001/)")
    parser.add_argument("--loads", type=int, default=7, help="measured loads per view")
    parser.add_argument("--width", type=int, default=1400, help="viewport width in CSS pixels")
    parser.add_argument("--screenshot", help="save a full-page screenshot of the default view here")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(service_on(args.dbname))
        figures = measure(url, loads=args.loads, screenshot=args.screenshot, width=args.width)
    where = args.url or f"the {args.dbname} data set"
    print_figures(f"Dashboard in Chromium, on {where}", figures)


if __name__ == "__main__":
    main()
