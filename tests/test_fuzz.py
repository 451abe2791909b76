"""Fuzzing every RPC and the HTTP gateway: only OK or client-error answers, the server stays up."""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from generation_analytics.service.api.server import SERVICES
from generation_analytics.service.settings import LimitSettings, Settings
from generation_analytics.v1 import events_pb2
from tests.fix_server import LiveServer

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
METHODS: list[MethodDescriptor] = [m for service in SERVICES.values() for m in service.methods]
TEXT = (
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80)
    | st.sampled_from(["", "\x00", str(uuid.uuid4()), str(uuid.uuid4()).upper(), "hourly", "completion"])
    | st.text(alphabet="x", min_size=4_097, max_size=4_200)
)
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1) | st.integers(-10, 10**7)


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return TEXT
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 12)
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        return INT32
    return INT64


def message_of(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Timestamp":
        return st.builds(lambda s, n: cls(seconds=s, nanos=n), INT64 | st.integers(1_700_000_000, 1_900_000_000), INT32)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            fields[field.name] = st.dictionaries(TEXT, TEXT, max_size=40)
        elif field.message_type is not None:
            if depth > 2:
                continue
            inner = message_of(field.message_type, depth + 1)
            fields[field.name] = st.lists(inner, max_size=4) if field.is_repeated else inner
        else:
            fields[field.name] = st.lists(scalar(field), max_size=4) if field.is_repeated else scalar(field)
    return st.fixed_dictionaries({}, optional=fields).map(lambda kwargs: cls(**kwargs))


def call(server: LiveServer, method: MethodDescriptor, payload: bytes) -> grpc.StatusCode:
    stub = server.channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        stub(payload, timeout=30)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code


def rss_mib() -> float:
    """Resident memory of this process (and so of the in-process server) now.

    Not ru_maxrss: that is the peak of the whole process so far, so growth up to an earlier peak
    (the fuzzing before, say) would not show in it at all.
    """
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except FileNotFoundError:  # not Linux
        psutil = pytest.importorskip("psutil")
        return float(psutil.Process().memory_info().rss) / 2**20
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_generated_messages_get_only_client_answers(live_server: LiveServer, method: MethodDescriptor) -> None:
    @hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(request=message_of(method.input_type))
    def fuzz(request: Message) -> None:
        code = call(live_server, method, request.SerializeToString())
        assert code in ALLOWED, (method.name, code, request)

    fuzz()


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_raw_bytes_get_only_client_answers(live_server: LiveServer, data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(METHODS))
    payload = data.draw(st.binary(max_size=300))
    code = call(live_server, method, payload)
    assert code in ALLOWED, (method.name, code, payload)


def test_server_is_healthy_and_memory_bounded_after_fuzzing(live_server: LiveServer) -> None:
    before = rss_mib()
    junk = [bytes([i % 256]) * (i % 700) for i in range(2_000)]
    for i, payload in enumerate(junk):
        call(live_server, METHODS[i % len(METHODS)], payload)
    health = health_pb2_grpc.HealthStub(live_server.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert rss_mib() - before < 200, "2,000 junk calls must not grow the process by hundreds of MiB"


def test_oversized_messages_are_refused(settings: Settings) -> None:
    server = LiveServer(replace(settings, limits=LimitSettings(max_message_bytes=64 * 1024)))
    try:
        big = events_pb2.RecordEventsRequest(events=[events_pb2.GenerationEvent(error_message="x" * 100_000)])
        code = call(server, METHODS[1], big.SerializeToString())
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.close()


PATHS = ["overview", "trends", "users", "models", "failures", "peak-hours", "events", "pipeline/status", "users/x"]


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    path=st.sampled_from(PATHS) | st.text(alphabet="abcz/-.%0123", max_size=20),
    params=st.dictionaries(
        st.sampled_from(["days", "interval", "limit", "user_id", "order", "success", "page_size", "page_token", "x"]),
        st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20),
        max_size=4,
    ),
)
def test_gateway_answers_only_2xx_or_4xx(live_server: LiveServer, path: str, params: dict[str, str]) -> None:
    response = requests.get(f"{live_server.http}/api/v1/analytics/generation/{path}", params=params, timeout=30)
    assert response.status_code < 500, (path, params, response.text)
    assert "error" in response.json() or response.status_code == 200


def test_undecodable_request_is_an_invalid_argument(live_server: LiveServer) -> None:
    overview = next(m for m in METHODS if m.name == "GetOverview")
    assert call(live_server, overview, b"\x08\xff\xff") == grpc.StatusCode.INVALID_ARGUMENT  # truncated varint
    record = next(m for m in METHODS if m.name == "RecordEvent")
    assert call(live_server, record, b"\x0a\x03\x0a\x01\xff") == grpc.StatusCode.INVALID_ARGUMENT  # bad UTF-8
