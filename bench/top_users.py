"""ListTopUsers' ranking query: pruned by upper bounds (the service's) against every user computed exactly
(probe 0: a few index probes per active user, as before issue 17), interleaved in one run on the
data set built by bench.dataset, with the answers checked equal.

Each case (days 1/7/30/90 x limit 20/100 x order requests/GPU time) runs --rounds times per variant,
alternating; the figures are medians and p95s of the query time seen by this process (Postgres plus
decoding, no gRPC), and the ratio pruned/everyone. Target (issue 17): ListTopUsers p95 <= 20 ms at 10M
events through gRPC — see bench.query_latency for that figure; this bench shows where the time went.

    .venv/bin/python -m bench.dataset --events 10000000 --dbname ga_bench_perf   # once
    .venv/bin/python -m bench.top_users --dbname ga_bench_perf
"""

from __future__ import annotations

import argparse
import asyncio
import time

import psycopg
from psycopg.conninfo import make_conninfo

from bench.common import ADMIN_DSN, Figure, median, percentile, print_figures
from generation_analytics.service.queries.users import top_users
from generation_analytics.service.queries.window import window
from generation_analytics.vocabulary import UserOrder

DAYS = [1, 7, 30, 90]
LIMITS = [20, 100]
ORDERS = [UserOrder.REQUESTS, UserOrder.GPU_TIME]


async def measure(dsn: str, rounds: int) -> list[Figure]:
    figures: list[Figure] = []
    pruned_all: list[float] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for days in DAYS:
            for limit in LIMITS:
                for order in ORDERS:
                    times: dict[int | None, list[float]] = {None: [], 0: []}
                    answers = {}
                    w = window(days, default=days)
                    for _ in range(rounds):
                        for probe in (None, 0):
                            started = time.perf_counter()
                            answers[probe] = await top_users(conn, w, limit=limit, order=order, probe=probe)
                            times[probe].append((time.perf_counter() - started) * 1000)
                    if answers[None] != answers[0]:
                        raise SystemExit(f"days={days} limit={limit} order={order}: the answers differ")
                    pruned, everyone = times[None], times[0]
                    pruned_all.extend(pruned)
                    figures.append(
                        Figure(
                            f"days={days} limit={limit} {order.value}",
                            f"pruned p50 {median(pruned):.1f} / p95 {percentile(pruned, 0.95):.1f} ms;"
                            f" everyone p50 {median(everyone):.1f} / p95 {percentile(everyone, 0.95):.1f} ms;"
                            f" ratio {median(pruned) / median(everyone):.2f}",
                        )
                    )
    p95 = percentile(pruned_all, 0.95)
    figures.append(Figure("all cases, pruned", f"p95 {p95:.1f} ms", "<= 20 ms (gRPC adds ~1 ms)", p95 <= 20.0))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dbname", default="ga_bench_perf")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    dsn = make_conninfo(ADMIN_DSN, dbname=args.dbname)
    figures = asyncio.run(measure(dsn, args.rounds))
    print_figures("ListTopUsers ranking query: pruned by bounds vs every user exact", figures)


if __name__ == "__main__":
    main()
