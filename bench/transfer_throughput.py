"""Transfer throughput: drain a backlog of N events from Redis into Postgres (default 1M), several runs.

Each run gets a fresh database and stream; the figure is events inserted per second of transfer time
(median over the runs). Target (docs/design.md §6): ≥ 50,000 events/s on the 2-core machine.

`--compare DIR` (repeatable) also measures with the migrations in DIR instead of the package's (e.g. an
older index set: `git archive ff4ee6b schema | tar -x -C /tmp/old`, then `--compare /tmp/old/schema`);
runs alternate between the schemas, so a load that comes and goes on a shared machine weighs on each alike,
and each schema's median is printed with its ratio to the package's.

    .venv/bin/python -m bench.transfer_throughput [--events 1000000] [--runs 3] [--compare DIR ...]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from bench.common import (
    Figure,
    bench_settings,
    median,
    now_hour,
    print_figures,
    push_backlog,
    scratch_database,
    scratch_namespace,
)
from generation_analytics.service.pipeline.worker import Pipeline

TARGET_EVENTS_PER_S = 50_000


def one_run(events: int, batch_size: int, schema: Path | None = None) -> tuple[float, float]:
    with scratch_database(schema=schema) as dsn, scratch_namespace() as namespace:
        started = time.monotonic()
        push_backlog(namespace, events, start=now_hour() - timedelta(days=2), span=timedelta(days=2))
        push_s = time.monotonic() - started
        pipeline = Pipeline.of(bench_settings(dsn, namespace, budget_s=3600, batch_size=batch_size))
        try:
            pipeline.pool.wait(10)
            report = pipeline.transfer.run()
        finally:
            pipeline.close()
        assert report.inserted == events, report
        assert report.remaining == 0, report
        return events / report.duration_s, push_s


def measure(
    *, events: int = 1_000_000, runs: int = 3, batch_size: int = 10_000, compare: Sequence[Path] = ()
) -> list[Figure]:
    schemas: list[Path | None] = [None, *compare]
    rates: dict[Path | None, list[float]] = {schema: [] for schema in schemas}
    for run in range(runs):
        for schema in schemas:
            rate, push_s = one_run(events, batch_size, schema)
            rates[schema].append(rate)
            print(
                f"transfer run {run + 1}/{runs} ({schema or 'package schema'}): {rate:,.0f} events/s"
                f" (backlog of {events:,} pushed in {push_s:.1f} s)"
            )
    figure = median(rates[None])
    for schema in compare:
        other = median(rates[schema])
        print(
            f"schema {schema}: {other:,.0f} events/s (median of {runs}, {min(rates[schema]):,.0f}.."
            f"{max(rates[schema]):,.0f}); package schema / this = {figure / other:.2f}"
        )
    mine = rates[None]
    value = f"{figure:,.0f} events/s (median of {runs}, {min(mine):,.0f}..{max(mine):,.0f}; {events:,} backlog)"
    return [
        Figure(
            "transfer Redis -> Postgres", value, f">= {TARGET_EVENTS_PER_S:,} events/s", figure >= TARGET_EVENTS_PER_S
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--compare", type=Path, action="append", default=[], help="another schema folder to measure")
    args = parser.parse_args()
    figures = measure(events=args.events, runs=args.runs, batch_size=args.batch_size, compare=args.compare)
    print_figures("Transfer throughput", figures)


if __name__ == "__main__":
    main()
