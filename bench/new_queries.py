"""Latency of the answers issue 14 added: period comparisons, checkpoint comparison, local-time days,
GPU time (top users ranked by it; costs priced per checkpoint with GA_GPU_PRICES = PRICES).

The service runs as its own process (`generation-analytics serve`) on the data set built by
bench.dataset; this process is the client. Each question is asked --calls times (default 60) with
varied parameters (days 1/7/30; zones with daylight saving and with :30/:45 offsets; checkpoint pairs)
after a short warm-up; the same questions without the new parameters are measured in the same run,
interleaved, as the baseline. Target (docs/design.md §6): p95 <= 50 ms for every RPC.

    .venv/bin/python -m bench.dataset --dbname ga_bench_tz     # once: ~10M events (a few minutes)
    .venv/bin/python -m bench.new_queries --dbname ga_bench_tz
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
import psycopg
from psycopg.conninfo import make_conninfo

from bench.common import ADMIN_DSN, Figure, percentile, print_figures, scratch_namespace, start_service
from generation_analytics.v1 import analytics_pb2, analytics_pb2_grpc

TARGET_P95_MS = 50.0
DAYS = [1, 7, 30]
ZONES = ["America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe"]
DAILY = analytics_pb2.INTERVAL_DAILY
# Checkpoints at different prices: costs read per checkpoint (overview, models, users: the raw path).
PRICES = "sdxl-1.0=2.5,flux-dev=4.0,*=1.0"

Call = Callable[[int], Any]


def checkpoints(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT model_checkpoint FROM generation_model_metrics_daily GROUP BY 1"
            " ORDER BY sum(successful_generations) DESC"
        ).fetchall()
    return [row[0] for row in rows]


def heavy_users(dsn: str, count: int = 6) -> list[str]:
    """The most active users (a user's cost is read from their raw events when prices differ)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT user_id::text FROM generation_user_metrics_monthly GROUP BY 1 ORDER BY sum(events) DESC LIMIT %s",
            (count,),
        ).fetchall()
    return [row[0] for row in rows]


