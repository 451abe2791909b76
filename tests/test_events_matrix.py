"""ListEvents under every filter combination, both orders, paged to the end, against the raw events.

For each generated set of events, all 64 combinations of the six filters (user, checkpoint, event type,
success, error type, minimum duration) are asked in both orders and paged through with a small page
size; the pages put together must be exactly the matching events of the window, in order, each once.
The events are deliberately odd where the indexes are partial (any event type may carry a success flag,
an error type or a duration) and tie often (shared timestamps and durations), so a wrong index predicate
or a wrong tie-break on a later page shows up as a missing, extra or repeated event.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from generation_analytics.v1 import analytics_pb2, events_pb2, pipeline_pb2
from tests import reference as ref
from tests.factories import make_event
from tests.fix_server import LiveServer
from tests.fix_services import empty_tables

USERS = [str(uuid.UUID(int=i + 11, version=4)) for i in range(3)]
MODELS = ["", "sdxl-1.0", "flux-dev"]
ERRORS = ["", "OutOfMemory", "Timeout"]
DURATIONS = [0, 5, 1_500, 90_000]
KINDS = ["request", "completion", "cancellation"]
TYPES = {"request": events_pb2.EVENT_TYPE_REQUEST, "completion": events_pb2.EVENT_TYPE_COMPLETION,
         "cancellation": events_pb2.EVENT_TYPE_CANCELLATION}  # fmt: skip
FILTERS = ("user_id", "model_checkpoint", "event_type", "success", "error_type", "min_duration_ms")
ORDERS = {"newest": analytics_pb2.EVENT_ORDER_NEWEST, "slowest": analytics_pb2.EVENT_ORDER_SLOWEST}


def now() -> datetime:
    return datetime.now(UTC)


@st.composite
def odd_events(draw: st.DrawFn) -> list[events_pb2.GenerationEvent]:
    """Events over the last ~3 days on a few shared instants (ties), any type carrying any field."""
    current_hour = now().replace(minute=0, second=0, microsecond=0)
    instants = draw(
        st.lists(
            st.builds(
                lambda hours, offset: min(current_hour - timedelta(hours=hours) + offset, now() - timedelta(seconds=1)),
                st.integers(0, 74),
                st.sampled_from([timedelta(0), timedelta(microseconds=1), timedelta(minutes=59, seconds=59)]),
            ),
            min_size=1,
            max_size=6,
        )
    )
    events = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(KINDS))
        event = make_event(
            kind,
            user_id=draw(st.sampled_from(USERS)),
            timestamp=draw(st.sampled_from(instants)),
            model_checkpoint=draw(st.sampled_from(MODELS)),
        )
        success = draw(st.sampled_from([None, True, False]) if kind != "completion" else st.booleans())
        if success is None:
            event.ClearField("success")
        else:
            event.success = success
        duration = draw(st.none() | st.sampled_from(DURATIONS))
        if duration is None:
            event.ClearField("duration_ms")
        else:
            event.duration_ms = duration
        event.error_type = draw(st.sampled_from(ERRORS))
        events.append(event)
    return events


@st.composite
def filter_values(draw: st.DrawFn) -> dict[str, Any]:
    """One value per filter, sometimes one no event has."""
    return {
        "user_id": draw(st.sampled_from([*USERS, str(uuid.UUID(int=99, version=4))])),
        "model_checkpoint": draw(st.sampled_from(["sdxl-1.0", "flux-dev", "kandinsky-3"])),
        "event_type": draw(st.sampled_from(KINDS)),
        "success": draw(st.booleans()),
        "error_type": draw(st.sampled_from(["OutOfMemory", "Timeout", "NSFWFilter"])),
        "min_duration_ms": draw(st.sampled_from([0, 5, 6, 1_500, 90_001])),
    }


def matches(event: ref.Raw, combo: tuple[str, ...], values: dict[str, Any], order: str) -> bool:
    """Plain-Python ListEvents semantics (docs/design.md §3): equality filters, duration at least."""
    if order == "slowest" and not (event.event_type == "completion" and event.duration_ms is not None):
        return False
    checks = {
        "user_id": lambda: event.user_id == values["user_id"],
        "model_checkpoint": lambda: event.model_checkpoint == values["model_checkpoint"],
        "event_type": lambda: event.event_type == values["event_type"],
        "success": lambda: event.success is values["success"],
        "error_type": lambda: event.error_type == values["error_type"],
        "min_duration_ms": lambda: event.duration_ms is not None and event.duration_ms >= values["min_duration_ms"],
    }
    return all(checks[name]() for name in combo)


def request_for(combo: tuple[str, ...], values: dict[str, Any], order: str, days: int) -> dict[str, Any]:
    request: dict[str, Any] = {"days": days, "order": ORDERS[order]}
    for name in combo:
        request[name] = TYPES[values[name]] if name == "event_type" else values[name]
    return request


def list_all(server: LiveServer, page_size: int, request: dict[str, Any]) -> list[events_pb2.StoredEvent] | None:
    """Every page; None when the UTC hour changed while paging (the window moved under the test)."""
    started = now().replace(minute=0, second=0, microsecond=0)
    events: list[events_pb2.StoredEvent] = []
    token = ""
    for _ in range(1_000):
        page = server.analytics.ListEvents(
            analytics_pb2.ListEventsRequest(page_size=page_size, page_token=token, **request)
        )
        assert len(page.events) <= page_size
        assert page.events or not page.next_page_token, "a page with a token must not be empty"
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events if now().replace(minute=0, second=0, microsecond=0) == started else None
    raise AssertionError("paging did not end")


def load(server: LiveServer, redis_url: str, events: list[events_pb2.GenerationEvent]) -> None:
    empty_tables(server.settings.postgres.dsn)
    client = redis.Redis.from_url(redis_url)
    client.delete(server.runtime.keys.stream)
    client.close()
    if events:
        reply = server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events))
        assert reply.accepted_count == len(events), reply.rejections
        server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    events=odd_events(),
    values=filter_values(),
    paging=st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from([1, 2, 3, 50])),
)
def test_every_filter_combination_pages_through_exactly_the_matching_events(
    live_server: LiveServer,
    redis_url: str,
    events: list[events_pb2.GenerationEvent],
    values: dict[str, Any],
    paging: tuple[int, int],
) -> None:
    days, page_size = paging
    load(live_server, redis_url, events)
    sent = {e.event_id: ref.from_message(e) for e in events}
    for n in range(len(FILTERS) + 1):
        for combo in itertools.combinations(FILTERS, n):
            for order in ORDERS:
                at = now()
                got = list_all(live_server, page_size, request_for(combo, values, order, days))
                if got is None:
                    continue
                want = {
                    i for i, e in sent.items() if e in ref.in_window([e], days, at) and matches(e, combo, values, order)
                }
                ids = [e.event.event_id for e in got]
                assert len(ids) == len(set(ids)), (combo, order, "an event on two pages")
                assert set(ids) == want, (combo, order, sorted(set(ids) ^ want))
                keys: list[tuple[Any, int]]
                if order == "newest":
                    keys = [(e.event.timestamp.ToDatetime(tzinfo=UTC), e.id) for e in got]
                else:
                    keys = [(e.event.duration_ms, e.id) for e in got]
                assert all(a > b for a, b in itertools.pairwise(keys)), (combo, order, "not in (key, id) order")
