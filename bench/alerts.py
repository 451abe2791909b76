"""Alert evaluation cost per rule on the benchmark data set, and webhook delivery latency.

Evaluation: a mix of rules (every windowed metric of scope everything, two per checkpoint, two per error type,
each with windows of 15 min, 1 h, 1 day and 7 days) evaluated by `AlertEvaluator.tick` — claim, measure from the
rollups, store — over several ticks at the data set's latest time; the figure is the cost per rule and the
rules one process evaluates per minute. Also the measurement alone per scope and window (median of 5).

Delivery: a rule flipping between FIRING and RESOLVED on every tick, one target on a local aiohttp receiver,
and the delivery job on its own schedule (the real PipelineScheduler at GA_ALERTS_DELIVERY_INTERVAL_S): the
time from the committed transition to the signed body's arrival; and the HTTP round trip of an attempt.

    .venv/bin/python -m bench.dataset --dbname ga_bench        # once (≈10M events)
    .venv/bin/python -m bench.alerts [--dbname ga_bench] [--ticks 5] [--notifications 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis.asyncio as aioredis
from aiohttp import web
from psycopg.conninfo import make_conninfo

from bench.common import ADMIN_DSN, REDIS_URL, median, percentile, print_result
from generation_analytics.service.alerts.evaluator import AlertEvaluator, tick_start
from generation_analytics.service.alerts.measure import measure
from generation_analytics.service.alerts.rules import RuleSpec, Target, create_rule, validate
from generation_analytics.service.alerts.webhooks import WebhookSender
from generation_analytics.service.db import sync_pool
from generation_analytics.service.migrate import migrate
from generation_analytics.service.pipeline.scheduler import PipelineJob, PipelineScheduler
from generation_analytics.service.settings import AlertSettings, PostgresSettings, RedisSettings
from generation_analytics.service.stream import StreamKeys
from generation_analytics.vocabulary import AlertMetric, AlertScope, Comparison

WINDOWS = (15, 60, 1440, 10080)
EVERYTHING_METRICS = (
    AlertMetric.FAILURE_RATE_PCT, AlertMetric.SUCCESS_RATE_PCT, AlertMetric.P95_DURATION_MS,
    AlertMetric.P99_DURATION_MS, AlertMetric.REQUEST_VOLUME, AlertMetric.CANCELLATION_RATE_PCT,
    AlertMetric.AVG_QUEUE_LENGTH, AlertMetric.FAILURES,
)  # fmt: skip


def rule_mix(checkpoints: list[str], error_types: list[str]) -> list[RuleSpec]:
    specs = []
    for window in WINDOWS:
        for metric in EVERYTHING_METRICS:
            specs.append((metric, AlertScope.EVERYTHING, "", window))
        for checkpoint in checkpoints:
            specs += [(m, AlertScope.CHECKPOINT, checkpoint, window)
                      for m in (AlertMetric.FAILURE_RATE_PCT, AlertMetric.P95_DURATION_MS)]  # fmt: skip
        for error in error_types:
            specs += [(m, AlertScope.ERROR_TYPE, error, window)
                      for m in (AlertMetric.FAILURES, AlertMetric.FAILURE_RATE_PCT)]  # fmt: skip
    return [
        RuleSpec(
            name=f"bench {i} {m.value} {s.value} {v} {w}",
            metric=m,
            comparison=Comparison.GT,
            threshold=5,
            window_minutes=w,
            scope=s,
            scope_value=v,
            min_samples=10,
        )
        for i, (m, s, v, w) in enumerate(specs)
    ]


async def reset(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("DELETE FROM alert_rules")


async def add_rules(dsn: str, specs: list[RuleSpec]) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for spec in specs:
            await create_rule(conn, validate(spec))


async def evaluation(dsn: str, redis: RedisSettings, ticks: int) -> list[tuple[str, str]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (await conn.execute("SELECT max(quarter) FROM generation_metrics_quarterly")).fetchone()
        checkpoints = [r[0] for r in await (await conn.execute(
            "SELECT DISTINCT model_checkpoint FROM generation_model_metrics_daily ORDER BY 1")).fetchall()]  # fmt: skip
        errors = [r[0] for r in await (await conn.execute(
            "SELECT DISTINCT error_type FROM generation_error_metrics_daily ORDER BY 1")).fetchall()]  # fmt: skip
    assert row is not None and row[0] is not None, "no quarter rows: build the data set first (bench.dataset)"
    latest: datetime = row[0] + timedelta(minutes=14)
    specs = rule_mix(checkpoints, errors)
    await reset(dsn)
    await add_rules(dsn, specs)
    settings = AlertSettings(interval_s=60)
    evaluator = AlertEvaluator(postgres=PostgresSettings(dsn=dsn), redis_settings=redis, settings=settings)
    per_rule = []
    for k in range(ticks):
        now = tick_start(latest, 60) + timedelta(minutes=k)
        started = time.perf_counter()
        report = await evaluator.tick(now=now)
        elapsed = time.perf_counter() - started
        assert report.evaluated == len(specs)
        per_rule.append(elapsed / len(specs))
    cost = median(per_rule)
    rows = [
        ("rules", f"{len(specs)} ({len(checkpoints)} checkpoints, {len(errors)} error types, windows {WINDOWS} min)"),
        ("tick (claim + measure + store), per rule", f"{cost * 1000:.2f} ms (median of {ticks} ticks)"),
        ("rules one process evaluates per minute", f"{60 / cost:,.0f}"),
    ]
    # The measurement alone, per scope and window.
    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    keys = StreamKeys(redis.namespace)
    client = aioredis.Redis.from_url(redis.url)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for spec in specs:
            for _ in range(5):
                started = time.perf_counter()
                await measure(conn, client, keys, metric=spec.metric, scope=spec.scope, scope_value=spec.scope_value,
                              window_minutes=spec.window_minutes, now=latest)  # fmt: skip
                groups[(spec.scope.value, spec.window_minutes)].append(time.perf_counter() - started)
    await client.aclose()
    for (scope, window), times in sorted(groups.items()):
        rows.append((f"measure, {scope}, {window} min", f"p50 {median(times) * 1000:.2f} ms, "
                                                       f"p95 {percentile(times, 0.95) * 1000:.2f} ms"))  # fmt: skip
    await reset(dsn)
    return rows


async def delivery(dsn: str, redis: RedisSettings, notifications: int) -> list[tuple[str, str]]:
    arrived: list[float] = []
    got = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        arrived.append(time.time())
        got.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    settings = AlertSettings()  # the default delivery interval
    postgres = PostgresSettings(dsn=dsn)
    spec = RuleSpec(name="flip", metric=AlertMetric.REQUEST_VOLUME, comparison=Comparison.GE, threshold=0,
                    window_minutes=15, targets=(Target(url),))  # fmt: skip
    await reset(dsn)
    await add_rules(dsn, [spec])
    pool = sync_pool(postgres, name="bench-alerts", max_size=2)
    sender = WebhookSender(postgres=postgres, settings=settings)
    job = PipelineJob("alert-delivery", sender.run, interval_s=settings.delivery_interval_s, pool=pool, replica="b")
    scheduler = PipelineScheduler([job])
    scheduler.start()
    evaluator = AlertEvaluator(postgres=postgres, redis_settings=redis, settings=AlertSettings(interval_s=1))
    latencies = []
    rng = random.Random(15)
    try:
        last_tick = tick_start(datetime.now(UTC), 1)
        for k in range(notifications):
            # Every tick flips the rule: threshold 0 (>= holds: FIRING) then 1e12 (RESOLVED), both notified.
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute("UPDATE alert_rules SET threshold = %s", (0 if k % 2 == 0 else 1e12,))
            got.clear()
            # At a random moment of the delivery job's cycle (waiting for each arrival would otherwise lock
            # the transitions to just after a run, and every latency to one whole interval).
            await asyncio.sleep(rng.uniform(0, settings.delivery_interval_s))
            now = datetime.now(UTC)
            if tick_start(now, 1) <= last_tick:  # one evaluation per tick: wait for the next one
                await asyncio.sleep(1 - now.microsecond / 1e6)
                now = datetime.now(UTC)
            last_tick = tick_start(now, 1)
            await evaluator.tick(now=now)
            committed = time.time()
            await asyncio.wait_for(got.wait(), 30)
            latencies.append(arrived[-1] - committed)
    finally:
        scheduler.shutdown()
        pool.close()
        await runner.cleanup()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        trips = [r[0] for r in await (await conn.execute("SELECT duration_ms FROM alert_delivery_attempts")).fetchall()]
    await reset(dsn)
    return [
        ("notifications", f"{notifications}, delivery job every {settings.delivery_interval_s:g} s (default)"),
        (
            "transition committed -> body received",
            f"p50 {median(latencies):.2f} s, p95 {percentile(latencies, 0.95):.2f} s, max {max(latencies):.2f} s",
        ),
        ("one attempt (sign + POST + record)", f"p50 {median(trips):.1f} ms, p95 {percentile(trips, 0.95):.1f} ms"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dbname", default="ga_bench")
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--notifications", type=int, default=20)
    args = parser.parse_args()
    dsn = make_conninfo(ADMIN_DSN, dbname=args.dbname)
    migrate(dsn)  # the alert tables, if the data set predates them
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM generation_events").fetchone()
    redis = RedisSettings(url=REDIS_URL, namespace="ga_bench_alerts")
    rows = [("data set", f"{args.dbname}: {row[0] if row else 0:,} events")]
    rows += asyncio.run(evaluation(dsn, redis, args.ticks))
    rows += asyncio.run(delivery(dsn, replace(redis), args.notifications))
    print_result("Alerts: evaluation cost and delivery latency", rows)


if __name__ == "__main__":
    main()