def questions(
    stub: analytics_pb2_grpc.AnalyticsServiceStub, models: list[str], users: list[str]
) -> dict[str, tuple[Call, Call | None]]:
    """Name -> (the new question, the same question without the new parameter, or None)."""

    def days(i: int) -> int:
        return DAYS[i % len(DAYS)]

    def zone(i: int) -> str:
        return ZONES[(i // len(DAYS)) % len(ZONES)]

    return {
        "GetOverview compare_previous": (
            lambda i: stub.GetOverview(analytics_pb2.GetOverviewRequest(days=days(i), compare_previous=True)),
            lambda i: stub.GetOverview(analytics_pb2.GetOverviewRequest(days=days(i))),
        ),
        "GetModelPerformance compare_previous": (
            lambda i: stub.GetModelPerformance(
                analytics_pb2.GetModelPerformanceRequest(days=days(i), compare_previous=True)
            ),
            lambda i: stub.GetModelPerformance(analytics_pb2.GetModelPerformanceRequest(days=days(i))),
        ),
        "GetFailureAnalysis compare_previous": (
            lambda i: stub.GetFailureAnalysis(
                analytics_pb2.GetFailureAnalysisRequest(days=days(i), compare_previous=True)
            ),
            lambda i: stub.GetFailureAnalysis(analytics_pb2.GetFailureAnalysisRequest(days=days(i))),
        ),
        "CompareCheckpoints": (
            lambda i: stub.CompareCheckpoints(
                analytics_pb2.CompareCheckpointsRequest(
                    days=days(i),
                    model_checkpoint_a=models[i % len(models)],
                    model_checkpoint_b=models[(i + 1) % len(models)],
                )
            ),
            None,
        ),
        "GetTrends daily time_zone": (
            lambda i: stub.GetTrends(analytics_pb2.GetTrendsRequest(days=days(i), interval=DAILY, time_zone=zone(i))),
            lambda i: stub.GetTrends(analytics_pb2.GetTrendsRequest(days=days(i), interval=DAILY)),
        ),
        "GetFailureAnalysis time_zone": (
            lambda i: stub.GetFailureAnalysis(analytics_pb2.GetFailureAnalysisRequest(days=days(i), time_zone=zone(i))),
            lambda i: stub.GetFailureAnalysis(analytics_pb2.GetFailureAnalysisRequest(days=days(i))),
        ),
        "ListTopUsers order=gpu_time": (
            lambda i: stub.ListTopUsers(
                analytics_pb2.ListTopUsersRequest(days=days(i), order=analytics_pb2.USER_ORDER_GPU_TIME)
            ),
            lambda i: stub.ListTopUsers(analytics_pb2.ListTopUsersRequest(days=days(i))),
        ),
        "GetUserAnalytics heaviest users, priced": (
            lambda i: stub.GetUserAnalytics(
                analytics_pb2.GetUserAnalyticsRequest(user_id=users[i % len(users)], days=days(i))
            ),
            None,
        ),
        "GetPeakHours time_zone": (
            lambda i: stub.GetPeakHours(analytics_pb2.GetPeakHoursRequest(days=days(i), time_zone=zone(i))),
            lambda i: stub.GetPeakHours(analytics_pb2.GetPeakHoursRequest(days=days(i))),
        ),
    }


def timed(call: Call, i: int) -> float:
    started = time.perf_counter()
    call(i)
    return (time.perf_counter() - started) * 1000


def summary(latencies: list[float]) -> str:
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    return f"p50 {p50:5.1f} ms, p95 {p95:5.1f} ms, max {max(latencies):6.1f} ms ({len(latencies)} calls)"


def measure_rpcs(address: str, models: list[str], users: list[str], calls: int) -> list[Figure]:
    figures: list[Figure] = []
    channel = grpc.insecure_channel(address)
    stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
    for name, (new, baseline) in questions(stub, models, users).items():
        for i in range(5):  # warm-up: connections, plans, caches
            new(i)
            if baseline is not None:
                baseline(i)
        latencies, before = [], []
        for i in range(calls):  # interleaved, so both see the same machine
            latencies.append(timed(new, i))
            if baseline is not None:
                before.append(timed(baseline, i))
        p95 = percentile(latencies, 0.95)
        figures.append(Figure(name, summary(latencies), f"p95 <= {TARGET_P95_MS:.0f} ms", p95 <= TARGET_P95_MS))
        if before:
            figures.append(Figure("  same without it (baseline)", summary(before)))
    # Outside the mix: the longest window, in the zone every hour of which is cut into quarters.
    year = [
        timed(lambda i: stub.GetPeakHours(analytics_pb2.GetPeakHoursRequest(days=365, time_zone="Asia/Kathmandu")), i)
        for i in range(12)
    ]
    figures.append(Figure("GetPeakHours days=365 Asia/Kathmandu (outside the mix)", summary(year)))
    channel.close()
    return figures


def quarter_rows(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), pg_size_pretty(pg_total_relation_size('generation_metrics_quarterly')),"
            " (SELECT count(*) FROM generation_metrics_hourly) FROM generation_metrics_quarterly"
        ).fetchone()
    assert row is not None
    return f"{row[0]:,} quarter rows ({row[1]}) next to {row[2]:,} hourly rows"


def measure(*, dbname: str, calls: int) -> list[Figure]:
    dsn = make_conninfo(ADMIN_DSN, dbname=dbname)
    models = checkpoints(dsn)
    assert models, f"no data in {dbname}: run bench.dataset first"
    figures = [Figure("storage", quarter_rows(dsn))]
    with scratch_namespace() as namespace:
        process, address = start_service(dsn, namespace=namespace, GA_SCHEDULER_ENABLED="false", GA_GPU_PRICES=PRICES)
        try:
            figures += measure_rpcs(address, models, heavy_users(dsn), calls)
        finally:
            process.terminate()
            process.wait(30)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dbname", default="ga_bench")
    parser.add_argument("--calls", type=int, default=60)
    args = parser.parse_args()
    figures = measure(dbname=args.dbname, calls=args.calls)
    print_figures("Issue 14 questions through gRPC (client in another process)", figures)
    sys.exit(0 if all(f.passed is not False for f in figures) else 1)


if __name__ == "__main__":
    main()
