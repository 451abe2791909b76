"""Export throughput and the server's memory: ExportEvents through gRPC and `…/events.csv` through HTTP.

The service runs as its own process (`generation-analytics serve`, pipeline off) on a data set built by
bench.dataset (default 1M events, database ga_bench_export; --reuse-dataset keeps one that exists);
this process is the client and reads every row of the window (days=31: the whole data set), counting
them. Figures: rows, seconds and rows/s per way out, and the server's peak resident memory (VmHWM of
/proc/<pid>/status) before and during each export. The peak is reset between runs (writing 5 to
/proc/<pid>/clear_refs) when the kernel allows it, so each run's peak is its own.

    .venv/bin/python -m bench.export                       # builds ga_bench_export (1M events) first
    .venv/bin/python -m bench.export --reuse-dataset       # the data set as it is
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import grpc
import psycopg
import requests
from psycopg.conninfo import make_conninfo

from bench import dataset
from bench.common import ADMIN_DSN, Figure, print_figures, scratch_namespace, start_service
from generation_analytics.service.embedded import free_port
from generation_analytics.v1 import analytics_pb2, analytics_pb2_grpc

DAYS = 31  # the data set spans 30 days and an hour: every row


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the process's peak resident set since it started (or since the last reset)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for {pid}")


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rows_in(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM generation_events").fetchone()
    assert row is not None
    return int(row[0])


def export_grpc(address: str) -> tuple[int, float]:
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        started = time.perf_counter()
        rows = sum(len(m.events) for m in stub.ExportEvents(analytics_pb2.ExportEventsRequest(days=DAYS)))
        return rows, time.perf_counter() - started


def export_http(http: str) -> tuple[int, float]:
    started = time.perf_counter()
    lines = 0
    with requests.get(
        f"{http}/api/v1/analytics/generation/events.csv", params={"days": DAYS}, stream=True, timeout=600
    ) as reply:
        reply.raise_for_status()
        for chunk in reply.iter_content(chunk_size=1 << 20):
            lines += chunk.count(b"\n")
    return lines - 1, time.perf_counter() - started  # less the header line


def measure(*, dbname: str = "ga_bench_export", events: int = 1_000_000, reuse: bool = False) -> list[Figure]:
    dsn = make_conninfo(ADMIN_DSN, dbname=dbname)
    figures: list[Figure] = []
    if not (reuse and _has_rows(dbname)):
        _, timings = dataset.build(dbname, events, 5_000, 30)
        figures.append(Figure("data set", ", ".join(f"{k} {v:.0f}" for k, v in timings.items())))
    total = rows_in(dsn)
    figures.append(Figure("rows in the window", f"{total:,}"))
    http = f"127.0.0.1:{free_port()}"
    with scratch_namespace() as namespace:
        process, address = start_service(dsn, namespace=namespace, GA_SCHEDULER_ENABLED="false", GA_HTTP_ADDR=http)
        try:
            # Warm-up: one small export each way, so the baseline includes the code and connections.
            with grpc.insecure_channel(address) as channel:
                stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
                list(stub.ExportEvents(analytics_pb2.ExportEventsRequest(days=1, user_id=_any_user(dsn))))
            requests.get(f"http://{http}/api/v1/analytics/generation/events.csv", params={"days": 1}, timeout=60)
            baseline = peak_rss_kib(process.pid)
            figures.append(Figure("server peak RSS before (VmHWM)", f"{baseline / 1024:.0f} MiB"))
            for name in ("gRPC ExportEvents", "HTTP events.csv"):
                resettable = reset_peak(process.pid)
                rows, seconds = export_grpc(address) if name.startswith("gRPC") else export_http(f"http://{http}")
                peak = peak_rss_kib(process.pid)
                figures.append(
                    Figure(name, f"{rows:,} rows in {seconds:.1f} s: {rows / seconds:,.0f} rows/s", "", rows == total)
                )
                since = "this run" if resettable else "start"
                figures.append(Figure(f"  server peak RSS ({since})", f"{peak / 1024:.0f} MiB"))
        finally:
            process.terminate()
            process.wait(30)
    return figures


def _has_rows(dbname: str) -> bool:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            return False
    return rows_in(make_conninfo(ADMIN_DSN, dbname=dbname)) > 0


def _any_user(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT user_id::text FROM generation_events LIMIT 1").fetchone()
    assert row is not None
    return str(row[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dbname", default="ga_bench_export")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--reuse-dataset", action="store_true", help="export the data set as it is, if it exists")
    args = parser.parse_args()
    figures = measure(dbname=args.dbname, events=args.events, reuse=args.reuse_dataset)
    print_figures("Export (server in its own process; client reads every row)", figures)
    sys.exit(0 if all(f.passed is not False for f in figures) else 1)


if __name__ == "__main__":
    main()
