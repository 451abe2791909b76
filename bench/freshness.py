"""Freshness: time from an acknowledged RecordEvents to the events counting in GetOverview.

The service runs as its own process at default settings (pipeline scheduled every 2 s / 3 s).
A writer records 1,000 events/s (batches of 50 every 50 ms) and notes when each batch was
acknowledged and how many events had been acknowledged by then; a reader polls GetOverview(days=1)
every 50 ms. A batch is visible once the overview counts at least that many events. The first
10 s are warm-up. Target (docs/design.md §6): p95 ≤ 10 s.

    .venv/bin/python -m bench.freshness [--seconds 60]
"""

from __future__ import annotations

import argparse
import bisect
import random
import threading
import time
import uuid
from datetime import UTC, datetime

from bench.common import (
    Figure,
    percentile,
    print_figures,
    scratch_database,
    scratch_namespace,
    start_service,
    synthetic_event,
)
from generation_analytics.client import AnalyticsClient

TARGET_P95_S = 10.0


def measure(*, seconds: float = 60.0, rate: int = 1_000) -> list[Figure]:
    acked: list[tuple[float, int]] = []  # (time acknowledged, events acknowledged so far)
    seen: list[tuple[float, int]] = []  # (time polled, events visible)
    with scratch_database() as dsn, scratch_namespace() as namespace:
        process, address = start_service(dsn, namespace=namespace)
        stop = threading.Event()

        def write() -> None:
            rng = random.Random(5)
            users = [str(uuid.uuid4()) for _ in range(500)]
            total = 0
            batch = max(1, rate // 20)
            with AnalyticsClient(address) as client:
                next_at = time.monotonic()
                while not stop.is_set():
                    events = [synthetic_event(rng, datetime.now(UTC), users) for _ in range(batch)]
                    reply = client.record_events(events)
                    total += reply.accepted_count
                    acked.append((time.monotonic(), total))
                    next_at += 0.05
                    time.sleep(max(0.0, next_at - time.monotonic()))

        def read() -> None:
            with AnalyticsClient(address) as client:
                while not stop.is_set():
                    o = client.overview(days=1)
                    visible = o.total_requests + o.successful_generations + o.failed_generations
                    seen.append((time.monotonic(), visible + o.cancelled_generations))
                    time.sleep(0.05)

        threads = [threading.Thread(target=write), threading.Thread(target=read)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(30)
        process.terminate()
        process.wait(30)

    started = acked[0][0]
    polls = [count for _, count in seen]
    delays = []
    for at, count in acked:
        if at - started < 10 or at > seen[-1][0] - 15:
            continue  # warm-up, or too close to the end to have been seen
        index = bisect.bisect_left(polls, count)
        if index < len(seen):
            delays.append(seen[index][0] - at)
    p50, p95 = percentile(delays, 0.5), percentile(delays, 0.95)
    value = f"p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(delays):.2f} s ({rate:,} events/s, {len(delays)} batches)"
    return [Figure("record -> visible in GetOverview", value, f"p95 <= {TARGET_P95_S:.0f} s", p95 <= TARGET_P95_S)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=1_000, help="events per second")
    args = parser.parse_args()
    print_figures("Freshness at default settings", measure(seconds=args.seconds, rate=args.rate))


if __name__ == "__main__":
    main()
