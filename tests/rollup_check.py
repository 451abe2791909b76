"""Checks that every rollup table, and the answers read from them, equal a brute-force recompute from
generation_events."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from generation_analytics.jsonify import to_jsonable
from generation_analytics.questions import FailuresQuestion, PeakHoursQuestion, TrendsQuestion
from generation_analytics.service import sketches
from generation_analytics.service.api.convert import to_message
from generation_analytics.service.fingerprints import fingerprint
from generation_analytics.service.hours import hour_floor
from generation_analytics.service.queries.failures import failure_analysis
from generation_analytics.service.queries.models import model_performance
from generation_analytics.service.queries.overview import overview, peak_hours, trends
from generation_analytics.service.queries.users import top_users, user_analytics
from generation_analytics.service.queries.window import window
from generation_analytics.v1 import analytics_pb2
from generation_analytics.vocabulary import Interval
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
    uids = dict(fetch(dsn, "SELECT uid, user_id::text FROM generation_users"))
    assert len(set(uids.values())) == len(uids)
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

    # Per UTC day: sums, the merged histogram (every duration counted once) and the day's distinct users.
    by_day = ref.group(raw, lambda e: ref.day_of(e.timestamp))
    days = fetch(
        dsn,
        "SELECT day, total_requests, successful_generations, failed_generations, cancelled_generations,"
        " duration_count, duration_sum, total_images_generated, queue_length_count, queue_length_sum,"
        " max_queue_length, first_event_at, last_event_at, unique_users, duration_hist, user_bitmap"
        " FROM generation_metrics_daily",
    )
    assert {r[0] for r in days} == set(by_day)
    for row in days:
        s = ref.summarize(by_day[row[0]])
        assert row[1:14] == (s.total_requests, s.successful, s.failed, s.cancelled, len(s.durations),
                             sum(s.durations), s.images, len(s.queue_lengths), sum(s.queue_lengths), s.max_queue,
                             s.first_at, s.last_at, len(s.users)), row[0]  # fmt: skip
        assert list(sketches.merge([row[14]])) == list(
            sketches.merge(sketches.encode({sketches.bucket_of(d): 1}) for d in s.durations)
        )
        assert {uids[uid] for uid in sketches.user_set([row[15]])} == s.users

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
        assert {uids[uid] for uid in sketches.user_set([row[9]])} == {e.user_id for e in group}

    quarters = fetch(
        dsn,
        "SELECT quarter, total_requests, successful_generations, failed_generations, cancelled_generations,"
        " duration_count, duration_sum, total_images_generated, queue_length_count, queue_length_sum,"
        " max_queue_length, duration_hist, user_bitmap FROM generation_metrics_quarterly",
    )
    by_quarter = ref.group(raw, lambda e: quarter_of(e.timestamp))
    assert {r[0] for r in quarters} == set(by_quarter)
    for row in quarters:
        s = ref.summarize(by_quarter[row[0]])
        assert row[1:11] == (s.total_requests, s.successful, s.failed, s.cancelled, len(s.durations),
                             sum(s.durations), s.images, len(s.queue_lengths), sum(s.queue_lengths),
                             s.max_queue), row[0]  # fmt: skip
        got_hist = sketches.merge([row[11]])
        want_hist = sketches.merge(sketches.encode({sketches.bucket_of(d): 1}) for d in s.durations)
        assert list(got_hist[got_hist.nonzero()]) == list(want_hist[want_hist.nonzero()])
        assert list(got_hist.nonzero()[0]) == list(want_hist.nonzero()[0])
        assert {uids[uid] for uid in sketches.user_set([row[12]])} == s.users

    mislabelled = fetch(
        dsn,
        "SELECT count(*) FROM generation_events AS e JOIN generation_users AS u USING (uid)"
        " WHERE e.user_id <> u.user_id",
    )
    assert mislabelled == [(0,)], "an event carries another user's uid"
    for row in hourly:  # the hour's user set holds exactly the uids of its users
        assert {uids[uid] for uid in sketches.user_set([row[18]])} == ref.summarize(by_hour[row[0]]).users

    users = fetch(
        dsn,
        "SELECT uid, hour, events, total_requests, successful_generations, failed_generations,"
        " cancelled_generations, duration_count, duration_sum, total_images_generated, first_event_at,"
        " last_event_at, error_counts, model_counts, duration_hist, model_gpu_ms FROM generation_user_metrics_hourly",
    )
    by_user = ref.group(raw, lambda e: (e.user_id, e.hour))
    assert {(uids[r[0]], r[1]) for r in users} == set(by_user)
    for row in users:
        group = by_user[(uids[row[0]], row[1])]
        s = ref.summarize(group)
        assert row[2:12] == (len(group), s.total_requests, s.successful, s.failed, s.cancelled, len(s.durations),
                             sum(s.durations), s.images, s.first_at, s.last_at)  # fmt: skip
        assert row[12] == dict(ref.error_counts(group))
        assert row[13] == dict(ref.model_counts(group))
        assert list(sketches.merge([row[14]])) == list(
            sketches.merge(sketches.encode({sketches.bucket_of(d): 1}) for d in s.durations)
        )
        gpu: dict[str, int] = {}
        for e in group:
            if e.is_completion and e.duration_ms is not None and e.model_checkpoint:
                gpu[e.model_checkpoint] = gpu.get(e.model_checkpoint, 0) + e.duration_ms
        assert row[15] == gpu

    # Running totals restart every UTC month.
    running = fetch(
        dsn,
        "SELECT uid, hour, cum_events, cum_requests, cum_successes, cum_failures, cum_cancellations,"
        " cum_duration_count, cum_duration_sum FROM generation_user_metrics_hourly",
    )
    by_user_month = ref.group(raw, lambda e: (e.user_id, ref.month_of(e.timestamp)))
    for row in running:
        before = [e for e in by_user_month[(uids[row[0]], ref.month_of(row[1]))] if e.hour <= row[1]]
        s = ref.summarize(before)
        assert row[2:] == (len(before), s.total_requests, s.successful, s.failed, s.cancelled, len(s.durations),
                           sum(s.durations)), (uids[row[0]], row[1], row[2:])  # fmt: skip

    months = fetch(
        dsn,
        "SELECT uid, month, user_id::text, events, total_requests, successful_generations, failed_generations,"
        " cancelled_generations, duration_count, duration_sum, last_hour, last_event_at"
        " FROM generation_user_metrics_monthly",
    )
    assert {(uids[r[0]], r[1]) for r in months} == set(by_user_month)
    for row in months:
        group = by_user_month[(uids[row[0]], row[1])]
        s = ref.summarize(group)
        assert row[2:] == (uids[row[0]], len(group), s.total_requests, s.successful, s.failed, s.cancelled,
                           len(s.durations), sum(s.durations), max(e.hour for e in group), s.last_at)  # fmt: skip

    # ListTopUsers' bounds: each of a user's (up to three) recent days is a day of its events in the month,
    # with month-to-date figures before it that never exceed the truth (smaller only after late events).
    recent = fetch(
        dsn, "SELECT uid, month, recent_days, recent_requests, recent_duration FROM generation_user_metrics_monthly"
    )
    for uid, month, days, requests_before, duration_before in recent:
        group = by_user_month[(uids[uid], month)]
        assert len(days) == len(requests_before) == len(duration_before) <= 3 and days == sorted(set(days))
        for day, requests, duration in zip(days, requests_before, duration_before, strict=True):
            assert day in {ref.day_of(e.timestamp) for e in group}
            s = ref.summarize(e for e in group if ref.day_of(e.timestamp) < day)
            assert 0 <= requests <= s.total_requests and 0 <= duration <= sum(s.durations), (uids[uid], day)

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
        assert {uids[uid] for uid in sketches.user_set([row[9]])} == {e.user_id for e in group}

    assert_error_groups_match_raw(dsn, raw, uids)


def assert_error_groups_match_raw(dsn: str, raw: list[ref.Raw], uids: dict[int, str]) -> None:
    """Every failed completion stored with its fingerprint (no other event with one), and the error-group
    rollups equal to the failures grouped by hour (and by UTC day), fingerprint and checkpoint."""
    stored = fetch(
        dsn, "SELECT event_type, success, error_type, error_message, error_fingerprint FROM generation_events"
    )
    for event_type, success, error_type, message, stored_fingerprint in stored:
        failed = event_type == "completion" and success is False
        want = fingerprint(error_type or "", message or "") if failed else None
        assert stored_fingerprint == want, (event_type, success, error_type, message, stored_fingerprint)
    for table, period in (("hourly", lambda e: e.hour), ("daily", lambda e: ref.day_of(e.timestamp))):
        rows = fetch(
            dsn,
            f"SELECT {'hour' if table == 'hourly' else 'day'}, fingerprint, model_checkpoint, error_type, failures,"
            f" first_seen, last_seen, sample_message, user_bitmap FROM generation_error_group_metrics_{table}",
        )
        by_group = ref.group(
            raw,
            lambda e, period=period: (  # type: ignore[misc]
                (period(e), fingerprint(e.error_type or "", e.error_message or ""), e.model_checkpoint or "")
                if e.failed
                else None
            ),
        )
        assert {r[:3] for r in rows} == set(by_group), table
        for row in rows:
            group = by_group[row[:3]]
            latest = max((e.timestamp, e.error_message or "") for e in group)
            assert row[3:8] == (group[0].error_type or "", len(group), min(e.timestamp for e in group),
                                max(e.timestamp for e in group), latest[1]), table  # fmt: skip
            assert {uids[uid] for uid in sketches.user_set([row[8]])} == {e.user_id for e in group}
    for table, period in (("hourly", lambda e: e.hour), ("daily", lambda e: ref.day_of(e.timestamp))):
        totals = fetch(
            dsn,
            f"SELECT {'hour' if table == 'hourly' else 'day'}, fingerprint, error_type, failures, first_seen,"
            f" last_seen, sample_message, user_bitmap, checkpoint_failures FROM generation_error_group_totals_{table}",
        )
        by_period = ref.group(
            raw,
            lambda e, period=period: (  # type: ignore[misc]
                (period(e), fingerprint(e.error_type or "", e.error_message or "")) if e.failed else None
            ),
        )
        assert {r[:2] for r in totals} == set(by_period), table
        for row in totals:
            group = by_period[row[:2]]
            latest = max((e.timestamp, e.error_message or "") for e in group)
            assert row[2:7] == (group[0].error_type or "", len(group), min(e.timestamp for e in group),
                                max(e.timestamp for e in group), latest[1]), table  # fmt: skip
            assert {uids[uid] for uid in sketches.user_set([row[7]])} == {e.user_id for e in group}
            assert row[8] == Counter(e.model_checkpoint or "" for e in group), table


TOP_USERS = 1_000  # the most ListTopUsers answers
LIST = 3  # short lists, so that ranking and the folded rest are checked too


async def _answers(dsn: str, days: int, now: datetime) -> tuple[Any, ...]:
    w = window(days, default=days, now=now)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return (
            await overview(conn, w, pending_events=0),
            await model_performance(conn, w, limit=LIST),
            await failure_analysis(conn, w, limit=LIST),
            await top_users(conn, w, limit=TOP_USERS),
            await user_analytics(conn, raw_users[0], w, limit=LIST) if (raw_users := _some_users(dsn)) else None,
        )


def _some_users(dsn: str) -> list[str]:
    return [row[0] for row in fetch(dsn, "SELECT user_id::text FROM generation_events ORDER BY id DESC LIMIT 1")]


def assert_queries_match_raw(dsn: str, *, days: Sequence[int] = (1, 7, 30, 90)) -> None:
    """The answers that read the daily, monthly and running-total rollups agree with the raw events,
    window by window (late events, month edges and clocks ahead included)."""
    raw = ref.load(dsn)
    now = datetime.now(UTC)
    for d in days:
        answers = asyncio.run(_answers(dsn, d, now))
        if hour_floor(datetime.now(UTC)) != hour_floor(now):
            return  # the hour turned while asking: the windows moved under the reference
        got_overview, got_models, got_failures, got_top, got_user = answers
        window_events = ref.in_window(raw, d, now)
        s = ref.summarize(window_events)
        assert (got_overview.total_requests, got_overview.successful_generations, got_overview.failed_generations,
                got_overview.cancelled_generations, got_overview.unique_users) == (
            s.total_requests, s.successful, s.failed, s.cancelled, len(s.users))  # fmt: skip

        by_model = ref.group(window_events, lambda e: e.model_checkpoint)
        summaries = {name: ref.summarize(group) for name, group in by_model.items()}
        ranking = sorted(summaries, key=lambda n: (-(summaries[n].successful + summaries[n].failed), n))
        assert [m.model_checkpoint for m in got_models.models] == ranking[:LIST], d
        assert got_models.total_models == len(ranking)
        for m in [*got_models.models, *([got_models.others] if got_models.others else [])]:
            group = (
                by_model[m.model_checkpoint]
                if m.model_checkpoint in by_model
                else [e for name in ranking[LIST:] for e in by_model[name]]
            )
            ms = ref.summarize(group)
            assert (m.total_generations, m.successful_generations, m.failed_generations, m.total_images_generated,
                    m.last_used_at) == (ms.successful + ms.failed, ms.successful, ms.failed, ms.images,
                                        ms.last_at), (d, m.model_checkpoint)  # fmt: skip
        assert (got_models.others is None) == (len(ranking) <= LIST)

        failed = [e for e in window_events if e.failed]
        by_error = ref.group(failed, lambda e: e.error_type or "")
        assert (got_failures.total_failures, got_failures.total_completions) == (s.failed, s.successful + s.failed)
        error_ranking = sorted(by_error, key=lambda k: (-len(by_error[k]), k))
        assert [(e.error_type, e.count, e.affected_users) for e in got_failures.error_types] == [
            (k, len(by_error[k]), len({e.user_id for e in by_error[k]})) for k in error_ranking[:LIST]
        ], d
        assert got_failures.total_error_types == len(by_error)
        rest = [e for k in error_ranking[LIST:] for e in by_error[k]]
        others = got_failures.others
        assert (others is None) == (not rest)
        if others is not None:
            assert (others.count, others.first_seen, others.last_seen) == (
                len(rest),
                min(e.timestamp for e in rest),
                max(e.timestamp for e in rest),
            )

        by_user = ref.group(window_events, lambda e: e.user_id)
        want = sorted(by_user, key=lambda u: (-ref.summarize(by_user[u]).total_requests, u))[:TOP_USERS]
        assert [u.user_id for u in got_top.users] == want, d
        for user in got_top.users:
            us = ref.summarize(by_user[user.user_id])
            assert (user.total_requests, user.successful_generations, user.failed_generations,
                    user.last_generation_at) == (us.total_requests, us.successful, us.failed, us.last_at)  # fmt: skip
            assert same(user.avg_duration_ms, us.avg_duration or 0.0)

        if got_user is not None:
            mine = by_user.get(got_user.user_id, [])
            us = ref.summarize(mine)
            assert (got_user.total_requests, got_user.successful_generations, got_user.failed_generations,
                    got_user.cancelled_generations) == (us.total_requests, us.successful, us.failed,
                                                        us.cancelled), d  # fmt: skip
            errors = ref.error_counts(mine)
            ranked_errors = sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))
            assert [(f.error_type, f.count) for f in got_user.failure_breakdown] == ranked_errors[:LIST]
            assert (got_user.total_error_types, got_user.other_failures) == (
                len(errors),
                sum(n for _, n in ranked_errors[LIST:]),
            )


def quarter_of(moment: datetime) -> datetime:
    """The UTC quarter hour a moment falls in."""
    moment = moment.astimezone(UTC)
    return moment.replace(minute=moment.minute // 15 * 15, second=0, microsecond=0)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def check_local_answers(
    raw: Sequence[ref.Raw], zone: ZoneInfo, days: int, at: datetime, answers: dict[str, dict[str, Any]]
) -> None:
    """Daily trends, failure trends, peak hours and heatmap in `zone` (JSON answers, as the gateway
    renders them, keyed "trends", "failures", "peaks") against the raw events asked about at `at`."""
    events = ref.in_window(raw, days, at)
    dates = ref.local_dates(days, at, zone)
    by_day = ref.group(events, lambda e: e.timestamp.astimezone(zone).date())

    trends = answers["trends"]
    assert trends["time_zone"] == zone.key and trends["interval"] == "daily"
    assert [_instant(p["timestamp"]) for p in trends["data_points"]] == [ref.first_instant(d, zone) for d in dates]
    assert trends["total_data_points"] == len(dates)
    for day, point in zip(dates, trends["data_points"], strict=True):
        s = ref.summarize(by_day.get(day, []))
        assert (point["total_requests"], point["successful_generations"], point["failed_generations"],
                point["cancelled_generations"], point["unique_users"], point["total_images_generated"],
                point["max_queue_length"]) == (s.total_requests, s.successful, s.failed, s.cancelled, len(s.users),
                                                s.images, s.max_queue or 0), (zone.key, day)  # fmt: skip
        assert same(point["success_rate"], s.success_rate_pct / 100)
        assert same(point["avg_duration_ms"], s.avg_duration or 0.0)
        assert same(point["avg_queue_length"], s.avg_queue or 0.0)
        for name, q in (("p50_duration_ms", 0.5), ("p95_duration_ms", 0.95), ("p99_duration_ms", 0.99)):
            want = s.percentile(q)
            assert (point[name] == 0) if want is None else ref.close(point[name], want), (zone.key, day, name)

    failures = answers["failures"]
    assert failures["time_zone"] == zone.key
    assert [p["date"] for p in failures["failure_trends"]] == [d.isoformat() for d in dates]
    for day, point in zip(dates, failures["failure_trends"], strict=True):
        s = ref.summarize(by_day.get(day, []))
        assert (point["total_completions"], point["failures"]) == (s.completions, s.failed), (zone.key, day)
        assert same(point["failure_rate"], s.failed / s.completions if s.completions else 0.0)
    whole = ref.summarize(events)
    assert (failures["total_failures"], failures["total_completions"]) == (whole.failed, whole.completions)

    peaks = answers["peaks"]
    expected = ref.local_hours(raw, days, at, zone)
    assert peaks["time_zone"] == zone.key
    assert [p["hour_of_day"] for p in peaks["peak_hours"]] == list(range(24))
    for h, peak in enumerate(peaks["peak_hours"]):
        assert peak["occurrences"] == expected.occurrences[h], (zone.key, h)
        assert peak["total_requests"] == expected.requests[h], (zone.key, h)
        assert same(
            peak["avg_requests"], expected.requests[h] / expected.occurrences[h] if expected.occurrences[h] else 0.0
        )
        assert same(peak["avg_queue_length"], expected.avg_queue[h])
        slack = expected.p95_slack[h] + 1e-6 * max(1.0, expected.avg_p95[h])
        assert abs(peak["avg_p95_duration_ms"] - expected.avg_p95[h]) <= slack, (zone.key, h, peak, expected.avg_p95[h])
    assert sum(p["occurrences"] for p in peaks["peak_hours"]) == days * 24 + 1
    assert len(peaks["heatmap"]) == 7 * 24
    for cell in peaks["heatmap"]:
        slot = (cell["day_of_week"], cell["hour_of_day"])
        occurrences = expected.slot_occurrences.get(slot, 0.0)
        requests = expected.slot_requests.get(slot, 0)
        assert cell["occurrences"] == occurrences, (zone.key, slot)
        assert same(cell["avg_requests"], requests / occurrences if occurrences else 0.0), (zone.key, slot)


async def _local_answers(dsn: str, zone: str, days: int, now: datetime) -> dict[str, dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        w = window(days, default=days, now=now, asked=TrendsQuestion(time_zone=zone))
        daily = await trends(conn, w, interval=Interval.DAILY)
        failures = await failure_analysis(
            conn, window(days, default=days, now=now, asked=FailuresQuestion(time_zone=zone)), limit=LIST
        )
        peaks = await peak_hours(conn, window(days, default=days, now=now, asked=PeakHoursQuestion(time_zone=zone)))
    return {
        "trends": to_jsonable(to_message(daily, analytics_pb2.GetTrendsResponse)),
        "failures": to_jsonable(to_message(failures, analytics_pb2.GetFailureAnalysisResponse)),
        "peaks": to_jsonable(to_message(peaks, analytics_pb2.GetPeakHoursResponse)),
    }


LOCAL_ZONES = ("UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe")


def assert_local_time_matches_raw(
    dsn: str, *, zones: Sequence[str] = LOCAL_ZONES, days: Sequence[int] = (1, 7, 30)
) -> None:
    """Local days, hours of day and the heatmap, in each zone, agree with the raw events (read from the
    hourly and quarter-hour rollups, DST changes and :30/:45 offsets included)."""
    raw = ref.load(dsn)
    now = datetime.now(UTC)
    for zone in zones:
        for d in days:
            answers = asyncio.run(_local_answers(dsn, zone, d, now))
            if hour_floor(datetime.now(UTC)) != hour_floor(now):
                return  # the hour turned while asking: the windows moved under the reference
            check_local_answers(raw, ZoneInfo(zone), d, now, answers)
