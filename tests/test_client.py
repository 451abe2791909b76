"""The Python client over a real channel: every call, typed results, one error type with the field."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest

from generation_analytics.client import AnalyticsClient, AnalyticsClientError, build_event
from generation_analytics.v1 import pipeline_pb2
from tests.factories import make_event
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


class LostReplies(grpc.GenericRpcHandler):
    """A real gRPC hop in front of the service that passes every call through, but for the first
    `lose` RecordEvent(s) calls answers UNAVAILABLE *after* the service has recorded the events:
    the reply lost on the way back, as when a connection drops or a deadline passes at the wrong moment."""

    def __init__(self, upstream: grpc.Channel, *, lose: int) -> None:
        self._upstream = upstream
        self._lose = lose
        self._lock = threading.Lock()
        self.attempts = 0

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = details.method
        # Bytes in, bytes out: nothing is decoded on the way.
        forward = self._upstream.unary_unary(method, request_serializer=None, response_deserializer=None)

        def handle(request: bytes, context: grpc.ServicerContext) -> Any:
            reply = forward(request, timeout=10)
            if method.rsplit("/", 1)[1] in {"RecordEvent", "RecordEvents"}:
                with self._lock:
                    self.attempts += 1
                    lost, self._lose = self._lose > 0, self._lose - 1
                if lost:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset after the request was sent")
            return reply

        return grpc.unary_unary_rpc_method_handler(handle)


@pytest.fixture
def lossy(live_server: LiveServer) -> Iterator[Callable[[int], tuple[str, LostReplies]]]:
    """`lossy(n)`: the address of a proxy to the live server that loses the first n recording replies."""
    servers: list[grpc.Server] = []

    def start(lose: int) -> tuple[str, LostReplies]:
        handler = LostReplies(live_server.channel, lose=lose)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", handler

    yield start
    for server in servers:
        server.stop(0)


def stored_rows(live_server: LiveServer, generation_ids: list[str]) -> list[tuple[str, str]]:
    """(generation_id, event_id) of the stored events of these generations, after a transfer."""
    live_server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
    with psycopg.connect(live_server.settings.postgres.dsn) as conn:
        rows = conn.execute(
            "SELECT generation_id, event_id::text FROM generation_events WHERE generation_id = ANY(%s)"
            " ORDER BY generation_id",
            (generation_ids,),
        ).fetchall()
    return [(str(g), str(e)) for g, e in rows]


def test_a_retry_after_a_lost_reply_is_stored_once(
    live_server: LiveServer, lossy: Callable[[int], tuple[str, LostReplies]]
) -> None:
    # The events carry no event_id: the client must choose one before its first attempt, or the
    # service, which recorded that attempt, would give the retry another id and store the event twice.
    address, proxy = lossy(2)
    one = make_event("request", event_id="", generation_id="lost-one")
    batch = [make_event("request", event_id="", generation_id=f"lost-batch-{i}") for i in range(3)]
    with AnalyticsClient(address, timeout_s=10, retries=2, backoff_s=0.01) as client:
        event_id = client.record_event(one)
        reply = client.record_events(batch)
    assert proxy.attempts == 4  # each call: one attempt recorded but answered UNAVAILABLE, one retry
    assert reply.accepted_count == 3
    stored = stored_rows(live_server, ["lost-one", *(e.generation_id for e in batch)])
    assert stored == sorted(
        [("lost-one", event_id), *zip([e.generation_id for e in batch], reply.event_ids, strict=True)]
    )


def test_sending_the_same_event_twice_stores_it_once(live_server: LiveServer, client: AnalyticsClient) -> None:
    # The caller's own retry (say, after the client gave up on UNAVAILABLE) resends the same message.
    event = make_event("request", event_id="", generation_id="twice")
    batch = [make_event("request", event_id="", generation_id=f"twice-{i}") for i in range(2)]
    first = client.record_event(event)
    assert event.event_id == first  # set in place, before the first attempt: documented
    assert client.record_event(event) == first
    ids = list(client.record_events(batch).event_ids)
    assert [e.event_id for e in batch] == ids
    assert list(client.record_events(batch).event_ids) == ids
    stored = stored_rows(live_server, ["twice", "twice-0", "twice-1"])
    assert stored == [("twice", first), ("twice-0", ids[0]), ("twice-1", ids[1])]


def test_an_event_with_an_id_keeps_it(client: AnalyticsClient) -> None:
    event = make_event("request")
    chosen = event.event_id
    assert client.record_event(event) == chosen
    fresh = [make_event("request", event_id=""), make_event("request", event_id="")]
    client.record_events(fresh)
    assert len({uuid.UUID(e.event_id) for e in fresh}) == 2
