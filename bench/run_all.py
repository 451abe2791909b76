"""`make bench`: every benchmark in turn, then one table of every figure, its target and the verdict.

.venv/bin/python -m bench.run_all            # full sizes: ~15 min on the 2-core machine
.venv/bin/python -m bench.run_all --quick    # smaller data, a few minutes (figures less stable)
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import UTC, datetime

from bench import (
    aggregation_cardinality,
    aggregation_hour,
    dataset,
    freshness,
    ingest,
    query_latency,
    transfer_throughput,
    wide_keys,
)
from bench.common import Figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reuse-dataset", action="store_true", help="query the existing ga_bench database")
    args = parser.parse_args()
    started = time.monotonic()
    figures: list[tuple[str, Figure]] = []
    if not args.reuse_dataset:
        size = 1_000_000 if args.quick else 10_000_000
        _, timings = dataset.build("ga_bench", size, 5_000, 30)
        built = ", ".join(
            f"{name} {value:.0f}{'' if name == 'hours aggregated' else ' s'}" for name, value in timings.items()
        )
        figures.append(("dataset", Figure(f"~{size:,} events, 5,000 users, 30 days", built)))
    figures += [("queries", f) for f in query_latency.measure(calls=60)]
    figures += [("ingest", f) for f in ingest.measure(seconds=3 if args.quick else 5)]
    figures += [("freshness", f) for f in freshness.measure(seconds=30 if args.quick else 60)]
    figures += [("transfer", f) for f in transfer_throughput.measure(events=200_000 if args.quick else 1_000_000)]
    figures += [("aggregation", f) for f in aggregation_hour.measure(events=20_000 if args.quick else 100_000)]
    figures += [
        ("cardinality", f)
        for f in aggregation_cardinality.measure(
            known=100_000 if args.quick else 1_000_000, events=20_000 if args.quick else 100_000, runs=3
        )
    ]

    figures += [("wide keys", f) for f in wide_keys.measure(keys=10_000 if args.quick else 50_000, runs=5)]

    print(f"\nGeneration Analytics benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"{platform.machine()} {platform.processor() or ''} Python {platform.python_version()}, "
          f"{'quick' if args.quick else 'full'} sizes, {time.monotonic() - started:.0f} s")  # fmt: skip
    width = max(len(f.name) for _, f in figures)
    print(f"{'area':<12} {'figure':<{width}}  {'measured':<72} {'target':<16} verdict")
    for area, f in figures:
        print(f"{area:<12} {f.name:<{width}}  {f.value:<72} {f.target:<16} {f.verdict}")
    print(f"rerun: .venv/bin/python -m bench.run_all {' '.join(sys.argv[1:])}".rstrip())
    sys.exit(0 if all(f.passed is not False for _, f in figures) else 1)


if __name__ == "__main__":
    main()
