"""Query latency: p50/p95 of every AnalyticsService RPC through gRPC on the benchmark data set.

The service runs as its own process (`generation-analytics serve`) on the data set built by
bench.dataset; this process is the client. Each RPC is called --calls times (default 60) with varied
parameters — days 1/7/30, heavy/medium/light/unknown users, both intervals, both orders, filters and
second pages — after a short warm-up. The seed document's SQL is then timed on the same data.
Target (docs/design.md §6): p95 ≤ 50 ms for every RPC.

    .venv/bin/python -m bench.dataset            # once: ~10M events (a few minutes)
    .venv/bin/python -m bench.query_latency
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psycopg
from psycopg.conninfo import make_conninfo

from bench.common import ADMIN_DSN, Figure, percentile, print_figures, scratch_namespace, start_service
from generation_analytics.v1 import analytics_pb2, analytics_pb2_grpc, events_pb2

INTERVALS = [analytics_pb2.INTERVAL_HOURLY, analytics_pb2.INTERVAL_DAILY]
ORDERS = [analytics_pb2.EVENT_ORDER_NEWEST, analytics_pb2.EVENT_ORDER_SLOWEST]

TARGET_P95_MS = 50.0
SEED = Path(__file__).parents[1] / "docs" / "seed" / "generation_analytics_examples.md"


def sample_users(dsn: str) -> list[str]:
    """Heavy, medium and light users (by their requests), plus an unknown one."""
    with psycopg.connect(dsn) as conn:
        query = "SELECT user_id::text FROM generation_user_metrics_monthly GROUP BY 1 ORDER BY sum(total_requests) DESC"
        ranked = [r[0] for r in conn.execute(query).fetchall()]
    picks = [ranked[0], ranked[1], ranked[len(ranked) // 10], ranked[len(ranked) // 2], ranked[-1]]
    return [*picks, str(uuid.uuid4())]


def calls(stub: analytics_pb2_grpc.AnalyticsServiceStub, users: list[str]) -> dict[str, Callable[[int], Any]]:
    days = [1, 7, 30]
    models = ["", "sdxl-1.0", "flux-dev", "kandinsky-3"]

    def list_events(i: int) -> Any:
        # One kind of filter at a time (checkpoint, user, or failures of a checkpoint), both orders,
        # every third call also fetching the next page.
        request = analytics_pb2.ListEventsRequest(
            days=days[i % 3], order=ORDERS[i % 2], page_size=50, model_checkpoint=models[i % 4]
        )
        if i % 5 == 0:
            request.model_checkpoint = ""
            request.user_id = users[i % 3]
        elif i % 4 == 3:
            request.event_type = events_pb2.EVENT_TYPE_COMPLETION
            request.success = False
        page = stub.ListEvents(request)
        if page.next_page_token and i % 3 == 0:
            request.page_token = page.next_page_token
            page = stub.ListEvents(request)
        return page

    return {
        "GetOverview": lambda i: stub.GetOverview(analytics_pb2.GetOverviewRequest(days=days[i % 3])),
        "GetTrends": lambda i: stub.GetTrends(
            analytics_pb2.GetTrendsRequest(days=days[i % 3], interval=INTERVALS[(i // 3) % 2])
        ),
        "GetUserAnalytics": lambda i: stub.GetUserAnalytics(
            analytics_pb2.GetUserAnalyticsRequest(user_id=users[i % len(users)], days=days[i % 3])
        ),
        "GetModelPerformance": lambda i: stub.GetModelPerformance(
            analytics_pb2.GetModelPerformanceRequest(days=days[i % 3])
        ),
        "GetFailureAnalysis": lambda i: stub.GetFailureAnalysis(
            analytics_pb2.GetFailureAnalysisRequest(days=days[i % 3])
        ),
        "GetPeakHours": lambda i: stub.GetPeakHours(analytics_pb2.GetPeakHoursRequest(days=days[i % 3])),
        "ListEvents": list_events,
        "ListTopUsers": lambda i: stub.ListTopUsers(
            analytics_pb2.ListTopUsersRequest(days=days[i % 3], limit=[20, 100][i % 2])
        ),
    }


def seed_sql_timings(dsn: str) -> list[tuple[str, float]]:
    blocks = re.findall(r"```sql\n(.*?)```", SEED.read_text(), flags=re.DOTALL)
    results = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '120s'")
        for block in blocks:
            title = block.strip().splitlines()[0].lstrip("- ").strip()
            durations = []
            for _ in range(3):
                started = time.monotonic()
                with conn.cursor() as cur:
                    cur.execute(block.encode())
                    while cur.nextset():
                        pass
                durations.append(time.monotonic() - started)
            results.append((title, statistics.median(durations)))
    return results


def measure_rpcs(address: str, users: list[str], calls_per_rpc: int) -> list[Figure]:
    """p50/p95 per RPC."""
    figures: list[Figure] = []
    channel = grpc.insecure_channel(address)
    stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
    for name, call in calls(stub, users).items():
        for i in range(5):  # warm-up: connections, plans, caches
            call(i)
        latencies = []
        for i in range(calls_per_rpc):
            started = time.perf_counter()
            call(i)
            latencies.append((time.perf_counter() - started) * 1000)
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        value = f"p50 {p50:5.1f} ms, p95 {p95:5.1f} ms, max {max(latencies):6.1f} ms ({len(latencies)} calls)"
        figures.append(Figure(name, value, f"p95 <= {TARGET_P95_MS:.0f} ms", p95 <= TARGET_P95_MS))
    # Not in the target mix: two correlated filters with "slowest" have no index of their own (a third
    # duration index would cost transfer its 50k events/s); shown so the limit is on record.
    worst = []
    for i in range(12):
        request = analytics_pb2.ListEventsRequest(
            days=[1, 7, 30][i % 3], order=analytics_pb2.EVENT_ORDER_SLOWEST, user_id=users[i % 2],
            model_checkpoint=["sdxl-1.0", "kandinsky-3"][(i // 3) % 2], page_size=50,
        )  # fmt: skip
        started = time.perf_counter()
        stub.ListEvents(request)
        worst.append((time.perf_counter() - started) * 1000)
    value = f"p50 {percentile(worst, 0.5):5.1f} ms, max {max(worst):6.1f} ms: known limit, outside the mix"
    figures.append(Figure("ListEvents slowest by user AND checkpoint", value))
    channel.close()
    return figures


def measure(*, dbname: str = "ga_bench", calls: int = 60, seed_sql: bool = True) -> list[Figure]:
    dsn = make_conninfo(ADMIN_DSN, dbname=dbname)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM generation_events").fetchone()
    assert row and row[0], f"no data in {dbname}: run bench.dataset first"
    users = sample_users(dsn)
    with scratch_namespace() as namespace:
        process, address = start_service(dsn, namespace=namespace)
        try:
            figures = measure_rpcs(address, users, calls)
        finally:
            process.terminate()
            process.wait(30)
    if seed_sql:
        figures += [
            Figure(f"seed SQL: {title}", f"{seconds * 1000:,.1f} ms") for title, seconds in seed_sql_timings(dsn)
        ]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dbname", default="ga_bench")
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--skip-seed-sql", action="store_true")
    args = parser.parse_args()
    figures = measure(dbname=args.dbname, calls=args.calls, seed_sql=not args.skip_seed_sql)
    print_figures("AnalyticsService latency through gRPC (client in another process)", figures)
    sys.exit(0 if all(f.passed is not False for f in figures) else 1)


if __name__ == "__main__":
    main()
