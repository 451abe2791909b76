"""ListTopUsers ranks only the users whose upper bound can still reach the top (queries/users.py): the
answer must be the one ranking every user gives, however far the bounds are from the window's figures.

The events are drawn to make the bounds loose: heavy activity just before the window's start (inside the
first day the daily rows cover), earlier in the month (inside the monthly rows), ahead of the window's end,
across month edges, with ties, and with fewer active users than the limit.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from generation_analytics.service.pipeline.worker import Pipeline
from generation_analytics.service.queries.users import top_users
from generation_analytics.service.queries.window import window
from generation_analytics.service.settings import Settings
from generation_analytics.v1 import events_pb2
from generation_analytics.vocabulary import UserOrder
from tests import reference as ref
from tests.factories import make_event
from tests.fix_pipeline import push
from tests.test_aggregate import reset, transfer_and_aggregate

USERS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(12)]  # more than `probe` users: pruning decides
NOW = datetime.now(UTC)


@st.composite
def offsets(draw: st.DrawFn) -> timedelta:
    """How long before the window's end an event is: near the start of a short window, anywhere in the
    last 40 days, or a few minutes ahead of the hour the window ends in."""
    hours = draw(
        st.one_of(st.integers(20, 28), st.integers(0, 24 * 7 + 2), st.integers(0, 24 * 40), st.integers(-1, -1))
    )
    return timedelta(hours=hours, minutes=draw(st.integers(0, 59)))


@st.composite
def user_events(draw: st.DrawFn, anchor: datetime) -> list[events_pb2.GenerationEvent]:
    user = draw(st.sampled_from(USERS))
    when = anchor + timedelta(hours=1) - draw(offsets())
    kind = draw(st.sampled_from(["request", "completion"]))
    copies = draw(st.integers(1, 4))  # a burst: one user far ahead in one hour
    fields: dict[str, Any] = {"user_id": user, "timestamp": when}
    if kind == "completion":
        fields["duration_ms"] = draw(st.integers(0, 50_000))
    return [make_event(kind, **fields) for _ in range(copies)]


def expected(raw: list[ref.Raw], days: int, at: datetime, limit: int, order: UserOrder) -> list[tuple[str, int]]:
    by_user = ref.group(ref.in_window(raw, days, at), lambda e: e.user_id)

    def figure(user: str) -> int:
        s = ref.summarize(by_user[user])
        return s.total_requests if order is UserOrder.REQUESTS else sum(s.durations)

    return sorted(((u, figure(u)) for u in by_user), key=lambda uf: (-uf[1], uf[0]))[:limit]


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data())
def test_top_users_equal_ranking_every_user(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings, data: st.DataObject
) -> None:
    # The window ends at `anchor`'s hour: now, or up to 30 days ago (so windows cross month edges).
    anchor = NOW - timedelta(hours=data.draw(st.sampled_from([0, 0, 5, 24 * 3, 24 * 12, 24 * 30])))
    batches = data.draw(st.lists(user_events(anchor), min_size=0, max_size=40))
    days = data.draw(st.sampled_from([1, 2, 7, 30]))
    limit = data.draw(st.sampled_from([1, 1, 2, 3]))
    order = data.draw(st.sampled_from([UserOrder.REQUESTS, UserOrder.GPU_TIME]))
    events = [e for batch in batches for e in batch]
    # Aggregated as a live service does, a few passes in time order (the monthly rows' recent days are
    # recorded pass by pass), or out of order (late events shrink them below the truth).
    passes = data.draw(st.integers(1, 5))
    in_order = sorted(events, key=lambda e: e.timestamp.ToDatetime())
    size = -(-len(in_order) // passes) if in_order else 1
    chunks = [in_order[i : i + size] for i in range(0, len(in_order), size)]
    if data.draw(st.booleans(), label="late"):
        chunks.reverse()
    reset(settings, stream_client)
    for chunk in chunks or [[]]:
        push(stream_client, settings.redis.namespace, chunk)
        transfer_and_aggregate(pipeline)

    async def ask(probe: int | None) -> Any:
        async with await psycopg.AsyncConnection.connect(settings.postgres.dsn, autocommit=True) as conn:
            w = window(days, default=days, now=anchor)
            return await top_users(conn, w, limit=limit, order=order, probe=probe)

    answer = asyncio.run(ask(None))
    got = [(u.user_id, u.total_requests if order is UserOrder.REQUESTS else u.gpu_time_ms) for u in answer.users]
    assert got == expected([ref.from_message(e) for e in events], days, anchor, limit, order)
    assert asyncio.run(ask(0)) == answer  # every user computed exactly: the same answer, every field


def test_a_user_busy_before_today_outranks_users_busy_only_today(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    """The bound of a user active yesterday and today must count yesterday: its month-to-date figure
    before today (recorded when today's events arrived) is not what lies before a window starting yesterday."""
    now = datetime.now(UTC)
    w = window(1, default=1, now=now)
    busy, *others = USERS[:4]
    yesterday = [make_event("request", user_id=busy, timestamp=w.start + timedelta(minutes=30)) for _ in range(5)]
    today = [make_event("request", user_id=busy, timestamp=w.end - timedelta(minutes=59))]
    for count, user in enumerate(others, start=2):
        today += [make_event("request", user_id=user, timestamp=w.end - timedelta(minutes=59)) for _ in range(count)]
    reset(settings, stream_client)
    for chunk in (yesterday, today):  # a live service: yesterday aggregated before today's events arrive
        push(stream_client, settings.redis.namespace, chunk)
        transfer_and_aggregate(pipeline)

    async def ask() -> Any:
        async with await psycopg.AsyncConnection.connect(settings.postgres.dsn, autocommit=True) as conn:
            return await top_users(conn, w, limit=1)

    assert [(u.user_id, u.total_requests) for u in asyncio.run(ask()).users] == [(busy, 6)]
