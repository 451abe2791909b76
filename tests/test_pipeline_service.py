"""PipelineService over a real channel: status, manual runs, and their input checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pytest
from psycopg import sql

from generation_analytics.v1 import analytics_pb2, events_pb2, pipeline_pb2
from tests.factories import make_event, timestamp
from tests.fix_server import LiveServer
from tests.rollup_check import assert_rollups_match_raw, fetch

HOUR = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)


def record(server: LiveServer, n: int) -> None:
    batch = [make_event(timestamp=HOUR + timedelta(minutes=i % 60)) for i in range(n)]
    reply = server.events.RecordEvents(events_pb2.RecordEventsRequest(events=batch))
    assert reply.accepted_count == n


def test_status_follows_events_through_the_pipeline(live_server: LiveServer) -> None:
    empty = live_server.pipeline.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest())
    assert (empty.stream_length, empty.total_events, empty.total_hours) == (0, 0, 0)

    record(live_server, 25)
    queued = live_server.pipeline.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest())
    assert queued.stream_length == 25
    assert queued.undelivered_entries + queued.pending_entries == 25
    assert 0 <= queued.oldest_untransferred_age_s < 60

    transferred = live_server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
    assert (transferred.read_entries, transferred.inserted, transferred.remaining) == (25, 25, 0)
    stored = live_server.pipeline.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest())
    assert (stored.stream_length, stored.total_events, stored.dirty_hours) == (0, 25, 1)
    assert stored.oldest_untransferred_age_s == 0
    assert stored.last_transfer.processed == 25 and not stored.last_transfer.error
    assert 0 <= stored.seconds_since_latest_event < 60

    aggregated = live_server.pipeline.RunAggregation(pipeline_pb2.RunAggregationRequest())
    assert (aggregated.hours_aggregated, aggregated.remaining_dirty_hours) == (1, 0)
    final = live_server.pipeline.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest())
    assert (final.total_hours, final.dirty_hours) == (1, 0)
    assert final.latest_hourly_metric_at.ToDatetime(tzinfo=UTC) == HOUR
    assert [(d.day, d.hours_with_data) for d in final.hours_with_data] == [(HOUR.date().isoformat(), 1)]
    assert final.last_aggregation.processed == 1


def test_aggregation_of_a_range_recomputes_every_hour_in_it(live_server: LiveServer) -> None:
    record(live_server, 5)
    live_server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
    reply = live_server.pipeline.RunAggregation(
        pipeline_pb2.RunAggregationRequest(
            start_hour=timestamp(HOUR - timedelta(hours=3)), end_hour=timestamp(HOUR + timedelta(hours=1))
        )
    )
    assert (reply.hours_aggregated, reply.remaining_dirty_hours) == (5, 0)


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        (HOUR, None, "end_hour"),
        (None, HOUR, "start_hour"),
        (HOUR, HOUR - timedelta(hours=1), "end_hour"),
        (HOUR - timedelta(days=500), HOUR, "end_hour"),
    ],
)
def test_bad_aggregation_ranges_are_refused(
    live_server: LiveServer, start: datetime | None, end: datetime | None, field: str
) -> None:
    request = pipeline_pb2.RunAggregationRequest()
    if start:
        request.start_hour.CopyFrom(timestamp(start))
    if end:
        request.end_hour.CopyFrom(timestamp(end))
    with pytest.raises(grpc.RpcError) as error:
        live_server.pipeline.RunAggregation(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.value.details() or "")


def aggregate(server: LiveServer) -> pipeline_pb2.RunAggregationResponse:
    server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
    reply: pipeline_pb2.RunAggregationResponse = server.pipeline.RunAggregation(pipeline_pb2.RunAggregationRequest())
    return reply


def test_late_events_on_the_days_around_an_aggregated_day_aggregate(live_server: LiveServer) -> None:
    """The repro of issue 9: D aggregated, then D-1 day and D+1 day arrive; later runs must not stall."""
    day = HOUR.replace(hour=12) - timedelta(days=2)
    request = lambda when: make_event("request", model_checkpoint="sdxl-1.0", timestamp=when)  # noqa: E731
    live_server.events.RecordEvent(events_pb2.RecordEventRequest(event=request(day)))
    assert aggregate(live_server).failed_hours == 0
    batch = [request(day - timedelta(days=1)), request(day + timedelta(days=1))]
    live_server.events.RecordEvents(events_pb2.RecordEventsRequest(events=batch))
    reply = aggregate(live_server)
    assert (reply.hours_aggregated, reply.failed_hours, reply.remaining_dirty_hours) == (2, 0, 0)
    # One accepted event at the far end of retention aggregates as well.
    old = datetime.now(UTC) - timedelta(days=89)
    live_server.events.RecordEvent(events_pb2.RecordEventRequest(event=request(old)))
    assert (aggregate(live_server).failed_hours, aggregate(live_server).remaining_dirty_hours) == (0, 0)
    assert_rollups_match_raw(live_server.settings.postgres.dsn)
    overview = live_server.analytics.GetOverview(analytics_pb2.GetOverviewRequest(days=90))
    assert overview.total_requests == 4


POISON = """
CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.timestamp = {hour} THEN RAISE EXCEPTION 'poisoned hour'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON generation_metrics_hourly FOR EACH ROW EXECUTE FUNCTION poison();
"""


def test_a_failing_hour_is_reported_and_retried_while_the_others_flow(
    live_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = live_server.settings.postgres.dsn
    hours = [HOUR - timedelta(days=days) for days in (0, 1, 3, 6)]
    bad = hours[2]
    with psycopg.connect(dsn, autocommit=True) as conn:  # a real Postgres error, for that hour only
        conn.execute(sql.SQL(POISON).format(hour=sql.Literal(bad)))
    events = [make_event(timestamp=hour + timedelta(minutes=m)) for hour in hours for m in (5, 50)]
    live_server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events))
    reply = aggregate(live_server)
    assert (reply.hours_aggregated, reply.failed_hours, reply.remaining_dirty_hours) == (3, 1, 1)

    status = live_server.pipeline.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest())
    assert status.failing_hours_count == 1
    (failing,) = status.failing_hours
    assert failing.hour.ToDatetime(tzinfo=UTC) == bad and failing.failures == 1
    # What failed and the id to find it in the log; never the database's own text (it may hold values).
    assert failing.last_error.startswith("RaiseException (error id ") and "poisoned" not in failing.last_error
    error_id = failing.last_error.split("error id ")[1].split(";")[0]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records), "the log has the id and details"
    first_retry = failing.next_retry_at.ToDatetime(tzinfo=UTC) - failing.failing_since.ToDatetime(tzinfo=UTC)
    assert first_retry >= timedelta(seconds=4)
    covered = {r[0] for r in fetch(dsn, "SELECT timestamp FROM generation_metrics_hourly")}
    assert covered == set(hours) - {bad}

    # New events keep flowing into the other hours; the bad one waits for its retry time.
    live_server.events.RecordEvents(events_pb2.RecordEventsRequest(events=[make_event(timestamp=hours[0])]))
    reply = aggregate(live_server)
    assert (reply.hours_aggregated, reply.failed_hours, reply.remaining_dirty_hours) == (1, 0, 1)

    # Its retry time comes (time is moved, not slept): it fails again and backs off twice as long.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE generation_dirty_hours SET retry_at = now()")
    assert aggregate(live_server).failed_hours == 1
    (again,) = live_server.pipeline.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest()).failing_hours
    assert again.failures == 2
    assert again.failing_since == failing.failing_since
    second_retry = again.next_retry_at.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
    assert second_retry > first_retry

    # Mended: the next retry succeeds, and nothing is left failing or dirty.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TRIGGER poison ON generation_metrics_hourly")
        conn.execute("UPDATE generation_dirty_hours SET retry_at = now()")
    reply = aggregate(live_server)
    assert (reply.hours_aggregated, reply.failed_hours, reply.remaining_dirty_hours) == (1, 0, 0)
    assert live_server.pipeline.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest()).failing_hours_count == 0
    assert_rollups_match_raw(dsn)
