"""Failover loss: a Redis master killed under recording load, with and without acknowledged-means-replicated.

A master with two replicas (loopback ports, the machine's redis-server); the replication links and the
service's address go through pausable proxies (the fixture of tests/test_redis_failover.py). A producer
records single events, each retried on UNAVAILABLE until acknowledged, while: replication flows
(--phase-s), replication is held back (as by a slow or partitioned network), the master is killed and the
most caught-up replica promoted (the other re-pointed to it, the address moved), recording goes on. Then
transfer drains the new master and every acknowledged event is looked up in Postgres (acked vs stored).
Run for GA_REDIS_WAIT_REPLICAS=0 and =1, --runs times each. "While held back" counts from 0.3 s before the
links stop (an event acknowledged just before may still be on its way). The proxies are Python threads in
this process: with WAIT every call waits on a round trip through them, so the acknowledged counts of the two
modes are not a throughput comparison (bench.replicated_ingest measures WAIT's cost without proxies).

    .venv/bin/python -m bench.failover [--runs 3] [--phase-s 1.0]
"""

from __future__ import annotations

import argparse

import psycopg

from bench.common import Figure, bench_settings, print_figures, scratch_database, scratch_namespace
from tests.fix_redis_replica import record_through_a_failover, redis_server_binary, running_redis_group


def one_run(binary: str, wait_replicas: int, phase_s: float) -> tuple[int, int, int, int, int]:
    """(acknowledged, acknowledged while held back, lost, stored more than once, refusals)."""
    with scratch_database() as dsn, scratch_namespace() as namespace, running_redis_group(binary) as group:
        settings = bench_settings(dsn, namespace)  # its Redis URL is replaced by the group's address
        producer = record_through_a_failover(settings, group, wait_replicas=wait_replicas, phase_s=phase_s)
        with psycopg.connect(dsn) as conn:
            counts: dict[str, int] = dict(
                conn.execute(
                    "SELECT event_id::text, count(*) FROM generation_events WHERE event_id = ANY(%s::uuid[])"
                    " GROUP BY 1",
                    (list(producer.acked),),
                ).fetchall()
            )
        lost = sum(event_id not in counts for event_id in producer.acked)
        twice = sum(n > 1 for n in counts.values())
        held = sum(phase == "held back" for phase in producer.acked.values())
        return len(producer.acked), held, lost, twice, producer.refusals


def measure(*, runs: int = 3, phase_s: float = 1.0) -> list[Figure]:
    binary = redis_server_binary()
    if binary is None:
        raise SystemExit("no redis-server binary to start a master and its replicas")
    figures: list[Figure] = []
    for wait_replicas in (0, 1):
        results = [one_run(binary, wait_replicas, phase_s) for _ in range(runs)]
        for acked, held, lost, twice, refusals in results:
            print(
                f"WAIT {wait_replicas}: acknowledged {acked:,} ({held:,} while replication was held back),"
                f" lost {lost:,}, stored twice {twice}, refused and retried {refusals:,}"
            )
        acked, lost, twice = (sum(r[i] for r in results) for i in (0, 2, 3))
        held = sum(r[1] for r in results)
        target = "0 lost, 0 twice" if wait_replicas else ""
        passed = (lost == 0 and twice == 0) if wait_replicas else None
        figures.append(
            Figure(
                f"GA_REDIS_WAIT_REPLICAS={wait_replicas}: acked vs stored, {runs} failovers",
                f"{lost:,} of {acked:,} acknowledged lost ({held:,} acked while held back), {twice} stored twice",
                target,
                passed,
            )
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--phase-s", type=float, default=1.0, help="length of each phase of a run")
    args = parser.parse_args()
    print_figures("Redis failover under recording load", measure(runs=args.runs, phase_s=args.phase_s))


if __name__ == "__main__":
    main()
