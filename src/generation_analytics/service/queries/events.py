"""Raw events: ListEvents with filters and keyset pagination, ExportEvents (the same events through a
server-side cursor), and a user's recent activity."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import class_row

from generation_analytics.questions import EventsQuestion, ExportQuestion
from generation_analytics.service.queries.page_tokens import PageTokens, checked_int
from generation_analytics.service.queries.window import Window
from generation_analytics.vocabulary import EventType, Order, Word


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
        # Never a prepared (generic) plan, as for list_events: after five calls psycopg prepares, and on 1M
        # events the generic plan for "a user's latest events" read ~100 ms where the custom one reads 0.3 ms.
        await cur.execute(
            RECENT_ACTIVITY,
            {"user_id": user_id, "start": window.start, "end": window.end, "limit": limit},
            prepare=False,
        )
        return await cur.fetchall()


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


def _position(filters: EventsQuestion) -> Callable[[dict[str, Any], Window], tuple[Any, int]]:
    """Reads a ListEvents token's keyset position: the last row's timestamp (newest) or duration (slowest),
    and its id; both within range (the timestamp inside the token's window)."""

    def read(values: dict[str, Any], window: Window) -> tuple[Any, int]:
        key: Any
        if filters.order is Order.NEWEST:
            key = datetime.fromisoformat(values["k"])
            if key.tzinfo is None or not window.start <= key < window.end:
                raise ValueError("position")
        else:
            key = checked_int(values["k"], 0)
        return key, checked_int(values["i"], 1)

    return read


def events_query(
    window: Window, filters: EventsQuestion | ExportQuestion, *, page_size: int | None, key: Any = None, key_id: int = 0
) -> tuple[sql.Composed, dict[str, Any]]:
    """The statement and parameters of one ListEvents page (also EXPLAINed by bench.list_events_matrix),
    or with `page_size` None of every page at once (an export: no LIMIT)."""
    params: dict[str, Any] = {}
    for name in _FILTER_CLAUSES:
        value = getattr(filters, name)
        if value is not None and value != "":
            params[name] = value.value if isinstance(value, Word) else value
    order_condition, keyset_condition, order_by = _ORDERS[filters.order]
    conditions = [sql.SQL("timestamp >= %(start)s AND timestamp < %(end)s"), sql.SQL(order_condition)]
    conditions += [sql.SQL(clause) for name, clause in _FILTER_CLAUSES.items() if name in params]
    if filters.page_token:
        conditions.append(sql.SQL(keyset_condition))
    query = sql.SQL("SELECT {columns} FROM generation_events WHERE {where} ORDER BY {order} {limit}").format(
        columns=EVENT_COLUMNS,
        where=sql.SQL(" AND ").join(conditions),
        order=sql.SQL(order_by),
        limit=sql.SQL("" if page_size is None else "LIMIT %(limit)s"),
    )
    params.update(start=window.start, end=window.end, key=key, key_id=key_id)
    if page_size is not None:
        params["limit"] = page_size + 1
    return query, params


async def list_events(
    conn: AsyncConnection[Any], window: Window, filters: EventsQuestion, *, page_size: int, tokens: PageTokens
) -> EventPage:
    """A page of the events matching `filters` (checked already), continuing from its page_token."""
    key: Any = None
    key_id = 0
    if filters.page_token:
        window, (key, key_id) = tokens.read(filters.page_token, filters, window.days, _position(filters))
    if filters.order is Order.SLOWEST and filters.event_type not in (None, EventType.COMPLETION):
        return EventPage(events=[], next_page_token="")  # "slowest" lists completions only
    query, params = events_query(window, filters, page_size=page_size, key=key, key_id=key_id)
    async with conn.cursor(row_factory=class_row(EventRecord)) as cur:
        # Never a prepared (generic) plan: which index serves a page depends on the values (a heavy user
        # or a rare error type), and a plan made without them picked a full scan for rare combinations.
        await cur.execute(query, params, prepare=False)
        rows = await cur.fetchall()
    next_token = ""
    if len(rows) > page_size:
        rows = rows[:page_size]
        last = rows[-1]
        key = last.timestamp.isoformat() if filters.order is Order.NEWEST else last.duration_ms
        next_token = tokens.issue(window, filters, {"k": key, "i": last.id})
    return EventPage(events=rows, next_page_token=next_token)


EXPORT_BATCH_ROWS = 2_000  # events per FETCH from the cursor, and at most per ExportEventsResponse
# ...and about this many bytes at most per message: events may carry 4 kB messages and 32 kB of attributes,
# and clients refuse messages over 4 MB by default.
EXPORT_BATCH_BYTES = 1 << 20
_ROW_BYTES = 200  # an event's fixed fields, encoded


def _approximate_bytes(row: EventRecord) -> int:
    return _ROW_BYTES + len(row.error_message or "") + sum(len(k) + len(v) + 4 for k, v in row.attributes.items())


def _split(rows: list[EventRecord], limit_bytes: int) -> list[list[EventRecord]]:
    """`rows` cut into runs of about `limit_bytes` at most (always at least one row each)."""
    parts: list[list[EventRecord]] = []
    start, size = 0, 0
    for i, row in enumerate(rows):
        weight = _approximate_bytes(row)
        if i > start and size + weight > limit_bytes:
            parts.append(rows[start:i])
            start, size = i, 0
        size += weight
    parts.append(rows[start:])
    return parts


async def export_events(
    conn: AsyncConnection[Any], window: Window, filters: ExportQuestion, *, batch_rows: int = EXPORT_BATCH_ROWS
) -> AsyncGenerator[list[EventRecord], None]:
    """Every event matching `filters` (checked already), newest first, `batch_rows` at a time (fewer when
    they hold more than about EXPORT_BATCH_BYTES).

    ListEvents' statement without its LIMIT, read through a server-side cursor (DECLARE ... FETCH
    FORWARD n): the client holds one batch at a time, whatever the count. A cursor lives in a
    transaction, so the export holds one connection and a snapshot until it ends; stopping the
    iteration (a client that cancels) closes the cursor and ends the transaction.
    """
    query, params = events_query(window, filters, page_size=None)
    # Binary results and positional records: twice the rows per second of text rows made by class_row.
    async with conn.transaction(), conn.cursor(name="export_events", binary=True) as cur:
        await cur.execute(query, params)
        while rows := await cur.fetchmany(batch_rows):
            for part in _split([EventRecord(*row) for row in rows], EXPORT_BATCH_BYTES):
                yield part
