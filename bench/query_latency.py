"""Query latency: p50/p95 of every AnalyticsService RPC through gRPC on the benchmark data set.

The service runs as its own process (`generation-analytics serve`) on the data set built by
bench.dataset; this process is the client. Each RPC is called --calls times (default 60) with varied
parameters — days 1/7/30, heavy/medium/light/unknown users, both intervals, both orders, filters and
second pages — after a short warm-up. The seed document's SQL is then timed on the same data.
Target (DESIGN.md §6): p95 ≤ 50 ms for every RPC.

    .venv/bin/python -m bench.dataset            # once: ~10M events (a few minutes)
    .venv/bin/python -m bench.query_latency
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg.conninfo import make_conninfo

from bench.common import ADMIN_DSN, REDIS_URL, print_result
from generation_analytics.v1 import analytics_pb2, analytics_pb2_grpc, events_pb2

INTERVALS = [analytics_pb2.INTERVAL_HOURLY, analytics_pb2.INTERVAL_DAILY]

TARGET_P95_MS = 50.0
SEED = Path(__file__).parents[1] / "docs" / "seed" / "generation_analytics_examples.md"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(dsn: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "GA_POSTGRES_DSN": dsn,
        "GA_REDIS_URL": REDIS_URL,
        "GA_NAMESPACE": f"ga_bench_{uuid.uuid4().hex[:8]}",
        "GA_LISTEN_ADDR": f"127.0.0.1:{port}",
        "GA_HTTP_ADDR": "off",
        "GA_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([str(Path(sys.executable).parent / "generation-analytics"), "serve"], env=env)
    address = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if (
                health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                == health_pb2.HealthCheckResponse.SERVING
            ):
                channel.close()
                return process, address
        except grpc.RpcError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the service did not become healthy")


def sample_users(dsn: str) -> list[str]:
    """Heavy, medium and light users (by their running totals), plus an unknown one."""
    with psycopg.connect(dsn) as conn:
        query = "SELECT user_id::text FROM generation_user_metrics_hourly GROUP BY 1 ORDER BY max(cum_requests) DESC"
        ranked = [r[0] for r in conn.execute(query).fetchall()]
    picks = [ranked[0], ranked[1], ranked[len(ranked) // 10], ranked[len(ranked) // 2], ranked[-1]]
    return [*picks, str(uuid.uuid4())]


def calls(stub: analytics_pb2_grpc.AnalyticsServiceStub, users: list[str]) -> dict[str, Callable[[int], Any]]:
    days = [1, 7, 30]
    models = ["", "sdxl-1.0", "flux-dev", "kandinsky-3"]

    def list_events(i: int) -> Any:
        request = analytics_pb2.ListEventsRequest(
            days=days[i % 3],
            order=analytics_pb2.EVENT_ORDER_SLOWEST if i % 2 else analytics_pb2.EVENT_ORDER_NEWEST,
            model_checkpoint=models[i % 4],
            user_id=users[i % 3] if i % 5 == 0 else "",
            page_size=50,
        )
        if i % 4 == 3:
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dbname", default="ga_bench")
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--skip-seed-sql", action="store_true")
    args = parser.parse_args()
    dsn = make_conninfo(ADMIN_DSN, dbname=args.dbname)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), max(timestamp) FROM generation_events").fetchone()
    assert row and row[0], f"no data in {args.dbname}: run bench.dataset first"
    users = sample_users(dsn)
    process, address = start_server(dsn)
    rows: list[tuple[str, str]] = []
    failed = False
    try:
        channel = grpc.insecure_channel(address)
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        for name, call in calls(stub, users).items():
            for i in range(5):  # warm-up: connections, plans, caches
                call(i)
            latencies = []
            for i in itertools.islice(itertools.count(), args.calls):
                started = time.perf_counter()
                call(i)
                latencies.append((time.perf_counter() - started) * 1000)
            p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
            ok = p95 <= TARGET_P95_MS
            failed |= not ok
            verdict = f"{'PASS' if ok else 'FAIL'} (p95 <= {TARGET_P95_MS:.0f} ms, {len(latencies)} calls)"
            rows.append((name, f"p50 {p50:6.1f} ms   p95 {p95:6.1f} ms   max {max(latencies):6.1f} ms   {verdict}"))
        channel.close()
    finally:
        process.terminate()
        process.wait(30)
    print_result(f"AnalyticsService latency through gRPC ({row[0]:,} events, client in another process)", rows)
    if not args.skip_seed_sql:
        seed = seed_sql_timings(dsn)
        print_result("The seed's SQL on the same data (median of 3)", [(t, f"{s * 1000:8.1f} ms") for t, s in seed])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
