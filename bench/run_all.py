"""`make bench`: every benchmark in turn, then one table of every figure, its target and the verdict.

The query benchmarks (bench.query_latency, bench.list_events_matrix) run on data sets of 1M, 10M and
30M events (--sizes), built by bench.dataset one after the other (databases ga_bench_1m, ga_bench,
ga_bench_30m); a table then shows every RPC's p95 at each size, so cost that grows with the data shows.
The seed SQL and the other benchmarks run once (10M, or the largest size asked for); bench.dashboard
(first render in Chromium) runs last, on that data set too, and says so in the table when no Chromium is found.

.venv/bin/python -m bench.run_all                    # full: ~75 min on the 2-core machine, ~50 of them
                                                     # building the three data sets
.venv/bin/python -m bench.run_all --reuse-dataset    # keep data sets that exist already
.venv/bin/python -m bench.run_all --sizes 10m        # one size only
.venv/bin/python -m bench.run_all --quick            # 1M only, smaller runs: a few minutes (less stable)
.venv/bin/python -m bench.run_all --reuse-dataset --queries-only   # the size table and the ListEvents matrix only
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from datetime import UTC, datetime

import psycopg
from psycopg.conninfo import make_conninfo

from bench import (
    aggregation_cardinality,
    aggregation_hour,
    dashboard,
    dataset,
    export,
    freshness,
    ingest,
    list_events_matrix,
    query_latency,
    transfer_throughput,
    wide_keys,
)
from bench.common import ADMIN_DSN, Figure

SIZES = {"1m": 1_000_000, "10m": 10_000_000, "30m": 30_000_000}
DATABASES = {"1m": "ga_bench_1m", "10m": "ga_bench", "30m": "ga_bench_30m"}
MATRIX = "ListEvents matrix (worst cell)"


def has_events(dbname: str) -> bool:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            return False
    with psycopg.connect(make_conninfo(ADMIN_DSN, dbname=dbname)) as conn:
        return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM generation_events)").fetchone()[0])  # type: ignore[index]


def p95_of(figure: Figure) -> float | None:
    found = re.search(r"p95\s+([\d.]+) ms", figure.value)
    return float(found.group(1)) if found else None


def scaling_figures(p95s: dict[str, dict[str, float]], targets: dict[str, float]) -> list[Figure]:
    """One figure per RPC: its p95 at every size, passing when every size meets the RPC's target."""
    figures = []
    for name, by_size in p95s.items():
        target = targets.get(name, query_latency.TARGET_P95_MS)
        value = "  ".join(f"{size.upper()} {ms:6.1f}" for size, ms in by_size.items()) + " ms"
        figures.append(
            Figure(f"p95 {name}", value, f"p95 <= {target:.0f} ms", all(v <= target for v in by_size.values()))
        )
    return figures


def print_scaling(p95s: dict[str, dict[str, float]], sizes: list[str]) -> None:
    width = max(len(name) for name in p95s)
    print("\nQuery p95 by data set size (ms; through gRPC; targets: 50 ms, ListTopUsers 20 ms)")
    print(f"  {'RPC':<{width}}" + "".join(f"{SIZES[s]:>14,}" for s in sizes))
    for name, by_size in p95s.items():
        print(f"  {name:<{width}}" + "".join(f"{by_size.get(s, float('nan')):14.1f}" for s in sizes))


