"""Error groups: the window's failed completions by fingerprint (fingerprints.py), most failures first,
read from the daily rollups (whole UTC days) and the hourly ones (the partial first and last days): per
checkpoint, or over all checkpoints when the question names none; filtered by checkpoint and error type,
paged by a signed keyset token (count, fingerprint)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from generation_analytics.questions import ErrorGroupsQuestion
from generation_analytics.service import sketches
from generation_analytics.service.fingerprints import RULES_VERSION
from generation_analytics.service.queries.page_tokens import PageTokens, checked_int
from generation_analytics.service.queries.window import SPLIT_HOURS, Window, daily_split

CHECKPOINTS_PER_GROUP = 10
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")

# Each filter of the question is a fixed clause with a bound parameter; only the set of clauses varies.
_FILTER_CLAUSES = {
    "model_checkpoint": sql.SQL("model_checkpoint = %(model_checkpoint)s"),
    "error_type": sql.SQL("error_type = %(error_type)s"),
}
_COLUMNS = "fingerprint, error_type, failures, first_seen, last_seen, sample_message, user_bitmap"
# The window's rows per checkpoint: whole UTC days from the daily rollup, its partial first and last days
# from the hourly one.
PER_CHECKPOINT = f"""
SELECT day, {_COLUMNS}, jsonb_build_object(model_checkpoint, failures) AS checkpoint_failures
FROM generation_error_group_metrics_daily
WHERE day >= %(first_day)s AND day <= %(last_day)s AND {{filters}}
UNION ALL
SELECT (hour AT TIME ZONE 'UTC')::date, {_COLUMNS}, jsonb_build_object(model_checkpoint, failures)
FROM generation_error_group_metrics_hourly
WHERE ({SPLIT_HOURS}) AND {{filters}}
"""
# The same over all checkpoints (no checkpoint filter): the totals per group, daily and hourly (one row per
# group and hour instead of one per checkpoint: ~8x fewer rows and user sets for the partial days).
ALL_CHECKPOINTS = f"""
SELECT day, {_COLUMNS}, checkpoint_failures FROM generation_error_group_totals_daily
WHERE day >= %(first_day)s AND day <= %(last_day)s AND {{filters}}
UNION ALL
SELECT (hour AT TIME ZONE 'UTC')::date, {_COLUMNS}, checkpoint_failures FROM generation_error_group_totals_hourly
WHERE ({SPLIT_HOURS}) AND {{filters}}
"""
# The groups of the window, ranked; one page of them after the keyset position, and how many there are.
RANKED_GROUPS = """
WITH groups AS (
    SELECT fingerprint, min(error_type) AS error_type, sum(failures)::bigint AS count,
           min(first_seen) AS first_seen, max(last_seen) AS last_seen
    FROM ({rows}) AS r
    GROUP BY fingerprint
)
SELECT t.total, g.* FROM (SELECT count(*) AS total FROM groups) AS t
LEFT JOIN LATERAL (
    SELECT * FROM groups WHERE {after} ORDER BY count DESC, fingerprint LIMIT %(limit)s
) AS g ON true
"""
AFTER = "(count < %(count)s OR (count = %(count)s AND fingerprint > %(fingerprint)s))"
# The page's groups, one row each: failures per day (the daily trend), the latest message, the user sets of
# their rows (unioned in Python) and failures per checkpoint. Summed here rather than row by row in Python: a
# 30-day page of 50 groups has ~1,900 rows over all checkpoints, ~15,000 per checkpoint (bench.error_groups).
GROUP_DETAILS = """
WITH r AS (
    SELECT fingerprint, day, failures, last_seen, sample_message, user_bitmap, checkpoint_failures FROM ({rows}) AS r
    WHERE fingerprint = ANY(%(keys)s)
)
SELECT d.fingerprint, d.days, d.failures, l.sample_message, u.bitmaps, c.checkpoints, c.failures
FROM (
    SELECT fingerprint, array_agg(day ORDER BY day) AS days, array_agg(failures ORDER BY day) AS failures
    FROM (SELECT fingerprint, day, sum(failures)::bigint AS failures FROM r GROUP BY 1, 2) AS per_day
    GROUP BY 1
) AS d
JOIN (
    SELECT DISTINCT ON (fingerprint) fingerprint, sample_message FROM r
    ORDER BY fingerprint, last_seen DESC, sample_message DESC
) AS l USING (fingerprint)
JOIN (SELECT fingerprint, array_agg(user_bitmap) AS bitmaps FROM r GROUP BY 1) AS u USING (fingerprint)
JOIN (
    SELECT fingerprint, array_agg(checkpoint) AS checkpoints, array_agg(failures) AS failures
    FROM (
        SELECT r.fingerprint, c.key AS checkpoint, sum(c.value::bigint)::bigint AS failures
        FROM r, jsonb_each_text(r.checkpoint_failures) AS c GROUP BY 1, 2
    ) AS per_checkpoint
    GROUP BY 1
) AS c USING (fingerprint)
"""


@dataclass
class ErrorGroupTrendPoint:
    date: str
    count: int


@dataclass
class ErrorGroup:
    fingerprint: str
    error_type: str
    sample_message: str
    count: int
    affected_users: int
    checkpoints: list[str]
    total_checkpoints: int
    first_seen: datetime
    last_seen: datetime
    daily_trend: list[ErrorGroupTrendPoint]


@dataclass
class ErrorGroupPage:
    lookback_days: int
    groups: list[ErrorGroup]
    next_page_token: str
    total_groups: int
    rules_version: int
    window_start: datetime
    window_end: datetime


@dataclass
class _Details:
    bitmaps: list[bytes] = field(default_factory=list)
    checkpoints: Counter[str] = field(default_factory=Counter)
    days: dict[date, int] = field(default_factory=dict)
    sample_message: str = ""


def _position(values: dict[str, Any], window: Window) -> tuple[int, str]:
    """A token's keyset position: the last group's count (>= 1) and fingerprint (16 hex digits)."""
    fingerprint = values["g"]
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise ValueError("position")
    return checked_int(values["k"], 1), fingerprint


def _rows(window: Window, filters: ErrorGroupsQuestion) -> tuple[sql.Composable, dict[str, Any]]:
    """The window's rows (per checkpoint when the question names one, else over all checkpoints) with the
    filters the question sets, and their parameters."""
    params: dict[str, Any] = dict(daily_split(window).params)
    clauses: list[sql.Composable] = [sql.SQL("TRUE")]
    for name, clause in _FILTER_CLAUSES.items():
        value = getattr(filters, name)
        if value:
            params[name] = value
            clauses.append(clause)
    rows = PER_CHECKPOINT if filters.model_checkpoint else ALL_CHECKPOINTS
    return sql.SQL(rows).format(filters=sql.SQL(" AND ").join(clauses)), params


def _group(row: dict[str, Any], details: _Details, dates: list[tuple[date, str]]) -> ErrorGroup:
    """A page's group; `dates` are the window's days with their ISO form (made once per page)."""
    days = details.days
    ranked = sorted(details.checkpoints.items(), key=lambda kv: (-kv[1], kv[0]))
    return ErrorGroup(
        fingerprint=row["fingerprint"],
        error_type=row["error_type"],
        sample_message=details.sample_message,
        count=row["count"],
        affected_users=sketches.union_count(details.bitmaps),
        checkpoints=[name for name, _ in ranked[:CHECKPOINTS_PER_GROUP]],
        total_checkpoints=len(ranked),
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        daily_trend=[ErrorGroupTrendPoint(date=label, count=days.get(d, 0)) for d, label in dates],
    )


async def list_error_groups(
    conn: AsyncConnection[Any],
    window: Window,
    filters: ErrorGroupsQuestion,
    *,
    page_size: int,
    tokens: PageTokens,
) -> ErrorGroupPage:
    """A page of the window's error groups matching `filters` (checked already), after its page_token."""
    after: tuple[int, str] | None = None
    if filters.page_token:
        window, after = tokens.read(filters.page_token, filters, window.days, _position)
    rows_sql, params = _rows(window, filters)
    ranked = sql.SQL(RANKED_GROUPS).format(rows=rows_sql, after=sql.SQL(AFTER if after else "TRUE"))
    params |= {"limit": page_size + 1}
    if after:
        params |= {"count": after[0], "fingerprint": after[1]}
    details: dict[str, _Details] = defaultdict(_Details)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(ranked, params)
        rows = await cur.fetchall()
        total = rows[0]["total"] if rows else 0
        rows = [row for row in rows if row["fingerprint"] is not None]
        page = rows[:page_size]
    if page:
        keys = {"keys": [row["fingerprint"] for row in page]}
        async with conn.cursor(binary=True) as plain:  # binary: the user sets come as bytes, not hex text
            await plain.execute(sql.SQL(GROUP_DETAILS).format(rows=rows_sql), params | keys)
            for key, days, failures, message, bitmaps, checkpoints, counts in await plain.fetchall():
                group = details[key]
                group.days, group.sample_message, group.bitmaps = (
                    dict(zip(days, failures, strict=True)),
                    message,
                    bitmaps,
                )
                group.checkpoints = Counter(dict(zip(checkpoints, counts, strict=True)))
    next_token = ""
    if len(rows) > page_size:
        last = page[-1]
        next_token = tokens.issue(window, filters, {"k": last["count"], "g": last["fingerprint"]})
    dates = [(d, d.isoformat()) for d in window.dates]
    return ErrorGroupPage(
        lookback_days=window.days,
        groups=[_group(row, details[row["fingerprint"]], dates) for row in page],
        next_page_token=next_token,
        total_groups=total,
        rules_version=RULES_VERSION,
        window_start=window.start,
        window_end=window.end,
    )
