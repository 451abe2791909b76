"""ListEvents page tokens against forgery and misuse: signed, bound to filters and window, range-checked.

The repros of issue 12 (a `k` of 2**63, a bracket bomb, a 1970..9999 window, a token reused with another
`days` or another order) and a fuzz test that mutates real tokens byte by byte: every answer is OK or
INVALID_ARGUMENT naming `page_token`, never INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from generation_analytics.v1 import analytics_pb2, events_pb2, pipeline_pb2
from tests.factories import make_event
from tests.fix_server import LiveServer

PREFIX = "/api/v1/analytics/generation"


@pytest.fixture
def paged(live_server: LiveServer) -> LiveServer:
    now = datetime.now(UTC)
    events = [make_event("completion", timestamp=now - timedelta(minutes=i), duration_ms=100 + i) for i in range(9)]
    live_server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events))
    live_server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
    return live_server


def ask(server: LiveServer, **request: Any) -> tuple[grpc.StatusCode, str, analytics_pb2.ListEventsResponse | None]:
    try:
        reply = server.analytics.ListEvents(analytics_pb2.ListEventsRequest(page_size=2, **request), timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", None
    return grpc.StatusCode.OK, "", reply


def first_token(server: LiveServer, **request: Any) -> str:
    code, _, reply = ask(server, **request)
    assert code == grpc.StatusCode.OK and reply is not None and reply.next_page_token
    return reply.next_page_token


def forged(token: str, **changes: Any) -> str:
    """The token with its payload changed and its signature kept (what an attacker can do)."""
    body, _, mac = token.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    encoded = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    return f"{encoded}.{mac}"


def test_paging_through_every_event_works(paged: LiveServer) -> None:
    for order in (analytics_pb2.EVENT_ORDER_NEWEST, analytics_pb2.EVENT_ORDER_SLOWEST):
        seen, token = [], ""
        while True:
            code, _, reply = ask(paged, order=order, page_token=token)
            assert code == grpc.StatusCode.OK and reply is not None
            seen += [e.id for e in reply.events]
            token = reply.next_page_token
            if not token:
                break
        assert len(seen) == len(set(seen)) == 9


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("k = 2**63", lambda t: forged(t, k=2**63)),
        ("bracket bomb", lambda t: base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode()),
        ("1970..9999 window", lambda t: forged(t, s="1970-01-01T00:00:00+00:00", d=2_900_000)),
        ("unsigned", lambda t: t.partition(".")[0]),
        ("garbage", lambda t: "not a token"),
        ("empty signature", lambda t: t.partition(".")[0] + "."),
        ("too long", lambda t: t + "A" * 600),
    ],
)
def test_forged_tokens_are_refused(paged: LiveServer, name: str, make: Any) -> None:
    token = first_token(paged, order=analytics_pb2.EVENT_ORDER_SLOWEST)
    code, details, _ = ask(paged, order=analytics_pb2.EVENT_ORDER_SLOWEST, page_token=make(token))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, name
    assert details.startswith("page_token: not valid"), details


@pytest.mark.parametrize(
    "other",
    [
        {"days": 3},  # issued for days=7 (the default)
        {"order": analytics_pb2.EVENT_ORDER_SLOWEST},
        {"event_type": events_pb2.EVENT_TYPE_COMPLETION},
        {"min_duration_ms": 1},
    ],
)
def test_a_token_is_bound_to_its_filters_days_and_order(paged: LiveServer, other: dict[str, Any]) -> None:
    token = first_token(paged)
    code, details, _ = ask(paged, page_token=token, **other)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "page_token: issued for different filters, order or days"


def test_http_answers_the_same(paged: LiveServer) -> None:
    token = first_token(paged)
    reply = requests.get(f"{paged.http}{PREFIX}/events", params={"page_token": forged(token, i=-1)}, timeout=10)
    assert reply.status_code == 400
    assert reply.json()["error"]["field"] == "page_token"


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_mutated_tokens_get_only_clear_answers(paged: LiveServer, data: st.DataObject) -> None:
    order = data.draw(st.sampled_from([analytics_pb2.EVENT_ORDER_NEWEST, analytics_pb2.EVENT_ORDER_SLOWEST]))
    token = first_token(paged, order=order)
    chars = list(token)
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["replace", "delete", "insert"]))
        at = data.draw(st.integers(0, len(chars) - 1))
        char = data.draw(st.characters(codec="ascii"))
        if action == "replace":
            chars[at] = char
        elif action == "delete" and len(chars) > 1:
            del chars[at]
        else:
            chars.insert(at, char)
    mutated = "".join(chars)
    code, details, _ = ask(paged, order=order, page_token=mutated)
    if mutated == token:
        assert code == grpc.StatusCode.OK
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (mutated, code, details)
        assert details.startswith("page_token"), details
