"""Aggregation: rollups equal a brute-force recompute from generation_events, whatever happens."""

from __future__ import annotations

import json
import random
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from generation_analytics.service.db import sync_pool
from generation_analytics.service.hours import hour_floor
from generation_analytics.service.migrate import load_migrations, migrate
from generation_analytics.service.pipeline.aggregate import PARTS, Aggregator
from generation_analytics.service.pipeline.retention import prune
from generation_analytics.service.pipeline.worker import Pipeline
from generation_analytics.service.settings import AggregationSettings, PostgresSettings, RetentionSettings, Settings
from generation_analytics.service.stream import StreamKeys
from generation_analytics.v1 import events_pb2
from tests.factories import make_event
from tests.fix_pipeline import AggregatorProcess, push
from tests.fix_services import empty_tables
from tests.rollup_check import (
    assert_local_time_matches_raw,
    assert_queries_match_raw,
    assert_rollups_match_raw,
    fetch,
)

BASE_HOUR = (datetime.now(UTC) - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
USERS = ["00000000-0000-4000-8000-00000000000" + str(i) for i in range(6)]
MODELS = [None, "sdxl-1.0", "flux-dev"]
ERRORS = [None, "OutOfMemory", "Timeout"]
MESSAGES = [None, "boom", "CUDA OOM", "took too long", "x", "y", "z"]


@st.composite
def raw_events(draw: st.DrawFn) -> events_pb2.GenerationEvent:
    kind = draw(st.sampled_from(["request", "completion", "cancellation"]))
    fields: dict[str, Any] = {
        "user_id": draw(st.sampled_from(USERS)),
        "timestamp": BASE_HOUR
        + timedelta(minutes=draw(st.integers(0, 60 * 30)), microseconds=draw(st.integers(0, 999_999))),
        "model_checkpoint": draw(st.sampled_from(MODELS)) or "",
    }
    if kind == "request":
        queue = draw(st.none() | st.integers(0, 60))
        if queue is not None:
            fields["queue_length"] = queue
    if kind == "completion":
        fields["success"] = draw(st.booleans())
        duration = draw(st.none() | st.integers(0, 10) | st.integers(0, 2_000_000))
        batch = draw(st.none() | st.integers(0, 8))
        if batch is not None:
            fields["batch_size"] = batch
        if not fields["success"]:
            fields["error_type"] = draw(st.sampled_from(ERRORS)) or ""
            fields["error_message"] = draw(st.sampled_from(MESSAGES)) or ""
    event = make_event(kind, **fields)
    if kind == "completion":
        if duration is None:
            event.ClearField("duration_ms")
        else:
            event.duration_ms = duration
    return event


def reset(settings: Settings, client: redis.Redis) -> None:
    empty_tables(settings.postgres.dsn)
    client.delete(StreamKeys(settings.redis.namespace).stream)


def transfer_and_aggregate(pipeline: Pipeline) -> None:
    pipeline.run_transfer()
    report = pipeline.run_aggregation()
    assert report.remaining_dirty_hours == 0


@hypothesis_settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(batches=st.lists(st.lists(raw_events(), min_size=1, max_size=40), min_size=1, max_size=3))
def test_rollups_equal_a_recompute_from_raw_events(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings, batches: list[list[events_pb2.GenerationEvent]]
) -> None:
    reset(settings, stream_client)
    for batch in batches:  # later batches are late events for hours already aggregated
        push(stream_client, settings.redis.namespace, batch)
        transfer_and_aggregate(pipeline)
        assert_rollups_match_raw(settings.postgres.dsn)


def snapshot(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    tables = {
        "generation_metrics_hourly": "timestamp",
        "generation_metrics_daily": "day",
        "generation_metrics_quarterly": "quarter",
        "generation_model_metrics_hourly": "hour, model_checkpoint",
        "generation_error_metrics_hourly": "hour, error_type",
        "generation_user_metrics_hourly": "uid, hour",
        "generation_user_metrics_monthly": "uid, month",
        "generation_model_metrics_daily": "day, model_checkpoint",
        "generation_error_metrics_daily": "day, error_type",
    }
    result = {}
    with psycopg.connect(dsn) as conn:
        for table, order in tables.items():
            rows = conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
            names = [c.name for c in conn.execute(f"SELECT * FROM {table} LIMIT 0").description or []]
            keep = [i for i, n in enumerate(names) if n not in {"aggregated_at", "id"}]
            result[table] = [tuple(json.dumps(r[i], default=str) for i in keep) for r in rows]
    return result


def some_events(n: int, start: datetime) -> list[events_pb2.GenerationEvent]:
    kinds = ["request", "completion", "completion", "cancellation"]
    return [
        make_event(
            kinds[i % 4],
            user_id=USERS[i % len(USERS)],
            timestamp=start + timedelta(minutes=7 * i),
            model_checkpoint=MODELS[i % 3] or "",
            **({"success": i % 3 != 0, "duration_ms": 100 + 37 * i} if kinds[i % 4] == "completion" else {}),
        )
        for i in range(n)
    ]


def test_aggregating_twice_changes_nothing(pipeline: Pipeline, stream_client: redis.Redis, settings: Settings) -> None:
    push(stream_client, settings.redis.namespace, some_events(300, BASE_HOUR))
    transfer_and_aggregate(pipeline)
    first = snapshot(settings.postgres.dsn)
    report = pipeline.run_aggregation(BASE_HOUR - timedelta(hours=2), BASE_HOUR + timedelta(hours=48))
    assert report.hours_aggregated == 51
    assert snapshot(settings.postgres.dsn) == first
    assert first["generation_metrics_hourly"], "the test must aggregate something"


def hour_requests(dsn: str, hour: datetime) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT total_requests FROM generation_metrics_hourly WHERE timestamp = %s", (hour,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_late_event_reaggregates_its_hour(pipeline: Pipeline, stream_client: redis.Redis, settings: Settings) -> None:
    push(stream_client, settings.redis.namespace, some_events(50, BASE_HOUR))
    transfer_and_aggregate(pipeline)
    old_hour = BASE_HOUR + timedelta(hours=1)
    before = fetch(
        settings.postgres.dsn,
        f"SELECT total_requests FROM generation_metrics_hourly WHERE timestamp = '{old_hour.isoformat()}'",
    )

    push(stream_client, settings.redis.namespace, [make_event("request", timestamp=old_hour + timedelta(minutes=59))])
    pipeline.run_transfer()
    report = pipeline.run_aggregation()

    assert report.hours_aggregated == 1
    after = fetch(
        settings.postgres.dsn,
        f"SELECT total_requests FROM generation_metrics_hourly WHERE timestamp = '{old_hour.isoformat()}'",
    )
    assert after[0][0] == before[0][0] + 1
    assert_rollups_match_raw(settings.postgres.dsn)


def test_concurrent_aggregators_and_transfers_converge(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    """Two aggregators race each other and a transfer that keeps adding events to the same hours."""
    errors: list[BaseException] = []
    aggregators = [
        Aggregator(pool=pipeline.pool, settings=settings.aggregation, retention=settings.retention) for _ in range(2)
    ]
    stop = threading.Event()

    def aggregate(aggregator: Aggregator) -> None:
        try:
            while not stop.is_set():
                aggregator.run()
        except BaseException as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=aggregate, args=(a,)) for a in aggregators]
    for t in threads:
        t.start()
    try:
        for round_ in range(8):
            push(stream_client, settings.redis.namespace, some_events(120, BASE_HOUR + timedelta(minutes=round_)))
            pipeline.run_transfer()
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert errors == []
    pipeline.run_aggregation()  # whatever the race left dirty
    assert_rollups_match_raw(settings.postgres.dsn)


def test_retention_removes_old_raw_events_and_keeps_rollups(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    push(stream_client, settings.redis.namespace, some_events(200, BASE_HOUR))
    transfer_and_aggregate(pipeline)
    rollups = snapshot(settings.postgres.dsn)
    cutoff_now = BASE_HOUR + timedelta(days=settings.retention.days, hours=10)

    report = prune(pipeline.pool, replace(settings.retention, batch_rows=7), now=cutoff_now)

    remaining = fetch(settings.postgres.dsn, "SELECT min(timestamp), count(*) FROM generation_events")[0]
    assert report.deleted == 200 - remaining[1] > 0
    assert remaining[0] >= BASE_HOUR + timedelta(hours=10)
    assert snapshot(settings.postgres.dsn) == rollups


def test_dirty_hours_past_retention_keep_their_rollups(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    old = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=settings.retention.days + 1)
    with psycopg.connect(settings.postgres.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO generation_dirty_hours (hour, version) VALUES (%s, 1)", (old,))
    report = pipeline.run_aggregation()
    assert (report.expired, report.hours_aggregated, report.remaining_dirty_hours) == (1, 0, 0)


def test_aggregators_in_three_processes_on_the_same_users_never_deadlock(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    """Range repairs and full runs at once, on scattered late hours of the same few users, round after
    round: every run succeeds (a 40P01 would fail it) and the rollups end equal to the raw events."""
    rng = random.Random(5)
    now = datetime.now(UTC)
    others = [AggregatorProcess(settings.postgres.dsn, replace(settings.aggregation, batch_hours=3))]
    others.append(AggregatorProcess(settings.postgres.dsn, settings.aggregation))
    try:
        for _ in range(6):
            late = [
                make_event(
                    rng.choice(["request", "completion", "cancellation"]),
                    user_id=rng.choice(USERS),
                    timestamp=now - timedelta(days=rng.choice([0, 1, 2, 9, 33, 61]), hours=rng.randint(0, 30)),
                )
                for _ in range(60)
            ]
            push(stream_client, settings.redis.namespace, late)
            pipeline.run_transfer()
            start = hour_floor(now) - timedelta(days=rng.randint(0, 40))
            others[0].start((start, start + timedelta(days=rng.randint(1, 25))))
            others[1].start("all")
            mine = pipeline.run_aggregation(hour_floor(now) - timedelta(days=35), hour_floor(now))
            reports = [mine, others[0].result(), others[1].result()]
            assert [r.failed_hours for r in reports] == [0, 0, 0]
    finally:
        for other in others:
            other.close()
    assert pipeline.run_aggregation().remaining_dirty_hours == 0
    assert_rollups_match_raw(settings.postgres.dsn)
    assert_queries_match_raw(settings.postgres.dsn)
    assert_local_time_matches_raw(settings.postgres.dsn, days=(1, 7, 40))


def test_many_users_checkpoints_and_error_types(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    """20,000 events from 15,000 users over 2,000 checkpoints and 500 error types, across a day edge."""
    rng = random.Random(9)
    midnight = hour_floor(datetime.now(UTC)).replace(hour=0) - timedelta(days=1)
    users = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(15_000)]
    events = []
    for i in range(20_000):
        kind = rng.choice(["request", "completion", "completion", "cancellation"])
        fields: dict[str, Any] = {
            "user_id": users[i] if i < len(users) else rng.choice(users),
            "timestamp": midnight + timedelta(seconds=rng.randint(-3 * 3600, 3 * 3600)),
            "model_checkpoint": f"ckpt-{rng.randrange(2_000)}",
        }
        if kind == "completion":
            fields.update(success=rng.random() < 0.7, duration_ms=rng.randint(1, 100_000))
            if not fields["success"]:
                fields.update(error_type=f"Error{rng.randrange(500)}", error_message=f"failed at step {i}")
        events.append(make_event(kind, **fields))
    push(stream_client, settings.redis.namespace, events)
    assert pipeline.run_transfer().inserted == len(events)
    report = pipeline.run_aggregation()
    assert (report.hours_aggregated, report.failed_hours, report.remaining_dirty_hours) == (6, 0, 0)
    assert_rollups_match_raw(settings.postgres.dsn)
    assert_queries_match_raw(settings.postgres.dsn, days=(1, 2, 7))
    assert_local_time_matches_raw(settings.postgres.dsn, days=(1, 2))


def test_events_stamped_in_the_next_hour_count_nowhere_yet(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    """A clock a few minutes ahead puts an event in the hour after the window's end: the hourly answers
    and those read from daily rows (checkpoints, error types, top users) must leave it out alike."""
    now = datetime.now(UTC)
    ahead = hour_floor(now) + timedelta(hours=1, minutes=2)
    events = [
        make_event("completion", timestamp=now - timedelta(minutes=1), model_checkpoint="sdxl-1.0", user_id=USERS[0]),
        make_event("completion", timestamp=ahead, model_checkpoint="sdxl-1.0", user_id=USERS[0]),
        make_event("completion", timestamp=ahead, model_checkpoint="flux-dev", user_id=USERS[1], success=False,
                   error_type="Timeout"),
    ]  # fmt: skip
    push(stream_client, settings.redis.namespace, events)
    pipeline.run_transfer()
    pipeline.run_aggregation()
    assert_rollups_match_raw(settings.postgres.dsn)
    assert_queries_match_raw(settings.postgres.dsn, days=(1, 7))


def test_0009_marks_aggregated_hours_so_their_quarter_rows_fill_in(db_dsn: str, tmp_path: Path) -> None:
    """A database from before 0009 with aggregated hours: the migration marks exactly the hours with
    rollups and raw events dirty, and the next aggregation writes their quarter rows."""
    dsn = db_dsn  # a migrated database; rebuilt below as it was before 0009
    old, kept = tmp_path / "old", tmp_path / "all"
    old.mkdir()
    kept.mkdir()
    for migration in load_migrations():
        target = old if migration.version < 9 else kept
        (target / f"{migration.version:04d}_{migration.name}.sql").write_text(migration.sql)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    migrate(dsn, folder=old)
    base = hour_floor(datetime.now(UTC)) - timedelta(days=2)
    events = some_events(40, base)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for event in events:
            conn.execute(
                "INSERT INTO generation_events (event_id, event_type, generation_id, user_id, timestamp,"
                " duration_ms, success) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (event.event_id, ("request", "completion", "cancellation")[event.event_type - 1], event.generation_id,
                 event.user_id, event.timestamp.ToDatetime(tzinfo=UTC),
                 event.duration_ms if event.HasField("duration_ms") else None,
                 event.success if event.HasField("success") else None),
            )  # fmt: skip
        hours = sorted({hour_floor(e.timestamp.ToDatetime(tzinfo=UTC)) for e in events})
        gone = base - timedelta(days=30)  # an hour whose raw events retention already removed
        for hour in [*hours, gone]:
            conn.execute(
                "INSERT INTO generation_metrics_hourly (timestamp, total_requests, successful_generations,"
                " failed_generations, cancelled_generations, unique_users, total_images_generated, duration_count,"
                " duration_sum, queue_length_count, queue_length_sum, first_event_at, last_event_at)"
                " VALUES (%s, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, %s, %s)",
                (hour, hour, hour),
            )
    for path in kept.iterdir():
        (old / path.name).write_text(path.read_text())
    assert 9 in migrate(dsn, folder=old)
    marked = [row[0] for row in fetch(dsn, "SELECT hour FROM generation_dirty_hours ORDER BY hour")]
    assert marked == hours
    pool = sync_pool(PostgresSettings(dsn=dsn), name="test-0009", max_size=len(PARTS) + 1)
    try:
        report = Aggregator(pool=pool, settings=AggregationSettings(), retention=RetentionSettings()).run()
    finally:
        pool.close()
    assert (report.hours_aggregated, report.remaining_dirty_hours) == (len(hours), 0)
    with psycopg.connect(dsn, autocommit=True) as conn:  # the hour past retention keeps its (fake) row
        conn.execute("DELETE FROM generation_metrics_hourly WHERE timestamp = %s", (gone,))
    assert_rollups_match_raw(dsn)
    assert fetch(dsn, "SELECT count(DISTINCT date_trunc('hour', quarter)) FROM generation_metrics_quarterly") == [
        (len(hours),)
    ]
