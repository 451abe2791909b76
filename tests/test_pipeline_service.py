"""PipelineService over a real channel: status, manual runs, and their input checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from generation_analytics.v1 import events_pb2, pipeline_pb2
from tests.factories import make_event, timestamp
from tests.fix_server import LiveServer

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
