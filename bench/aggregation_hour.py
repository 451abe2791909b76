"""Aggregation time for one hour holding N events (default 100,000) from 5,000 users, median over runs.

The events are COPYed straight into generation_events with their users' ids, as transfer stores them
(this measures aggregation, not transfer). Each run is the first aggregation of another such hour,
with the real aggregation code; the recompute of an hour whose events did not change is shown too.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from datetime import datetime, timedelta

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
from generation_analytics.service.pipeline.worker import Pipeline
from generation_analytics.service.stream import ROW_COLUMNS, event_to_row


def load_hours(dsn: str, hours: list[datetime], events: int, users: int) -> None:
    rng = random.Random(3)
    user_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(users)]
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO generation_users (user_id) SELECT unnest(%s::uuid[]) ORDER BY 1", (user_ids,))
        uids: dict[str, int] = dict(cur.execute("SELECT user_id::text, uid FROM generation_users").fetchall())
        with cur.copy(f"COPY generation_events ({', '.join(ROW_COLUMNS)}, uid) FROM STDIN") as copy:
            for hour in hours:
                for i in range(events):
                    when = hour + timedelta(microseconds=int(3_600_000_000 * i / events))
                    row = event_to_row(synthetic_event(rng, when, user_ids))
                    copy.write_row((*row, uids[row[3]]))
        cur.execute("ANALYZE generation_events")


def measure(*, events: int = 100_000, users: int = 5_000, runs: int = 5) -> list[Figure]:
    hours = [now_hour() - timedelta(hours=3 + i) for i in range(runs)]
    with scratch_database() as dsn, scratch_namespace() as namespace:
        load_hours(dsn, hours, events, users)
        pipeline = Pipeline.of(bench_settings(dsn, namespace))
        try:
            durations, again = [], []
            for hour in hours:
                started = time.monotonic()
                report = pipeline.aggregator.run_range(hour, hour)
                durations.append(time.monotonic() - started)
                assert report.hours_aggregated == 1, report
            for _ in range(3):
                started = time.monotonic()
                pipeline.aggregator.run_range(hours[0], hours[0])
                again.append(time.monotonic() - started)
        finally:
            pipeline.close()
    figure = median(durations)
    value = (
        f"{figure:.3f} s for {events:,} events ({events / figure:,.0f} events/s; first aggregation, median of {runs}"
        f" hours; unchanged again: {median(again):.3f} s)"
    )
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
