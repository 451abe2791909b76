"""Error groups (issue 14): ListErrorGroups latency, and what fingerprinting costs transfer.

Latency: the service runs as its own process (`generation-analytics serve`) on a data set built by
bench.dataset with varied failure messages (--error-templates); this process is the client. ListErrorGroups
is asked --calls times (default 60) for each of days 1, 7 and 30, interleaved, plus filtered and
second-page variants (page_size 50, the default). Target (docs/design.md §6): p95 <= 50 ms.

Transfer: bench.transfer_throughput's run (a backlog drained from Redis into a fresh database), --runs
times with fingerprinting and as many without it (`stream.fingerprint` replaced by a stub returning NULL,
i.e. transfer as it was before error groups), alternating, so both see the same machine.

    .venv/bin/python -m bench.dataset --dbname ga_bench_errgroups --error-templates 40   # once
    .venv/bin/python -m bench.error_groups --dbname ga_bench_errgroups
    .venv/bin/python -m bench.error_groups --transfer-only --events 1000000 --runs 3
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import psycopg
from psycopg.conninfo import make_conninfo

from bench.common import (
    ADMIN_DSN,
    Figure,
    median,
    now_hour,
    percentile,
    print_figures,
    scratch_namespace,
    start_service,
    synthetic_event,
)
from bench.transfer_throughput import one_run
from generation_analytics.service import fingerprints, stream
from generation_analytics.service.pipeline.transfer import decode_entry
from generation_analytics.service.stream import EVENT_FIELD
from generation_analytics.v1 import analytics_pb2, analytics_pb2_grpc

TARGET_P95_MS = 50.0
DAYS = (1, 7, 30)
SAMPLE_MESSAGE = (
    "failed in stage ab: worker 17 gave up after 4312ms loading /models/sdxl-1.0/unet.bin"
    " (request 3f2b9c1e-1111-4222-8333-444455556666)"
)


def storage(dsn: str) -> tuple[list[Figure], list[str], list[str]]:
    """What the data set holds, and its checkpoints and error types, most failures first."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT fingerprint),"
            " pg_size_pretty(pg_total_relation_size('generation_error_group_metrics_hourly'))"
            " FROM generation_error_group_metrics_hourly"
        ).fetchone()
        events = conn.execute("SELECT count(*) FROM generation_events").fetchone()
        missing = conn.execute(
            "SELECT count(*) FROM generation_events WHERE success = false AND event_type = 'completion'"
            " AND error_fingerprint IS NULL"
        ).fetchone()
        models = conn.execute(
            "SELECT model_checkpoint FROM generation_error_group_metrics_hourly GROUP BY 1 ORDER BY sum(failures) DESC"
        ).fetchall()
        types = conn.execute(
            "SELECT error_type FROM generation_error_group_metrics_hourly GROUP BY 1 ORDER BY sum(failures) DESC"
        ).fetchall()
    assert row is not None and events is not None and missing is not None
    assert row[0], f"no error groups in {dsn}: build it with bench.dataset --error-templates 40"
    figures = [
        Figure("data set", f"{events[0]:,} events; {row[1]:,} error groups in {row[0]:,} rollup rows ({row[2]})"),
        Figure("failures left without a fingerprint", f"{missing[0]:,}"),
    ]
    return figures, [m[0] for m in models if m[0]], [t[0] for t in types]


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def summary(latencies: list[float]) -> str:
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    return f"p50 {p50:5.1f} ms, p95 {p95:5.1f} ms, max {max(latencies):6.1f} ms ({len(latencies)} calls)"


def measure_latency(address: str, calls: int, models: list[str], types: list[str]) -> list[Figure]:
    channel = grpc.insecure_channel(address)
    stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)

    def ask(**fields: Any) -> analytics_pb2.ListErrorGroupsResponse:
        return stub.ListErrorGroups(analytics_pb2.ListErrorGroupsRequest(**fields), timeout=60)

    variants: dict[str, Callable[[int], dict[str, Any]]] = {
        "ListErrorGroups": lambda i: {},
        "ListErrorGroups model_checkpoint": lambda i: {"model_checkpoint": models[i % len(models)]},
        "ListErrorGroups error_type": lambda i: {"error_type": types[i % len(types)]},
    }
    for i in range(6):  # warm-up: connections, plans, caches
        for fields in variants.values():
            ask(days=DAYS[i % len(DAYS)], **fields(i))
    figures = []
    latencies: dict[tuple[str, int], list[float]] = {}
    groups: dict[int, int] = {}
    for i in range(calls):  # interleaved: every variant and window sees the same machine
        for name, fields in variants.items():
            for days in DAYS:
                extra = fields(i)
                ms, reply = timed(lambda days=days, extra=extra: ask(days=days, **extra))  # type: ignore[misc]
                latencies.setdefault((name, days), []).append(ms)
                if name == "ListErrorGroups":
                    groups[days] = reply.total_groups
    for name in variants:
        every = [ms for days in DAYS for ms in latencies[(name, days)]]
        p95 = percentile(every, 0.95)
        figures.append(Figure(f"{name} (days 1/7/30)", summary(every), f"p95 <= {TARGET_P95_MS:.0f} ms", p95 <= 50))
        for days in DAYS:
            label = f"  days={days}" + (f" ({groups[days]:,} groups)" if name == "ListErrorGroups" else "")
            figures.append(Figure(label, summary(latencies[(name, days)])))
    # The second page of each window (token read, keyset position).
    second = []
    for i in range(calls):
        days = DAYS[i % len(DAYS)]
        token = ask(days=days).next_page_token
        if token:
            second.append(timed(lambda days=days, token=token: ask(days=days, page_token=token))[0])  # type: ignore[misc]
    if second:
        figures.append(Figure("ListErrorGroups second page (days 1/7/30)", summary(second)))
    largest = [timed(lambda: ask(days=30, page_size=1000))[0] for _ in range(10)]
    figures.append(Figure("ListErrorGroups days=30 page_size=1000 (outside the mix)", summary(largest)))
    channel.close()
    return figures