def dashboard_figures(dbname: str, *, loads: int) -> list[Figure]:
    """bench.dashboard on the data set `dbname` (page weight, first render), or why it could not run."""
    try:
        dashboard.chromium()
    except SystemExit as missing:
        return [Figure("dashboard first render", f"not measured: {missing}")]
    with dashboard.service_on(dbname) as url:
        return dashboard.measure(url, loads=loads, screenshot=None, width=1400)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reuse-dataset", action="store_true", help="query data sets that exist already")
    parser.add_argument("--sizes", default="", help="comma-separated among 1m,10m,30m (default all; --quick: 1m)")
    parser.add_argument("--queries-only", action="store_true", help="only the query benchmarks and the size table")
    args = parser.parse_args()
    sizes = [s.strip().lower() for s in (args.sizes or ("1m" if args.quick else ",".join(SIZES))).split(",")]
    if unknown := [s for s in sizes if s not in SIZES]:
        parser.error(f"unknown sizes {unknown}: choose among {', '.join(SIZES)}")
    started = time.monotonic()
    figures: list[tuple[str, Figure]] = []
    p95s: dict[str, dict[str, float]] = {}
    seed_size = "10m" if "10m" in sizes else sizes[-1]
    for size in sizes:
        dbname = DATABASES[size]
        if not (args.reuse_dataset and has_events(dbname)):
            _, timings = dataset.build(dbname, SIZES[size], 5_000, 30)
            built = ", ".join(
                f"{name} {value:.0f}{'' if name == 'hours aggregated' else ' s'}" for name, value in timings.items()
            )
            figures.append(("dataset", Figure(f"~{SIZES[size]:,} events ({dbname})", built)))
        queries = query_latency.measure(dbname=dbname, calls=60, seed_sql=size == seed_size)
        matrix = list_events_matrix.measure(dbname=dbname)
        area = f"queries {size.upper()}"
        figures += [(area, f) for f in queries + matrix]
        for f in queries:
            if (ms := p95_of(f)) is not None:
                p95s.setdefault(f.name, {})[size] = ms
        for f in matrix:
            if (ms := p95_of(f)) is not None:
                p95s.setdefault(MATRIX, {})[size] = ms
    print_scaling(p95s, sizes)
    figures += [("scaling", f) for f in scaling_figures(p95s, query_latency.TARGETS_P95_MS)]
    if not args.queries_only:
        figures += other_figures(args.quick, args.reuse_dataset, DATABASES[seed_size])
    print_table(figures, quick=args.quick, seconds=time.monotonic() - started)


def other_figures(quick: bool, reuse_dataset: bool, seed_database: str) -> list[tuple[str, Figure]]:
    """Every benchmark but the queries: ingest, freshness, transfer, aggregation, wide keys, export, dashboard."""
    figures: list[tuple[str, Figure]] = []
    figures += [("ingest", f) for f in ingest.measure(seconds=3 if quick else 5)]
    figures += [("freshness", f) for f in freshness.measure(seconds=30 if quick else 60)]
    figures += [("transfer", f) for f in transfer_throughput.measure(events=200_000 if quick else 1_000_000)]
    figures += [("aggregation", f) for f in aggregation_hour.measure(events=20_000 if quick else 100_000)]
    figures += [
        ("cardinality", f)
        for f in aggregation_cardinality.measure(
            known=100_000 if quick else 1_000_000, events=20_000 if quick else 100_000, runs=3
        )
    ]
    figures += [("wide keys", f) for f in wide_keys.measure(keys=10_000 if quick else 50_000, runs=5)]
    figures += [("export", f) for f in export.measure(events=200_000 if quick else 1_000_000, reuse=reuse_dataset)]
    figures += [("dashboard", f) for f in dashboard_figures(seed_database, loads=3 if quick else 7)]
    return figures


def print_table(figures: list[tuple[str, Figure]], *, quick: bool, seconds: float) -> None:
    """Every figure with its target and verdict; exits 1 when any failed."""
    print(f"\nGeneration Analytics benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"{platform.machine()} {platform.processor() or ''} Python {platform.python_version()}, "
          f"{'quick' if quick else 'full'} sizes, {seconds:.0f} s")  # fmt: skip
    width = max(len(f.name) for _, f in figures)
    print(f"{'area':<13} {'figure':<{width}}  {'measured':<72} {'target':<16} verdict")
    for area, f in figures:
        print(f"{area:<13} {f.name:<{width}}  {f.value:<72} {f.target:<16} {f.verdict}")
    print(f"rerun: .venv/bin/python -m bench.run_all {' '.join(sys.argv[1:])}".rstrip())
    sys.exit(0 if all(f.passed is not False for _, f in figures) else 1)


if __name__ == "__main__":
    main()
