"""The transitions of alert rules, newest first, a page at a time (keyset on the event id).

A page token is the last id of the page before, base64-encoded: it only says where to continue, and any
id a caller could forge names a page of the same events it may read anyway.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from generation_analytics.service.errors import InvalidArgument
from generation_analytics.service.queries.window import bounded
from generation_analytics.vocabulary import AlertState

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1_000
MAX_TOKEN_CHARS = 64


@dataclass(frozen=True)
class AlertEventRecord:
    id: int
    rule_id: int
    rule_name: str
    at: datetime
    from_state: AlertState
    to_state: AlertState
    value: float | None
    threshold: float
    samples: int
    message: str


@dataclass(frozen=True)
class AlertEventPage:
    events: list[AlertEventRecord]
    next_page_token: str


def _token(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"before:{last_id}".encode()).decode().rstrip("=")


def _before(token: str) -> int | None:
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token[:MAX_TOKEN_CHARS] + "=" * (-len(token) % 4)).decode()
        kind, _, number = text.partition(":")
        if kind != "before" or len(token) > MAX_TOKEN_CHARS or not number.isdigit():
            raise ValueError(text)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument("page_token", "not a token this service gave") from None


LIST_EVENTS = """
SELECT e.id, e.rule_id, r.name AS rule_name, e.at, e.from_state, e.to_state, e.value, e.threshold, e.samples,
       e.message
FROM alert_events AS e JOIN alert_rules AS r ON r.id = e.rule_id
WHERE (%(rule_id)s::bigint IS NULL OR e.rule_id = %(rule_id)s)
  AND (%(before)s::bigint IS NULL OR e.id < %(before)s)
ORDER BY e.id DESC
LIMIT %(limit)s
"""


async def list_events(
    conn: AsyncConnection[Any], *, rule_id: int | None, page_size: int | None, page_token: str
) -> AlertEventPage:
    """A page of transitions (of one rule, or of all), newest first."""
    if rule_id is not None and rule_id < 0:
        raise InvalidArgument("rule_id", "must not be negative")
    size = bounded(page_size, default=DEFAULT_PAGE_SIZE, low=1, high=MAX_PAGE_SIZE, field="page_size")
    before = _before(page_token)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(LIST_EVENTS, {"rule_id": rule_id, "before": before, "limit": size + 1})
        rows = await cur.fetchall()
    events = [
        AlertEventRecord(
            **(row | {"from_state": AlertState(row["from_state"]), "to_state": AlertState(row["to_state"])})
        )
        for row in rows[:size]
    ]
    return AlertEventPage(events, _token(events[-1].id) if len(rows) > size else "")
