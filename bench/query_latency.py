"""Query latency: p50/p95 of every AnalyticsService RPC through gRPC on the benchmark data set.

The service runs as its own process (`generation-analytics serve`, pipeline off so no aggregation pass
runs beside the queries) on a data set built by bench.dataset; this process is the client. Each RPC is
called --calls times (default 60) with varied parameters — days 1/7/30/90, the heaviest, second, a
heavy (top 10%), the median and the lightest user plus an unknown one, both intervals, top-20 and
top-100 users, ListEvents with every filter combination (the heaviest or the median user, a checkpoint,
event type, success, error type, minimum duration) in both orders and every third call its next page —
after a short warm-up. The seed document's SQL is then timed on the same data. bench.list_events_matrix
asks every ListEvents combination for the heaviest user. Target (docs/design.md §6, issue 17): p95 ≤
50 ms for every RPC, ListTopUsers ≤ 20 ms.

    .venv/bin/python -m bench.dataset            # once: ~10M events (a few minutes)
    .venv/bin/python -m bench.query_latency [--dbname ga_bench]
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

from bench import list_events_matrix
from bench.common import ADMIN_DSN, Figure, percentile, print_figures, scratch_namespace, start_service
from generation_analytics.v1 import analytics_pb2, analytics_pb2_grpc
from generation_analytics.vocabulary import EventType, Order

INTERVALS = [analytics_pb2.INTERVAL_HOURLY, analytics_pb2.INTERVAL_DAILY]

TARGET_P95_MS = 50.0
TARGETS_P95_MS = {"ListTopUsers": 20.0}  # issue 17: ranking users from running totals, at 10M events
DAYS = [1, 7, 30, 90]
MODELS = ["sdxl-1.0", "flux-dev", "kandinsky-3", "playground-v2"]
ERRORS = ["OutOfMemory", "Timeout", "ModelLoadError"]
# Newest pages of every event type: requests and cancellations with a completion's filters match nothing,
# which an index must prove without reading the window (issue 17).
NEWEST_TYPES = (EventType.COMPLETION, EventType.CANCELLATION, EventType.REQUEST)
SEED = Path(__file__).parents[1] / "docs" / "seed" / "generation_analytics_examples.md"


def sample_users(dsn: str) -> list[str]:
    """Heavy, medium and light users (by their requests), plus an unknown one."""
    with psycopg.connect(dsn) as conn:
        query = "SELECT user_id::text FROM generation_user_metrics_monthly GROUP BY 1 ORDER BY sum(total_requests) DESC"
        ranked = [r[0] for r in conn.execute(query).fetchall()]
    picks = [ranked[0], ranked[1], ranked[len(ranked) // 10], ranked[len(ranked) // 2], ranked[-1]]
    return [*picks, str(uuid.uuid4())]


def calls(stub: analytics_pb2_grpc.AnalyticsServiceStub, users: list[str]) -> dict[str, Callable[[int], Any]]:
    days = DAYS
    combos = list_events_matrix.combos()

    def list_events(i: int) -> Any:
        # Every filter combination in turn, both orders, the heaviest or the median user, a checkpoint
        # of its own speed; every third call also fetches the next page.
        combo, order = combos[i % len(combos)], list(list_events_matrix.ORDERS)[(i // len(combos) + i) % 2]
        values = {
            "user_id": users[0] if i % 3 else users[3],
            "model_checkpoint": MODELS[i % len(MODELS)],
            "event_type": EventType.COMPLETION if order is Order.SLOWEST else NEWEST_TYPES[(i // 2) % 3],
            "success": bool(i % 4 == 0),
            "error_type": ERRORS[i % len(ERRORS)],
            "min_duration_ms": [1_000, 5_000, 15_000][i % 3],
        }
        request = list_events_matrix.request_for(combo, order, values, days[i % len(days)])
        page = stub.ListEvents(request)
        if page.next_page_token and i % 3 == 0:
            request.page_token = page.next_page_token
            page = stub.ListEvents(request)
        return page

    return {
        "GetOverview": lambda i: stub.GetOverview(analytics_pb2.GetOverviewRequest(days=days[i % 4])),
        "GetTrends": lambda i: stub.GetTrends(
            analytics_pb2.GetTrendsRequest(days=days[i % 4], interval=INTERVALS[(i // 4) % 2])
        ),
        "GetUserAnalytics": lambda i: stub.GetUserAnalytics(
            analytics_pb2.GetUserAnalyticsRequest(user_id=users[i % len(users)], days=days[i % 4])
        ),
        "GetModelPerformance": lambda i: stub.GetModelPerformance(
            analytics_pb2.GetModelPerformanceRequest(days=days[i % 4])
        ),
        "GetFailureAnalysis": lambda i: stub.GetFailureAnalysis(
            analytics_pb2.GetFailureAnalysisRequest(days=days[i % 4])
        ),
        "GetPeakHours": lambda i: stub.GetPeakHours(analytics_pb2.GetPeakHoursRequest(days=days[i % 4])),
        "ListEvents": list_events,
        "ListTopUsers": lambda i: stub.ListTopUsers(
            analytics_pb2.ListTopUsersRequest(days=days[i % 4], limit=[20, 100][(i // 4) % 2])
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
        slowest = sorted(range(calls_per_rpc), key=lambda i: -latencies[i])[:3]
        print(f"  {name}: slowest calls (call number: ms) " + ", ".join(f"{i}: {latencies[i]:.1f}" for i in slowest))
        target = TARGETS_P95_MS.get(name, TARGET_P95_MS)
        value = f"p50 {p50:5.1f} ms, p95 {p95:5.1f} ms, max {max(latencies):6.1f} ms ({len(latencies)} calls)"
        figures.append(Figure(name, value, f"p95 <= {target:.0f} ms", p95 <= target))
    channel.close()
    return figures


def measure(*, dbname: str = "ga_bench", calls: int = 60, seed_sql: bool = True) -> list[Figure]:
    dsn = make_conninfo(ADMIN_DSN, dbname=dbname)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM generation_events)").fetchone()
    assert row and row[0], f"no data in {dbname}: run bench.dataset first"
    users = sample_users(dsn)
    with scratch_namespace() as namespace:
        process, address = start_service(dsn, namespace=namespace, GA_SCHEDULER_ENABLED="false")
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