def measure_queries(dbname: str, calls: int) -> list[Figure]:
    dsn = make_conninfo(ADMIN_DSN, dbname=dbname)
    figures, models, types = storage(dsn)
    models, types = models[:4], types[:3]
    with scratch_namespace() as namespace:
        process, address = start_service(dsn, namespace=namespace, GA_SCHEDULER_ENABLED="false")
        try:
            figures += measure_latency(address, calls, models, types)
        finally:
            process.terminate()
            process.wait(30)
    return figures


def measure_transfer(events: int, runs: int) -> list[Figure]:
    real = fingerprints.fingerprint
    rates: dict[bool, list[float]] = {True: [], False: []}
    try:
        for run in range(runs):
            for on in (True, False):
                setattr(stream, "fingerprint", real if on else (lambda error_type, message: None))  # noqa: B010
                rate, _ = one_run(events, 10_000)
                rates[on].append(rate)
                print(f"run {run + 1}/{runs}, fingerprinting {'on ' if on else 'off'}: {rate:,.0f} events/s")
    finally:
        setattr(stream, "fingerprint", real)  # noqa: B010
    with_fp, without = median(rates[True]), median(rates[False])

    def show(values: list[float]) -> str:
        return f"{median(values):,.0f} events/s (median of {runs}: {min(values):,.0f}..{max(values):,.0f})"

    started = time.perf_counter()
    for _ in range(20_000):
        fingerprints.fingerprint("ModelLoadError", SAMPLE_MESSAGE)
    per_call_us = (time.perf_counter() - started) / 20_000 * 1e6
    decode_on, decode_off = decode_cost(real)
    return [
        Figure(f"transfer with fingerprints ({events:,} backlog)", show(rates[True]), ">= 50,000 events/s",
               with_fp >= 50_000),
        Figure("transfer without (stub: NULL, as before)", show(rates[False])),
        Figure("ratio with / without (medians)", f"{with_fp / without:.3f}"),
        Figure("fingerprint() of a 120-character message", f"{per_call_us:.1f} µs per call"),
        Figure("decoding a stream entry into a row (transfer's Python step), with / without",
               f"{decode_on:.2f} / {decode_off:.2f} µs per event (medians of 10 passes over 100,000 each)"),
    ]  # fmt: skip


def decode_cost(real: Callable[[str, str], str], events: int = 100_000) -> tuple[float, float]:
    """µs per event of `decode_entry` (protobuf -> checked row) with and without fingerprinting, CPU only:
    the part of transfer fingerprinting adds to, free of Postgres and of the machine's other load on it."""
    rng = random.Random(3)
    users = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(1_000)]
    when = now_hour() - timedelta(hours=1)
    entries = [{EVENT_FIELD: synthetic_event(rng, when, users).SerializeToString()} for _ in range(events)]
    timings: dict[bool, list[float]] = {True: [], False: []}
    try:
        for _ in range(5):
            for on in (True, False, False, True):  # ABBA: drifts in the machine's load hit both alike
                setattr(stream, "fingerprint", real if on else (lambda error_type, message: None))  # noqa: B010
                started = time.perf_counter()
                for fields in entries:
                    decode_entry(fields)
                timings[on].append((time.perf_counter() - started) / events * 1e6)
    finally:
        setattr(stream, "fingerprint", real)  # noqa: B010
    return median(timings[True]), median(timings[False])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dbname", default="ga_bench_errgroups")
    parser.add_argument("--calls", type=int, default=60, help="calls per window and variant")
    parser.add_argument("--events", type=int, default=1_000_000, help="transfer backlog per run")
    parser.add_argument("--runs", type=int, default=3, help="transfer runs with and as many without")
    parser.add_argument("--queries-only", action="store_true")
    parser.add_argument("--transfer-only", action="store_true")
    parser.add_argument("--decode-only", action="store_true", help="only the CPU cost of decoding, with and without")
    args = parser.parse_args()
    figures: list[Figure] = []
    if args.decode_only:
        on, off = decode_cost(fingerprints.fingerprint)
        print_figures("Decoding stream entries", [Figure("with / without fingerprints", f"{on:.2f} / {off:.2f} µs")])
        return
    if not args.transfer_only:
        figures += measure_queries(args.dbname, args.calls)
    if not args.queries_only:
        figures += measure_transfer(args.events, args.runs)
    print_figures("Error groups (client in another process)", figures)
    sys.exit(0 if all(f.passed is not False for f in figures) else 1)


if __name__ == "__main__":
    main()
