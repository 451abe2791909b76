"""Transfer throughput: drain a backlog of N events from Redis into Postgres (default 1M), several runs.

Each run gets a fresh database and stream; the figure is events inserted per second of transfer time
(median over the runs). Target (DESIGN.md §6): ≥ 50,000 events/s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

from bench.common import (
    bench_settings,
    median,
    now_hour,
    print_result,
    push_backlog,
    scratch_database,
    scratch_namespace,
)
from generation_analytics.service.pipeline import Pipeline

TARGET_EVENTS_PER_S = 50_000


def one_run(events: int, batch_size: int) -> tuple[float, float]:
    with scratch_database() as dsn, scratch_namespace() as namespace:
        started = time.monotonic()
        push_backlog(namespace, events, start=now_hour() - timedelta(days=2), span=timedelta(days=2))
        push_s = time.monotonic() - started
        pipeline = Pipeline(bench_settings(dsn, namespace, transfer_batch_size=batch_size, transfer_time_budget_s=3600))
        try:
            pipeline.pool.wait(10)
            report = pipeline.transfer.run()
        finally:
            pipeline.close()
        assert report.inserted == events, report
        assert report.remaining == 0, report
        return events / report.duration_s, push_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=10_000)
    args = parser.parse_args()
    rates = []
    for run in range(args.runs):
        rate, push_s = one_run(args.events, args.batch_size)
        rates.append(rate)
        print(f"run {run + 1}/{args.runs}: {rate:,.0f} events/s (backlog of {args.events:,} pushed in {push_s:.1f} s)")
    figure = median(rates)
    print_result(
        "Transfer throughput (Redis stream -> generation_events)",
        [
            ("backlog", f"{args.events:,} events, batch {args.batch_size:,}"),
            ("median", f"{figure:,.0f} events/s over {args.runs} runs (min {min(rates):,.0f}, max {max(rates):,.0f})"),
            ("target", f">= {TARGET_EVENTS_PER_S:,} events/s: {'PASS' if figure >= TARGET_EVENTS_PER_S else 'FAIL'}"),
        ],
    )


if __name__ == "__main__":
    main()
