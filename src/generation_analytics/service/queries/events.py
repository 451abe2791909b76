"""Raw events: ListEvents with filters and keyset pagination, and a user's recent activity."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import class_row

from generation_analytics.questions import EventsQuestion
from generation_analytics.service.errors import InvalidArgument
from generation_analytics.service.queries.window import Window
from generation_analytics.vocabulary import Order, Word


@dataclass
class EventRecord:
    """One row of generation_events, as the seed's raw-row queries return it."""

    id: int
    event_id: str
    event_type: str
    generation_id: str
    user_id: str
    timestamp: datetime
    duration_ms: int | None
    success: bool | None
    error_type: str | None
    error_message: str | None
    model_checkpoint: str | None
    generation_type: str | None
    queue_length: int | None
    queue_wait_time_ms: int | None
    generation_time_ms: int | None
    batch_size: int | None
    image_width: int | None
    image_height: int | None
    prompt_tokens: int | None
    attributes: dict[str, str]
    created_at: datetime


EVENT_COLUMNS = sql.SQL(
    "id, event_id::text AS event_id, event_type, generation_id, user_id::text AS user_id, timestamp, duration_ms,"
    " success, error_type, error_message, model_checkpoint, generation_type, queue_length, queue_wait_time_ms,"
    " generation_time_ms, batch_size, image_width, image_height, prompt_tokens, attributes, created_at"
)

RECENT_ACTIVITY = sql.SQL(
    "SELECT {columns} FROM generation_events"
    " WHERE user_id = %(user_id)s AND timestamp >= %(start)s AND timestamp < %(end)s"
    " ORDER BY timestamp DESC, id DESC LIMIT %(limit)s"
).format(columns=EVENT_COLUMNS)


async def recent_activity(
    conn: AsyncConnection[Any], user_id: str, window: Window, *, limit: int = 20
) -> list[EventRecord]:
    async with conn.cursor(row_factory=class_row(EventRecord)) as cur:
        await cur.execute(
            RECENT_ACTIVITY, {"user_id": user_id, "start": window.start, "end": window.end, "limit": limit}
        )
        return await cur.fetchall()


def _fingerprint(filters: EventsQuestion) -> str:
    """What a page token is bound to: every filter and the order (not the paging fields)."""
    bound = {name: getattr(filters, name) for name in (*_FILTER_CLAUSES, "order")}
    return hashlib.sha256(json.dumps(bound, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class EventPage:
    events: list[EventRecord]
    next_page_token: str


# Each filter of EventsQuestion is a fixed clause with a bound parameter; only the set of clauses varies.
_FILTER_CLAUSES = {
    "user_id": "user_id = %(user_id)s",
    "model_checkpoint": "model_checkpoint = %(model_checkpoint)s",
    "event_type": "event_type = %(event_type)s",
    "success": "success = %(success)s",
    "error_type": "error_type = %(error_type)s",
    "min_duration_ms": "duration_ms >= %(min_duration_ms)s",
}
_ORDERS = {
    # order: (extra condition, keyset condition, ORDER BY)
    Order.NEWEST: ("TRUE", "(timestamp, id) < (%(key)s::timestamptz, %(key_id)s)", "timestamp DESC, id DESC"),
    Order.SLOWEST: (
        "event_type = 'completion' AND duration_ms IS NOT NULL",
        "(duration_ms, id) < (%(key)s::bigint, %(key_id)s)",
        "duration_ms DESC, id DESC",
    ),
}


def _encode_token(window: Window, filters: EventsQuestion, key: Any, key_id: int) -> str:
    payload = {
        "v": 1,
        "s": window.start.isoformat(),
        "e": window.end.isoformat(),
        "f": _fingerprint(filters),
        "k": key.isoformat() if isinstance(key, datetime) else key,
        "i": key_id,
    }
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_token(token: str, filters: EventsQuestion, days: int) -> tuple[Window, Any, int]:
    """The window and keyset position a page token continues from."""
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        window = Window(days=days, start=datetime.fromisoformat(payload["s"]), end=datetime.fromisoformat(payload["e"]))
        key = datetime.fromisoformat(payload["k"]) if filters.order is Order.NEWEST else int(payload["k"])
        key_id = int(payload["i"])
        fingerprint = payload["f"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument("page_token", f"not a token this service issued ({type(exc).__name__})") from None
    if fingerprint != _fingerprint(filters):
        raise InvalidArgument("page_token", "was issued for different filters or order")
    return window, key, key_id


async def list_events(
    conn: AsyncConnection[Any], window: Window, filters: EventsQuestion, *, page_size: int
) -> EventPage:
    """A page of the events matching `filters` (checked already), continuing from its page_token."""
    params: dict[str, Any] = {}
    for name in _FILTER_CLAUSES:
        value = getattr(filters, name)
        if value is not None and value != "":
            params[name] = value.value if isinstance(value, Word) else value
    key: Any = None
    key_id = 0
    page_token = filters.page_token
    if page_token:
        window, key, key_id = decode_token(page_token, filters, window.days)
    order_condition, keyset_condition, order_by = _ORDERS[filters.order]
    conditions = [sql.SQL("timestamp >= %(start)s AND timestamp < %(end)s"), sql.SQL(order_condition)]
    conditions += [sql.SQL(clause) for name, clause in _FILTER_CLAUSES.items() if name in params]
    if page_token:
        conditions.append(sql.SQL(keyset_condition))
    query = sql.SQL("SELECT {columns} FROM generation_events WHERE {where} ORDER BY {order} LIMIT %(limit)s").format(
        columns=EVENT_COLUMNS, where=sql.SQL(" AND ").join(conditions), order=sql.SQL(order_by)
    )
    params.update(start=window.start, end=window.end, key=key, key_id=key_id, limit=page_size + 1)
    async with conn.cursor(row_factory=class_row(EventRecord)) as cur:
        await cur.execute(query, params)
        rows = await cur.fetchall()
    next_token = ""
    if len(rows) > page_size:
        rows = rows[:page_size]
        last = rows[-1]
        next_token = _encode_token(
            window, filters, last.timestamp if filters.order is Order.NEWEST else last.duration_ms, last.id
        )
    return EventPage(events=rows, next_page_token=next_token)
