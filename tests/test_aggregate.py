"""Aggregation: rollups equal a brute-force recompute from generation_events, whatever happens."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from generation_analytics.service import sketches
from generation_analytics.service.aggregate import Aggregator
from generation_analytics.service.keys import StreamKeys
from generation_analytics.service.pipeline import Pipeline
from generation_analytics.service.retention import prune
from generation_analytics.service.settings import Settings
from generation_analytics.v1 import events_pb2
from tests import reference as ref
from tests.factories import make_event
from tests.fix_pipeline import push

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
    with psycopg.connect(settings.postgres.dsn, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE generation_events, generation_dirty_hours, generation_metrics_hourly,"
            " generation_model_metrics_hourly, generation_error_metrics_hourly, generation_user_metrics_hourly,"
            " generation_model_metrics_daily, generation_error_metrics_daily, generation_events_dead_letter"
        )
    client.delete(StreamKeys(settings.redis.namespace).stream)


def fetch(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def same(got: float | None, want: float | None) -> bool:
    """Equal up to floating-point rounding (both None counts as equal)."""
    if got is None or want is None:
        return got is want
    return abs(got - want) <= 1e-6 * max(1.0, abs(want))


def assert_rollups_match_raw(dsn: str) -> None:
    """Compare every rollup table with an independent recompute from generation_events."""
    raw = ref.load(dsn)
    by_hour = ref.group(raw, lambda e: e.hour)

    hourly = fetch(
        dsn,
        "SELECT timestamp, total_requests, successful_generations, failed_generations, cancelled_generations,"
        " avg_duration_ms, p50_duration_ms, p95_duration_ms, p99_duration_ms, unique_users, avg_queue_length,"
        " max_queue_length, total_images_generated, duration_count, duration_sum, first_event_at, last_event_at,"
        " duration_hist, user_bitmap FROM generation_metrics_hourly",
    )
    assert {r[0] for r in hourly} == set(by_hour)
    for row in hourly:
        s = ref.summarize(by_hour[row[0]])
        assert row[1:5] == (s.total_requests, s.successful, s.failed, s.cancelled)
        for got, want in zip(
            row[5:9], (s.avg_duration, s.percentile(0.5), s.percentile(0.95), s.percentile(0.99)), strict=True
        ):
            assert same(got, want), (got, want)
        assert row[9] == len(s.users) == sketches.union_count([row[18]])
        assert same(row[10], s.avg_queue)
        assert row[11] == s.max_queue
        assert row[12] == s.images
        assert (row[13], row[14]) == (len(s.durations), sum(s.durations))
        assert (row[15], row[16]) == (s.first_at, s.last_at)
        assert int(sketches.merge([row[17]]).sum()) == len(s.durations)

    everything = ref.summarize(raw)
    merged = sketches.merge(r[17] for r in hourly)
    if everything.durations:
        for q, got in zip((0.5, 0.95, 0.99), sketches.quantiles(merged, (0.5, 0.95, 0.99)), strict=True):
            want = everything.percentile(q)
            assert want is not None and ref.close(got, want), (q, got, want)
    assert sketches.union_count(r[18] for r in hourly) == len(everything.users)

    models = fetch(
        dsn,
        "SELECT hour, model_checkpoint, total_requests, successful_generations, failed_generations,"
        " cancelled_generations, duration_count, duration_sum, total_images_generated, last_used_at"
        " FROM generation_model_metrics_hourly",
    )
    by_model = ref.group(raw, lambda e: (e.hour, e.model_checkpoint) if e.model_checkpoint else None)
    assert {(r[0], r[1]) for r in models} == set(by_model)
    for row in models:
        s = ref.summarize(by_model[(row[0], row[1])])
        assert row[2:] == (s.total_requests, s.successful, s.failed, s.cancelled, len(s.durations),
                           sum(s.durations), s.images, s.last_at)  # fmt: skip

    errors = fetch(
        dsn,
        "SELECT hour, error_type, failures, duration_count, duration_sum, first_seen, last_seen, sample_messages,"
        " model_counts, user_bitmap FROM generation_error_metrics_hourly",
    )
    by_error = ref.group(raw, lambda e: (e.hour, e.error_type or "") if e.failed else None)
    assert {(r[0], r[1]) for r in errors} == set(by_error)
    for row in errors:
        group = by_error[(row[0], row[1])]
        durations = [e.duration_ms for e in group if e.duration_ms is not None]
        assert row[2:7] == (len(group), len(durations), sum(durations), min(e.timestamp for e in group),
                            max(e.timestamp for e in group))  # fmt: skip
        messages = {e.error_message for e in group if e.error_message}
        assert set(row[7]) <= messages and len(row[7]) == min(5, len(messages))
        assert row[8] == dict(ref.model_counts(group))
        assert sketches.union_count([row[9]]) == len({e.user_id for e in group})

    users = fetch(
        dsn,
        "SELECT user_id::text, hour, total_requests, successful_generations, failed_generations,"
        " cancelled_generations, duration_count, duration_sum, total_images_generated, first_event_at,"
        " last_event_at, error_counts, model_counts, duration_hist FROM generation_user_metrics_hourly",
    )
    by_user = ref.group(raw, lambda e: (e.user_id, e.hour))
    assert {(r[0], r[1]) for r in users} == set(by_user)
    for row in users:
        group = by_user[(row[0], row[1])]
        s = ref.summarize(group)
        assert row[2:11] == (s.total_requests, s.successful, s.failed, s.cancelled, len(s.durations),
                             sum(s.durations), s.images, s.first_at, s.last_at)  # fmt: skip
        assert row[11] == dict(ref.error_counts(group))
        assert row[12] == dict(ref.model_counts(group))
        assert int(sketches.merge([row[13]]).sum()) == len(s.durations)

    running = fetch(
        dsn,
        "SELECT user_id::text, hour, cum_requests, cum_successes, cum_failures, cum_cancellations,"
        " cum_duration_count, cum_duration_sum FROM generation_user_metrics_hourly",
    )
    for row in running:
        s = ref.summarize(e for e in raw if e.user_id == row[0] and e.hour <= row[1])
        assert row[2:] == (s.total_requests, s.successful, s.failed, s.cancelled, len(s.durations),
                           sum(s.durations))  # fmt: skip

    model_days = fetch(
        dsn,
        "SELECT day, model_checkpoint, total_requests, successful_generations, failed_generations,"
        " cancelled_generations, duration_count, duration_sum, total_images_generated, last_used_at, duration_hist"
        " FROM generation_model_metrics_daily",
    )
    by_model_day = ref.group(
        raw, lambda e: (ref.day_of(e.timestamp), e.model_checkpoint) if e.model_checkpoint else None
    )
    assert {(r[0], r[1]) for r in model_days} == set(by_model_day)
    for row in model_days:
        s = ref.summarize(by_model_day[(row[0], row[1])])
        assert row[2:10] == (s.total_requests, s.successful, s.failed, s.cancelled, len(s.durations),
                             sum(s.durations), s.images, s.last_at)  # fmt: skip
        expected_hist = sketches.merge(
            sketches.encode({sketches.bucket_of(d): 1}) for d in s.durations
        )  # the day's durations, bucketed independently
        got_hist = sketches.merge([row[10]])
        assert got_hist.sum() == len(s.durations)
        assert list(got_hist[got_hist.nonzero()]) == list(expected_hist[expected_hist.nonzero()])

    error_days = fetch(
        dsn,
        "SELECT day, error_type, failures, duration_count, duration_sum, first_seen, last_seen, sample_messages,"
        " model_counts, user_bitmap FROM generation_error_metrics_daily",
    )
    by_error_day = ref.group(raw, lambda e: (ref.day_of(e.timestamp), e.error_type or "") if e.failed else None)
    assert {(r[0], r[1]) for r in error_days} == set(by_error_day)
    for row in error_days:
        group = by_error_day[(row[0], row[1])]
        durations = [e.duration_ms for e in group if e.duration_ms is not None]
        assert row[2:7] == (len(group), len(durations), sum(durations), min(e.timestamp for e in group),
                            max(e.timestamp for e in group))  # fmt: skip
        messages = {e.error_message for e in group if e.error_message}
        assert set(row[7]) <= messages and len(row[7]) == min(5, len(messages))
        assert row[8] == dict(ref.model_counts(group))
        assert sketches.union_count([row[9]]) == len({e.user_id for e in group})


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
        "generation_model_metrics_hourly": "hour, model_checkpoint",
        "generation_error_metrics_hourly": "hour, error_type",
        "generation_user_metrics_hourly": "user_id, hour",
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
    aggregators = [Aggregator(pool=pipeline.pool, pipeline=settings.pipeline) for _ in range(2)]
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
    cutoff_now = BASE_HOUR + timedelta(days=settings.pipeline.retention_days, hours=10)

    report = prune(pipeline.pool, replace(settings.pipeline, retention_batch_rows=7), now=cutoff_now)

    remaining = fetch(settings.postgres.dsn, "SELECT min(timestamp), count(*) FROM generation_events")[0]
    assert report.deleted == 200 - remaining[1] > 0
    assert remaining[0] >= BASE_HOUR + timedelta(hours=10)
    assert snapshot(settings.postgres.dsn) == rollups


def test_dirty_hours_past_retention_keep_their_rollups(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    old = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
        days=settings.pipeline.retention_days + 1
    )
    with psycopg.connect(settings.postgres.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO generation_dirty_hours (hour, version) VALUES (%s, 1)", (old,))
    report = pipeline.run_aggregation()
    assert (report.expired, report.hours_aggregated, report.remaining_dirty_hours) == (1, 0, 0)
