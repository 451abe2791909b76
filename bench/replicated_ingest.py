"""What "acknowledged means replicated" costs: recording with GA_REDIS_WAIT_REPLICAS=1 against 0.

A Redis master and one replica are started on loopback ports from the machine's redis-server (the test
suite's `RedisPair`); two services record into the master, one answering once the master holds the events,
one once the replica confirmed them too (WAIT 1, sent in the same write as the append). Measured in the
same interleaved rounds: RecordEvent p50/p99 (sequential calls), then RecordEvents throughput in batches
of 100 and 1000 (4 client threads). docs/scaling.md discusses the loss window without the option.

    .venv/bin/python -m bench.replicated_ingest [--seconds 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import Figure, percentile, print_figures, scratch_database, scratch_namespace, start_service
from bench.ingest import record_events_throughput, unary_latency
from tests.fix_redis_replica import RedisPair, redis_server_binary


def measure(*, seconds: float = 5.0, threads: int = 4) -> list[Figure]:
    binary = redis_server_binary()
    if binary is None:
        raise SystemExit("no redis-server binary to start a master and a replica")
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="ga-bench-redis-pair-") as folder:
        pair = RedisPair(binary=binary, folder=Path(folder))
        pair.start_master()
        pair.start_replica()
        with scratch_database() as dsn, scratch_namespace() as namespace:
            common = {"GA_REDIS_URL": pair.master_url, "GA_SCHEDULER_ENABLED": "false"}
            plain, plain_addr = start_service(dsn, namespace=namespace, **common)
            waiting, waiting_addr = start_service(dsn, namespace=namespace, GA_REDIS_WAIT_REPLICAS="1", **common)
            try:
                timings = unary_latency({"plain": (plain_addr, ()), "wait": (waiting_addr, ())}, rounds=5, calls=400)
                p50, p99 = percentile(timings["plain"], 0.5), percentile(timings["plain"], 0.99)
                w50, w99 = percentile(timings["wait"], 0.5), percentile(timings["wait"], 0.99)
                figures.append(Figure("RecordEvent p50 / p99, master only", f"{p50:.0f} / {p99:.0f} µs"))
                figures.append(Figure("RecordEvent p50 / p99, WAIT 1 replica", f"{w50:.0f} / {w99:.0f} µs"))
                figures.append(Figure("WAIT 1 / master only, p50", f"{w50 / p50:.2f}x (+{w50 - p50:.0f} µs)"))
                for size in (100, 1000):
                    rate = record_events_throughput(plain_addr, size, seconds=seconds, threads=threads)
                    wait_rate = record_events_throughput(waiting_addr, size, seconds=seconds, threads=threads)
                    figures.append(
                        Figure(
                            f"RecordEvents, batches of {size}",
                            f"{rate:,.0f} -> {wait_rate:,.0f} events/s with WAIT 1 ({wait_rate / rate:.2f}x)",
                        )
                    )
            finally:
                for process in (plain, waiting):
                    process.terminate()
                    process.wait(30)
                pair.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    args = parser.parse_args()
    figures = measure(seconds=args.seconds)
    print_figures("Recording with acknowledged-means-replicated (GA_REDIS_WAIT_REPLICAS)", figures)


if __name__ == "__main__":
    main()
