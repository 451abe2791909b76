"""Checks that every rollup table equals a brute-force recompute from generation_events."""

from __future__ import annotations

from typing import Any

import psycopg

from generation_analytics.service import sketches
from tests import reference as ref


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
