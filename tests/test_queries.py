"""Every AnalyticsService figure against an independent computation from the events the test sent."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from generation_analytics.service import sketches
from generation_analytics.service.queries.totals import group_quantiles
from generation_analytics.v1 import analytics_pb2, events_pb2, pipeline_pb2
from tests import reference as ref
from tests.factories import make_event
from tests.fix_server import LiveServer
from tests.fix_services import empty_tables

T = TypeVar("T")
USERS = [str(uuid.UUID(int=i + 1, version=4)) for i in range(5)]
MODELS = ["", "sdxl-1.0", "flux-dev"]
ERRORS = ["", "OutOfMemory", "Timeout"]
MESSAGES = ["", "boom", "CUDA OOM", "took too long", "m1", "m2", "m3"]


def now() -> datetime:
    return datetime.now(UTC)


def stable(call: Callable[[], T]) -> tuple[T, datetime]:
    """Call, making sure the UTC hour did not change meanwhile (the window is hour-aligned)."""
    for _ in range(3):
        before = now()
        result = call()
        after = now()
        if before.replace(minute=0, second=0, microsecond=0) == after.replace(minute=0, second=0, microsecond=0):
            return result, before
    raise AssertionError("the hour kept changing")


@st.composite
def events_near_now(draw: st.DrawFn) -> events_pb2.GenerationEvent:
    """Events in the last ~3 days, many right at hour, day and window edges."""
    current_hour = now().replace(minute=0, second=0, microsecond=0)
    hours_back = draw(st.integers(0, 74))
    offset = draw(
        st.sampled_from(
            [timedelta(0), timedelta(microseconds=1), timedelta(minutes=59, seconds=59, microseconds=999_999)]
        )
        | st.timedeltas(timedelta(0), timedelta(minutes=59, seconds=59))
    )
    when = min(current_hour - timedelta(hours=hours_back) + offset, now() - timedelta(seconds=1))
    kind = draw(st.sampled_from(["request", "request", "completion", "completion", "cancellation"]))
    fields: dict[str, Any] = {
        "user_id": draw(st.sampled_from(USERS)),
        "timestamp": when,
        "model_checkpoint": draw(st.sampled_from(MODELS)),
    }
    if kind == "request" and draw(st.booleans()):
        fields["queue_length"] = draw(st.integers(0, 50))
    event = make_event(kind, **fields)
    if kind == "completion":
        event.success = draw(st.booleans())
        duration = draw(st.none() | st.integers(0, 5) | st.integers(0, 600_000))
        if duration is None:
            event.ClearField("duration_ms")
        else:
            event.duration_ms = duration
        batch = draw(st.none() | st.integers(0, 6))
        if batch is not None:
            event.batch_size = batch
        if not event.success:
            event.error_type = draw(st.sampled_from(ERRORS))
            event.error_message = draw(st.sampled_from(MESSAGES))
    return event


def reset(server: LiveServer, redis_url: str) -> None:
    empty_tables(server.settings.postgres.dsn)
    client = redis.Redis.from_url(redis_url)
    client.delete(server.runtime.keys.stream)
    client.close()


def load(server: LiveServer, events: list[events_pb2.GenerationEvent]) -> None:
    reply = server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events))
    assert reply.accepted_count == len(events), reply.rejections
    server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
    assert server.pipeline.RunAggregation(pipeline_pb2.RunAggregationRequest()).remaining_dirty_hours == 0


def approx(got: float, want: float | None, *, rel: float = 1e-9) -> bool:
    want = 0.0 if want is None else want
    return abs(got - want) <= rel * max(abs(want), 1.0)


def check_percentiles(got: list[float], summary: ref.Summary, qs: tuple[float, ...]) -> None:
    for value, q in zip(got, qs, strict=True):
        want = summary.percentile(q)
        if want is None:
            assert value == 0
        else:
            assert ref.close(value, want), (q, value, want)


def check_overview(server: LiveServer, raw: list[ref.Raw], days: int) -> analytics_pb2.GetOverviewResponse:
    reply, at = stable(lambda: server.analytics.GetOverview(analytics_pb2.GetOverviewRequest(days=days)))
    s = ref.summarize(ref.in_window(raw, days, at))
    start, end = ref.window_bounds(days, at)
    assert (reply.window_start.ToDatetime(tzinfo=UTC), reply.window_end.ToDatetime(tzinfo=UTC)) == (start, end)
    assert reply.lookback_days == days
    counts = (reply.total_requests, reply.successful_generations, reply.failed_generations, reply.cancelled_generations)
    assert counts == (s.total_requests, s.successful, s.failed, s.cancelled)
    assert approx(reply.success_rate_pct, s.success_rate_pct)
    assert 0 <= reply.success_rate_pct <= 100
    assert approx(reply.avg_duration_ms, s.avg_duration)
    check_percentiles([reply.p50_duration_ms, reply.p95_duration_ms, reply.p99_duration_ms], s, (0.5, 0.95, 0.99))
    assert reply.unique_users == len(s.users)
    assert reply.total_images_generated == s.images
    assert approx(reply.avg_queue_length, s.avg_queue)
    assert reply.max_queue_length == (s.max_queue or 0)
    assert reply.pending_events == 0
    return reply


def check_trends(
    server: LiveServer, raw: list[ref.Raw], days: int, overview: analytics_pb2.GetOverviewResponse
) -> None:
    hourly, at = stable(
        lambda: server.analytics.GetTrends(
            analytics_pb2.GetTrendsRequest(days=days, interval=analytics_pb2.INTERVAL_HOURLY)
        )
    )
    start, end = ref.window_bounds(days, at)
    assert hourly.total_data_points == len(hourly.data_points) == days * 24 + 1
    by_hour = ref.group(ref.in_window(raw, days, at), lambda e: e.hour)
    for i, point in enumerate(hourly.data_points):
        hour = point.timestamp.ToDatetime(tzinfo=UTC)
        assert hour == start + timedelta(hours=i)
        s = ref.summarize(by_hour.get(hour, []))
        assert (point.total_requests, point.successful_generations, point.failed_generations) == (
            s.total_requests, s.successful, s.failed,
        )  # fmt: skip
        assert point.cancelled_generations == s.cancelled
        assert approx(point.success_rate, s.success_rate_pct / 100) and 0 <= point.success_rate <= 1
        for got, q in ((point.p50_duration_ms, 0.5), (point.p95_duration_ms, 0.95), (point.p99_duration_ms, 0.99)):
            assert approx(got, s.percentile(q), rel=1e-6), "an hour's percentiles are exact"
        assert point.unique_users == len(s.users)
        assert point.total_images_generated == s.images
    assert sum(p.total_requests for p in hourly.data_points) == overview.total_requests
    assert sum(p.failed_generations for p in hourly.data_points) == overview.failed_generations

    daily, at = stable(
        lambda: server.analytics.GetTrends(
            analytics_pb2.GetTrendsRequest(days=days, interval=analytics_pb2.INTERVAL_DAILY)
        )
    )
    by_day = ref.group(ref.in_window(raw, days, at), lambda e: ref.day_of(e.timestamp))
    first_day, last_day = start.date(), (end - timedelta(hours=1)).date()
    assert daily.total_data_points == (last_day - first_day).days + 1
    for i, point in enumerate(daily.data_points):
        day = first_day + timedelta(days=i)
        assert point.timestamp.ToDatetime(tzinfo=UTC) == datetime(day.year, day.month, day.day, tzinfo=UTC)
        s = ref.summarize(by_day.get(day, []))
        assert (point.total_requests, point.successful_generations, point.cancelled_generations) == (
            s.total_requests, s.successful, s.cancelled,
        )  # fmt: skip
        check_percentiles([point.p50_duration_ms, point.p95_duration_ms, point.p99_duration_ms], s, (0.5, 0.95, 0.99))
        assert point.unique_users == len(s.users)
    assert sum(p.successful_generations for p in daily.data_points) == overview.successful_generations


def check_users(server: LiveServer, raw: list[ref.Raw], days: int) -> None:
    for user in [*USERS, str(uuid.uuid4())]:
        request = analytics_pb2.GetUserAnalyticsRequest(user_id=user, days=days)
        reply, at = stable(lambda request=request: server.analytics.GetUserAnalytics(request))  # type: ignore[misc]
        mine = [e for e in ref.in_window(raw, days, at) if e.user_id == user]
        s = ref.summarize(mine)
        assert reply.user_id == user and reply.lookback_days == days
        assert (reply.total_requests, reply.successful_generations, reply.failed_generations) == (
            s.total_requests, s.successful, s.failed,
        )  # fmt: skip
        assert reply.cancelled_generations == s.cancelled
        assert approx(reply.success_rate_pct, s.success_rate_pct)
        assert approx(reply.avg_duration_ms, s.avg_duration)
        check_percentiles([reply.p50_duration_ms, reply.p95_duration_ms], s, (0.5, 0.95))
        assert reply.total_images_generated == s.images
        if mine:
            assert reply.first_generation_at.ToDatetime(tzinfo=UTC) == s.first_at
            assert reply.last_generation_at.ToDatetime(tzinfo=UTC) == s.last_at
        else:
            assert not reply.HasField("first_generation_at") and not reply.HasField("last_generation_at")
        assert {f.error_type: f.count for f in reply.failure_breakdown} == dict(ref.error_counts(mine))
        assert {m.model_checkpoint: m.count for m in reply.models_used} == dict(ref.model_counts(mine))
        counts = [f.count for f in reply.failure_breakdown]
        assert counts == sorted(counts, reverse=True)
        newest = sorted(mine, key=lambda e: e.timestamp, reverse=True)[:20]
        assert [r.event.timestamp.ToDatetime(tzinfo=UTC) for r in reply.recent_activity] == [
            e.timestamp for e in newest
        ]
        assert all(r.event.user_id == user for r in reply.recent_activity)


def check_models(
    server: LiveServer, raw: list[ref.Raw], days: int, overview: analytics_pb2.GetOverviewResponse
) -> None:
    reply, at = stable(
        lambda: server.analytics.GetModelPerformance(analytics_pb2.GetModelPerformanceRequest(days=days))
    )
    by_model = ref.group(ref.in_window(raw, days, at), lambda e: e.model_checkpoint)
    assert {m.model_checkpoint for m in reply.models} == set(by_model)
    for model in reply.models:
        group = by_model[model.model_checkpoint]
        s = ref.summarize(group)
        assert (model.total_generations, model.successful_generations, model.failed_generations) == (
            s.completions, s.successful, s.failed,
        )  # fmt: skip
        assert approx(model.success_rate_pct, s.success_rate_pct)
        assert approx(model.avg_duration_ms, s.avg_duration)
        check_percentiles([model.p50_duration_ms, model.p95_duration_ms, model.p99_duration_ms], s, (0.5, 0.95, 0.99))
        assert model.total_images_generated == s.images
        assert model.last_used_at.ToDatetime(tzinfo=UTC) == s.last_at
    with_checkpoint = ref.summarize(e for e in ref.in_window(raw, days, at) if e.model_checkpoint)
    assert sum(m.successful_generations for m in reply.models) == with_checkpoint.successful
    assert sum(m.failed_generations for m in reply.models) == with_checkpoint.failed
    assert sum(m.successful_generations for m in reply.models) <= overview.successful_generations
    generations = [m.total_generations for m in reply.models]
    assert generations == sorted(generations, reverse=True)


def check_failures(server: LiveServer, raw: list[ref.Raw], days: int) -> None:
    reply, at = stable(lambda: server.analytics.GetFailureAnalysis(analytics_pb2.GetFailureAnalysisRequest(days=days)))
    events = ref.in_window(raw, days, at)
    s = ref.summarize(events)
    assert (reply.total_failures, reply.total_completions) == (s.failed, s.completions)
    assert approx(reply.failure_rate_pct, s.failed / s.completions * 100 if s.completions else 0.0)
    by_error = ref.group(events, lambda e: (e.error_type or "") if e.failed else None)
    assert reply.total_error_types == len(by_error)
    assert {e.error_type: e.count for e in reply.error_types} == {k: len(v) for k, v in by_error.items()}
    for summary in reply.error_types:
        group = by_error[summary.error_type]
        durations = [e.duration_ms for e in group if e.duration_ms is not None]
        assert approx(summary.avg_duration_ms, sum(durations) / len(durations) if durations else 0.0)
        messages = {e.error_message for e in group if e.error_message}
        assert set(summary.sample_messages) <= messages and len(summary.sample_messages) == min(5, len(messages))
        assert summary.affected_users == len({e.user_id for e in group})
        assert set(summary.models) == {e.model_checkpoint for e in group if e.model_checkpoint}
        assert summary.first_seen.ToDatetime(tzinfo=UTC) == min(e.timestamp for e in group)
        assert summary.last_seen.ToDatetime(tzinfo=UTC) == max(e.timestamp for e in group)
    start, end = ref.window_bounds(days, at)
    by_day = ref.group(events, lambda e: ref.day_of(e.timestamp))
    assert [p.date for p in reply.failure_trends] == [
        (start.date() + timedelta(days=i)).isoformat()
        for i in range(((end - timedelta(hours=1)).date() - start.date()).days + 1)
    ]
    for point in reply.failure_trends:
        day = ref.summarize(by_day.get(datetime.fromisoformat(point.date).date(), []))
        assert (point.total_completions, point.failures) == (day.completions, day.failed)
        assert approx(point.failure_rate, day.failed / day.completions if day.completions else 0.0)


def check_peak_hours(server: LiveServer, raw: list[ref.Raw], days: int) -> None:
    reply, at = stable(lambda: server.analytics.GetPeakHours(analytics_pb2.GetPeakHoursRequest(days=days)))
    start, _ = ref.window_bounds(days, at)
    hours = [start + timedelta(hours=i) for i in range(days * 24 + 1)]
    requests = [e for e in ref.in_window(raw, days, at) if e.event_type == "request"]
    assert [p.hour_of_day for p in reply.peak_hours] == list(range(24))
    for peak in reply.peak_hours:
        total = sum(1 for e in requests if e.timestamp.hour == peak.hour_of_day)
        occurrences = sum(1 for h in hours if h.hour == peak.hour_of_day)
        assert peak.total_requests == total
        assert approx(peak.avg_requests, total / occurrences)
    assert len(reply.heatmap) == 7 * 24
    for cell in reply.heatmap:
        matching = [h for h in hours if h.hour == cell.hour_of_day and (h.weekday() + 1) % 7 == cell.day_of_week]
        total = sum(1 for e in requests if e.hour in matching)
        assert approx(cell.avg_requests, total / len(matching) if matching else 0.0)


def check_top_users(server: LiveServer, raw: list[ref.Raw], days: int) -> None:
    reply, at = stable(lambda: server.analytics.ListTopUsers(analytics_pb2.ListTopUsersRequest(days=days, limit=3)))
    by_user = ref.group(ref.in_window(raw, days, at), lambda e: e.user_id)
    ranking = sorted(by_user, key=lambda u: (-ref.summarize(by_user[u]).total_requests, u))[:3]
    assert [u.user_id for u in reply.users] == ranking
    for user in reply.users:
        s = ref.summarize(by_user[user.user_id])
        assert (user.total_requests, user.successful_generations, user.failed_generations) == (
            s.total_requests, s.successful, s.failed,
        )  # fmt: skip
        assert approx(user.avg_duration_ms, s.avg_duration)
        assert user.last_generation_at.ToDatetime(tzinfo=UTC) == s.last_at


def list_all(server: LiveServer, **request: Any) -> list[events_pb2.StoredEvent] | None:
    """Every page of ListEvents; None when the hour changed during paging (the window moved)."""
    events: list[events_pb2.StoredEvent] = []
    token = ""
    started = now().replace(minute=0, second=0, microsecond=0)
    while True:
        page = server.analytics.ListEvents(analytics_pb2.ListEventsRequest(page_size=7, page_token=token, **request))
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events if now().replace(minute=0, second=0, microsecond=0) == started else None


def check_list_events(server: LiveServer, raw: list[ref.Raw], days: int) -> None:
    at = now()
    newest = list_all(server, days=days)
    if newest is None:
        return
    window = ref.in_window(raw, days, at)
    stamps = [e.event.timestamp.ToDatetime(tzinfo=UTC) for e in newest]
    assert sorted(stamps, reverse=True) == stamps
    assert Counter(stamps) == Counter(e.timestamp for e in window)
    assert len({e.id for e in newest}) == len(newest)

    slowest = list_all(server, days=days, order=analytics_pb2.EVENT_ORDER_SLOWEST)
    assert slowest is not None
    durations = [e.event.duration_ms for e in slowest]
    assert durations == sorted(
        (e.duration_ms for e in window if e.is_completion and e.duration_ms is not None), reverse=True
    )

    failed = list_all(server, days=days, event_type=events_pb2.EVENT_TYPE_COMPLETION, success=False, user_id=USERS[0])
    assert failed is not None
    assert len(failed) == sum(1 for e in window if e.failed and e.user_id == USERS[0])


@hypothesis_settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(events=st.lists(events_near_now(), min_size=0, max_size=60), days=st.sampled_from([1, 2, 3]))
def test_every_figure_matches_the_raw_events(
    live_server: LiveServer, redis_url: str, events: list[events_pb2.GenerationEvent], days: int
) -> None:
    reset(live_server, redis_url)
    if events:
        load(live_server, events)
    raw = [ref.from_message(e) for e in events]
    overview = check_overview(live_server, raw, days)
    check_trends(live_server, raw, days, overview)
    check_users(live_server, raw, days)
    check_models(live_server, raw, days, overview)
    check_failures(live_server, raw, days)
    check_peak_hours(live_server, raw, days)
    check_top_users(live_server, raw, days)
    check_list_events(live_server, raw, days)


def test_empty_database_answers_zeros(live_server: LiveServer) -> None:
    overview = live_server.analytics.GetOverview(analytics_pb2.GetOverviewRequest())
    assert overview.lookback_days == 7
    assert overview.total_requests == overview.unique_users == 0
    assert overview.success_rate_pct == overview.p95_duration_ms == overview.avg_queue_length == 0
    trends = live_server.analytics.GetTrends(analytics_pb2.GetTrendsRequest())
    assert trends.total_data_points == 7 * 24 + 1
    assert all(p.total_requests == 0 and p.success_rate == 0 for p in trends.data_points)
    assert live_server.analytics.GetModelPerformance(analytics_pb2.GetModelPerformanceRequest()).models == []
    failures = live_server.analytics.GetFailureAnalysis(analytics_pb2.GetFailureAnalysisRequest())
    assert failures.failure_rate_pct == 0 and len(failures.failure_trends) == 8
    peaks = live_server.analytics.GetPeakHours(analytics_pb2.GetPeakHoursRequest())
    assert len(peaks.peak_hours) == 24 and all(p.avg_requests == 0 for p in peaks.peak_hours)
    assert live_server.analytics.ListTopUsers(analytics_pb2.ListTopUsersRequest()).users == []
    assert live_server.analytics.ListEvents(analytics_pb2.ListEventsRequest()).events == []


UNKNOWN_ENUM: Any = 9  # a value no enum of the contract defines
BAD_REQUESTS: list[tuple[str, Callable[[LiveServer], Any], str]] = [
    ("days zero", lambda s: s.analytics.GetOverview(analytics_pb2.GetOverviewRequest(days=0)), "days"),
    ("days too many", lambda s: s.analytics.GetTrends(analytics_pb2.GetTrendsRequest(days=366)), "days"),
    ("negative days", lambda s: s.analytics.GetPeakHours(analytics_pb2.GetPeakHoursRequest(days=-1)), "days"),
    (
        "unknown interval",
        lambda s: s.analytics.GetTrends(analytics_pb2.GetTrendsRequest(interval=UNKNOWN_ENUM)),
        "interval",
    ),
    (
        "user not a uuid",
        lambda s: s.analytics.GetUserAnalytics(analytics_pb2.GetUserAnalyticsRequest(user_id="bob")),
        "user_id",
    ),
    ("user missing", lambda s: s.analytics.GetUserAnalytics(analytics_pb2.GetUserAnalyticsRequest()), "user_id"),
    ("page too large", lambda s: s.analytics.ListEvents(analytics_pb2.ListEventsRequest(page_size=1001)), "page_size"),
    ("negative page", lambda s: s.analytics.ListEvents(analytics_pb2.ListEventsRequest(page_size=-1)), "page_size"),
    (
        "garbage token",
        lambda s: s.analytics.ListEvents(analytics_pb2.ListEventsRequest(page_token="%%%")),
        "page_token",
    ),
    ("unknown order", lambda s: s.analytics.ListEvents(analytics_pb2.ListEventsRequest(order=UNKNOWN_ENUM)), "order"),
    (
        "unknown event type",
        lambda s: s.analytics.ListEvents(analytics_pb2.ListEventsRequest(event_type=UNKNOWN_ENUM)),
        "event_type",
    ),
    (
        "negative min duration",
        lambda s: s.analytics.ListEvents(analytics_pb2.ListEventsRequest(min_duration_ms=-1)),
        "min_duration_ms",
    ),
    ("bad user filter", lambda s: s.analytics.ListEvents(analytics_pb2.ListEventsRequest(user_id="x")), "user_id"),
    ("limit zero", lambda s: s.analytics.ListTopUsers(analytics_pb2.ListTopUsersRequest(limit=0)), "limit"),
    ("limit too large", lambda s: s.analytics.ListTopUsers(analytics_pb2.ListTopUsersRequest(limit=1001)), "limit"),
    (
        "models days",
        lambda s: s.analytics.GetModelPerformance(analytics_pb2.GetModelPerformanceRequest(days=400)),
        "days",
    ),
    (
        "failures days",
        lambda s: s.analytics.GetFailureAnalysis(analytics_pb2.GetFailureAnalysisRequest(days=0)),
        "days",
    ),
]


@pytest.mark.parametrize(("call", "field"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_parameters_are_refused_naming_the_field(
    live_server: LiveServer, call: Callable[[LiveServer], Any], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        call(live_server)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.value.details() or "").startswith(field)


def test_page_token_is_tied_to_its_filters(live_server: LiveServer) -> None:
    load(live_server, [make_event("request", timestamp=now() - timedelta(minutes=i)) for i in range(5)])
    page = live_server.analytics.ListEvents(analytics_pb2.ListEventsRequest(page_size=2))
    assert page.next_page_token
    with pytest.raises(grpc.RpcError) as error:
        live_server.analytics.ListEvents(
            analytics_pb2.ListEventsRequest(
                page_size=2, page_token=page.next_page_token, order=analytics_pb2.EVENT_ORDER_SLOWEST
            )
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_overview_reports_pending_events_and_freshness(live_server: LiveServer) -> None:
    live_server.events.RecordEvents(events_pb2.RecordEventsRequest(events=[make_event() for _ in range(3)]))
    overview = live_server.analytics.GetOverview(analytics_pb2.GetOverviewRequest())
    assert overview.pending_events == 3
    assert overview.total_requests == 0
    live_server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
    dsn = live_server.settings.postgres.dsn
    # Stored but not aggregated: the hour is dirty, and the figures are as of when it became dirty.
    with psycopg.connect(dsn) as conn:
        [(marked_at,)] = conn.execute("SELECT marked_at FROM generation_dirty_hours").fetchall()
    stale = live_server.analytics.GetOverview(analytics_pb2.GetOverviewRequest())
    assert stale.pending_events == 0
    assert stale.total_requests == 0
    assert stale.data_as_of.ToDatetime(tzinfo=UTC) == marked_at
    # Aggregation ten minutes behind: the figures are ten minutes old, not "now".
    behind_since = marked_at - timedelta(minutes=10)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE generation_dirty_hours SET marked_at = %s", (behind_since,))
    asked_at = now()
    behind = live_server.analytics.GetOverview(analytics_pb2.GetOverviewRequest())
    assert behind.data_as_of.ToDatetime(tzinfo=UTC) == behind_since
    assert behind.data_as_of.ToDatetime(tzinfo=UTC) < asked_at - timedelta(minutes=9)
    live_server.pipeline.RunAggregation(pipeline_pb2.RunAggregationRequest())
    asked_at = now()
    fresh = live_server.analytics.GetOverview(analytics_pb2.GetOverviewRequest())
    answered_at = now()
    assert fresh.successful_generations == 3
    # Nothing dirty any more: the figures are as of the question (a second's slack for the clocks).
    fresh_as_of = fresh.data_as_of.ToDatetime(tzinfo=UTC)
    assert asked_at - timedelta(seconds=1) <= fresh_as_of <= answered_at + timedelta(seconds=1)
    assert fresh_as_of > behind_since + timedelta(minutes=9)


def test_breakdowns_are_ranked_most_frequent_first(live_server: LiveServer) -> None:
    user = str(uuid.uuid4())
    at = now() - timedelta(minutes=2)
    failures = [("Timeout", "flux-dev")] + [("OutOfMemory", "sdxl-1.0")] * 3 + [("NSFW", "sdxl-1.0")] * 2
    load(
        live_server,
        [
            make_event("completion", user_id=user, timestamp=at, success=False, error_type=e, model_checkpoint=m)
            for e, m in failures
        ],
    )
    reply = live_server.analytics.GetUserAnalytics(analytics_pb2.GetUserAnalyticsRequest(user_id=user))
    ranked = [("OutOfMemory", 3), ("NSFW", 2), ("Timeout", 1)]
    assert [(f.error_type, f.count) for f in reply.failure_breakdown] == [
        ("OutOfMemory", 3),
        ("NSFW", 2),
        ("Timeout", 1),
    ]
    assert [(m.model_checkpoint, m.count) for m in reply.models_used] == [("sdxl-1.0", 5), ("flux-dev", 1)]
    analysis = live_server.analytics.GetFailureAnalysis(analytics_pb2.GetFailureAnalysisRequest())
    assert [(e.error_type, e.count) for e in analysis.error_types] == ranked
    models = live_server.analytics.GetModelPerformance(analytics_pb2.GetModelPerformanceRequest())
    assert [m.model_checkpoint for m in models.models] == ["sdxl-1.0", "flux-dev"]


@given(
    groups=st.dictionaries(
        st.integers(0, 40),
        st.lists(st.dictionaries(st.integers(0, 2_000), st.integers(1, 10_000), max_size=40), max_size=4),
        max_size=700,
    ),
    q=st.sampled_from([0.0, 0.5, 0.95, 0.99, 1.0]),
)
def test_group_quantiles_read_each_group_as_sketches_does(groups: dict[int, list[dict[int, int]]], q: float) -> None:
    """Peak hours in a :30/:45 zone read thousands of merged histograms at once; each must equal what
    the one-histogram reading gives."""
    encoded = {key: [sketches.encode(h) for h in hists] for key, hists in groups.items()}
    got = group_quantiles(encoded, q)
    for key, blobs in encoded.items():
        dense = sketches.merge(blobs)
        if not dense.size or not dense.sum():
            assert key not in got
        else:
            assert got[key] == pytest.approx(sketches.quantiles(dense, [q])[0], rel=1e-12)


def test_top_users_at_a_months_last_hour_leave_out_events_ahead_in_the_next_month(
    settings: Any, stream_client: redis.Redis
) -> None:
    """A window ending at a month's end reads that month's rows only: events already stamped in the next
    month (clocks ahead) are outside it and must not be subtracted from it."""
    import asyncio

    from generation_analytics.service.pipeline.worker import Pipeline
    from generation_analytics.service.queries.users import top_users
    from generation_analytics.service.queries.window import window
    from tests.fix_pipeline import push

    today = datetime.now(UTC)
    month_end = datetime(today.year, today.month, 1, tzinfo=UTC) - timedelta(days=1)
    month_end = datetime(month_end.year, month_end.month, 1, tzinfo=UTC)  # 1st of last month: a month ends here
    user = str(uuid.uuid4())
    inside = [make_event("request", user_id=user, timestamp=month_end - timedelta(minutes=120 + m)) for m in (0, 1, 2)]
    ahead = [make_event("request", user_id=user, timestamp=month_end + timedelta(minutes=10 + m)) for m in range(2)]
    push(stream_client, settings.redis.namespace, inside + ahead)
    pipeline = Pipeline.of(settings)
    try:
        pipeline.run_transfer()
        pipeline.run_aggregation()
    finally:
        pipeline.close()

    async def ask() -> Any:
        async with await psycopg.AsyncConnection.connect(settings.postgres.dsn, autocommit=True) as conn:
            return await top_users(conn, window(1, default=1, now=month_end - timedelta(minutes=30)), limit=10)

    answer = asyncio.run(ask())
    assert [(u.user_id, u.total_requests) for u in answer.users] == [(user, 3)]
