"""Aggregation time for one hour holding N events (default 100,000), median over several runs.

The events are COPYed straight into generation_events (this measures aggregation, not transfer);
each run recomputes every rollup of that hour with the real aggregation code.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from datetime import timedelta

import psycopg

from bench.common import (
    Figure,
    bench_settings,
    median,
    now_hour,
    print_figures,
    scratch_database,
    scratch_namespace,
    synthetic_event,
)
from generation_analytics.service.codec import ROW_COLUMNS, event_to_row
from generation_analytics.service.pipeline import Pipeline


def load_hour(dsn: str, events: int, users: int) -> None:
    rng = random.Random(3)
    user_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(users)]
    hour = now_hour() - timedelta(hours=3)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY generation_events ({', '.join(ROW_COLUMNS)}) FROM STDIN") as copy:
            for i in range(events):
                when = hour + timedelta(microseconds=int(3_600_000_000 * i / events))
                copy.write_row(event_to_row(synthetic_event(rng, when, user_ids)))
        cur.execute("ANALYZE generation_events")


def measure(*, events: int = 100_000, users: int = 5_000, runs: int = 5) -> list[Figure]:
    with scratch_database() as dsn, scratch_namespace() as namespace:
        load_hour(dsn, events, users)
        pipeline = Pipeline(bench_settings(dsn, namespace))
        try:
            hour = now_hour() - timedelta(hours=3)
            durations = []
            for _ in range(runs):
                started = time.monotonic()
                report = pipeline.aggregator.run_range(hour, hour)
                durations.append(time.monotonic() - started)
                assert report.hours_aggregated == 1, report
        finally:
            pipeline.close()
    figure = median(durations)
    value = f"{figure:.3f} s for {events:,} events ({events / figure:,.0f} events/s; median of {runs})"
    return [Figure("aggregation of one hour", value)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print_figures("Aggregation of one hour", measure(events=args.events, users=args.users, runs=args.runs))


if __name__ == "__main__":
    main()
