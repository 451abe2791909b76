"""Answers over a window holding 50,000 distinct checkpoints and error types (docs/design.md §7).

50,000 failed completions, each with its own `error_type` and `model_checkpoint`, from one user, are
recorded through RecordEvents, transferred and aggregated (timed); then every answer that lists
checkpoints or error types is asked over HTTP and gRPC: its size and its latency (median of runs).

    .venv/bin/python -m bench.wide_keys [--keys 50000] [--runs 5]
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime, timedelta

import requests

from bench.common import Figure, median, print_figures, scratch_database, scratch_namespace, start_service
from generation_analytics.client import AnalyticsClient, AnalyticsClientError
from generation_analytics.service.embedded import free_port
from generation_analytics.v1 import events_pb2

USER = str(uuid.UUID(int=7, version=4))
MAX_ANSWER_KB = 1_000  # far below gRPC's default 4 MB client limit, whatever the keys in the window
PREFIX = "/api/v1/analytics/generation"


def wide_events(keys: int) -> list[events_pb2.GenerationEvent]:
    at = datetime.now(UTC) - timedelta(minutes=30)
    events = []
    for i in range(keys):
        event = events_pb2.GenerationEvent(
            event_id=str(uuid.uuid4()),
            event_type=events_pb2.EVENT_TYPE_COMPLETION,
            generation_id=f"g{i}",
            user_id=USER,
            success=False,
            duration_ms=1000 + i % 5000,
            error_type=f"Error{i}",
            error_message=f"failure number {i}",
            model_checkpoint=f"ckpt-{i}",
        )
        event.timestamp.FromDatetime(at + timedelta(microseconds=i))
        events.append(event)
    return events


def measure(*, keys: int = 50_000, runs: int = 5) -> list[Figure]:
    figures: list[Figure] = []
    http_port = free_port()
    with scratch_database() as dsn, scratch_namespace() as namespace:
        process, address = start_service(
            dsn, namespace=namespace, GA_SCHEDULER_ENABLED="false", GA_HTTP_ADDR=f"127.0.0.1:{http_port}"
        )
        try:
            with AnalyticsClient(address, timeout_s=600) as client:
                events = wide_events(keys)
                for start in range(0, len(events), 5_000):
                    client.record_events(events[start : start + 5_000])
                client.run_transfer()
                started = time.monotonic()
                client.run_aggregation()
                figures.append(
                    Figure(f"aggregation of the hour ({keys:,} keys)", f"{time.monotonic() - started:.2f} s")
                )
                base = f"http://127.0.0.1:{http_port}{PREFIX}"
                for path in ("/models", "/failures", f"/users/{USER}", "/overview"):
                    sizes, times = [], []
                    for _ in range(runs):
                        started = time.monotonic()
                        response = requests.get(base + path, timeout=600)
                        times.append(time.monotonic() - started)
                        sizes.append(len(response.content))
                    kb = sizes[-1] / 1e3
                    figures.append(
                        Figure(
                            f"HTTP {path}",
                            f"{kb:,.1f} kB, {median(times) * 1e3:,.0f} ms",
                            f"≤ {MAX_ANSWER_KB:,} kB",
                            kb <= MAX_ANSWER_KB and response.ok,
                        )
                    )
                for name, call in (
                    ("GetModelPerformance", client.models),
                    ("GetFailureAnalysis", client.failures),
                    ("GetUserAnalytics", lambda: client.user(USER)),
                ):
                    times, outcome, passed = [], "", False
                    for _ in range(runs):
                        started = time.monotonic()
                        try:
                            reply = call()
                            outcome = f"{reply.ByteSize() / 1e3:,.1f} kB"
                            passed = reply.ByteSize() / 1e3 <= MAX_ANSWER_KB
                        except AnalyticsClientError as exc:
                            outcome, passed = f"{exc.code.name}: {exc.details[:60]}", False
                        times.append(time.monotonic() - started)
                    figures.append(
                        Figure(
                            f"gRPC {name}",
                            f"{outcome}, {median(times) * 1e3:,.0f} ms",
                            f"≤ {MAX_ANSWER_KB:,} kB",
                            passed,
                        )
                    )
        finally:
            process.terminate()
            process.wait(30)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print_figures(f"Answers over {args.keys:,} checkpoints and error types", measure(keys=args.keys, runs=args.runs))


if __name__ == "__main__":
    main()
