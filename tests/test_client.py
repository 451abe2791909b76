"""The Python client over a real channel: every call, typed results, one error type with the field."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from generation_analytics.client import AnalyticsClient, AnalyticsClientError, build_event
from tests.fix_server import LiveServer


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[AnalyticsClient]:
    with AnalyticsClient(live_server.address, timeout_s=10) as c:
        yield c


def test_record_and_query_through_the_client(client: AnalyticsClient) -> None:
    user = str(uuid.uuid4())
    when = datetime.now(UTC) - timedelta(minutes=3)
    event_id = client.record_event(
        build_event("completion", timestamp=when, user_id=user, generation_id="g1", success=True, duration_ms=1200,
                    model_checkpoint="sdxl-1.0", image_dimensions=(512, 512), attributes={"k": "v"})
    )  # fmt: skip
    batch = client.record_events(
        [build_event("request", user_id=user, generation_id=f"g{i}", timestamp=when) for i in range(5)]
    )
    assert uuid.UUID(event_id) and batch.accepted_count == 5
    assert client.run_transfer().inserted == 6
    assert client.run_aggregation().remaining_dirty_hours == 0
    assert client.overview(1).total_requests == 5
    assert client.user(user).successful_generations == 1
    assert [m.model_checkpoint for m in client.models().models] == ["sdxl-1.0"]
    assert client.trends(1, "daily").total_data_points == 2
    assert client.failures().total_failures == 0
    assert len(client.peak_hours().peak_hours) == 24
    assert client.top_users(limit=1).users[0].user_id == user
    assert client.pipeline_status().total_events == 6
    everything = list(client.iter_events(page_size=2))
    assert len(everything) == 6
    stored = next(e for e in everything if e.event.event_id == event_id)
    assert stored.event.image_dimensions.width == 512 and dict(stored.event.attributes) == {"k": "v"}
    hour = when.replace(minute=0, second=0, microsecond=0)
    assert client.run_aggregation(hour, hour).hours_aggregated == 1


def test_invalid_argument_carries_the_field(client: AnalyticsClient) -> None:
    with pytest.raises(AnalyticsClientError) as error:
        client.overview(days=0)
    assert error.value.code.name == "INVALID_ARGUMENT"
    assert error.value.field == "days"
    assert not error.value.retryable
    with pytest.raises(AnalyticsClientError) as bad_event:
        client.record_event(build_event("request", user_id="nope", generation_id="g"))
    assert bad_event.value.field == "event.user_id"


def test_unreachable_service_raises_unavailable_after_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = AnalyticsClient(f"127.0.0.1:{port}", timeout_s=1, retries=2, backoff_s=0.01)
    with client, pytest.raises(AnalyticsClientError) as error:
        client.overview()
    assert error.value.code.name == "UNAVAILABLE"
    assert error.value.retryable


def test_build_event_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="event_type"):
        build_event("finished", user_id="u", generation_id="g")
    with pytest.raises(ValueError, match="durations_ms"):
        build_event("completion", user_id="u", generation_id="g", durations_ms=3)
