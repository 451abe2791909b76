"""The rollups of a set of hours that do not depend on users: one row per hour, per quarter hour, per
checkpoint, per error type and per error group and checkpoint, and the daily rows of the last three.

Every function here runs inside the aggregation transaction of `aggregate.py`, on the temp table
`agg_events` (the hours' events, see `create_agg_events`). Hourly rows are replaced as a unit per hour
(the hour's advisory lock is held); daily rows are replaced for exactly the (day, key) pairs whose
hourly rows changed, summed from the hourly rows, under the rollup lock.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import psycopg
from pyroaring import BitMap

from generation_analytics.service import sketches
from generation_analytics.service.fingerprints import fingerprint
from generation_analytics.service.sketches import LOG_GAMMA

Cursor = psycopg.Cursor[Any]

# The hours' events with what every rollup needs: the quarter hour, the duration bucket (see sketches.py)
# of completions with a duration, the images a successful completion produced, and the user's dense id
# (set by transfer; rows stored another way are looked up, see ensure_users).
AGG_EVENTS = """
SELECT date_trunc('hour', e.timestamp) AS hour,
       date_bin('15 minutes', e.timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS quarter,
       e.event_type, e.user_id,
       coalesce(e.uid, (SELECT u.uid FROM generation_users AS u WHERE u.user_id = e.user_id)) AS uid,
       e.timestamp, e.duration_ms, e.success, e.event_type = 'completion' AND e.success = false AS failed,
       coalesce(e.error_type, '') AS error_type, e.error_message, e.error_fingerprint, e.model_checkpoint,
       e.queue_length,
       CASE WHEN e.event_type = 'completion' AND e.success THEN coalesce(e.batch_size, 1) ELSE 0 END AS images,
       CASE WHEN e.event_type = 'completion' AND e.duration_ms IS NOT NULL THEN
           CASE WHEN e.duration_ms <= 0 THEN 0
                ELSE ceil(ln(e.duration_ms::float8) / %(log_gamma)s)::int + 1 END
       END AS bucket
FROM generation_events AS e
WHERE e.timestamp >= %(lo)s AND e.timestamp < %(hi)s AND date_trunc('hour', e.timestamp) = ANY(%(hours)s)
"""
CREATE_AGG_EVENTS = f"CREATE TEMP TABLE agg_events ON COMMIT DROP AS {AGG_EVENTS}"
# One shard of the users (uid modulo the number of shards), for the per-user rollups.
CREATE_SHARD_EVENTS = f"""
CREATE TEMP TABLE agg_events ON COMMIT DROP AS
SELECT * FROM ({AGG_EVENTS}) AS e WHERE e.uid %% %(shards)s = %(shard)s
"""

# Users of rows stored without a uid (before migration 0005, or by hand) get one; committed on its own,
# in user_id order, like transfer does, so no aggregation transaction ever waits on it.
ENSURE_USERS = """
INSERT INTO generation_users (user_id)
SELECT DISTINCT e.user_id FROM generation_events AS e
WHERE e.timestamp >= %(lo)s AND e.timestamp < %(hi)s AND date_trunc('hour', e.timestamp) = ANY(%(hours)s)
  AND e.uid IS NULL
  AND (SELECT u.uid FROM generation_users AS u WHERE u.user_id = e.user_id) IS NULL
ORDER BY 1
ON CONFLICT (user_id) DO NOTHING
"""


# Failed completions of the hours stored without an error group (before migration 0010, or inserted
# another way): transfer computes every other one. Found through the partial index of failures (0008).
SELECT_MISSING_FINGERPRINTS = """
SELECT e.id, e.timestamp, coalesce(e.error_type, ''), coalesce(e.error_message, '') FROM generation_events AS e
WHERE e.timestamp >= %(lo)s AND e.timestamp < %(hi)s AND date_trunc('hour', e.timestamp) = ANY(%(hours)s)
  AND e.success = false AND e.event_type = 'completion' AND e.error_fingerprint IS NULL
"""
# Rows found by their timestamp first (generation_events is partitioned by it and has no index on id alone),
# within the window's bounds so only its days' partitions are planned.
SET_FINGERPRINTS = """
UPDATE generation_events AS e SET error_fingerprint = f.fingerprint
FROM unnest(%(ids)s::bigint[], %(timestamps)s::timestamptz[], %(fingerprints)s::text[]) AS f(id, timestamp, fingerprint)
WHERE e.timestamp >= %(lo)s AND e.timestamp < %(hi)s
  AND e.timestamp = f.timestamp AND e.id = f.id AND e.error_fingerprint IS NULL
"""


def fill_fingerprints(cur: Cursor, params: dict[str, Any]) -> int:
    """Give the hours' failures without an error group theirs, in Python with the rules transfer uses (never
    a second implementation of them in SQL); stored, so each is computed once. Runs under the hours' locks
    of the "hours" part, so no other aggregator updates the same rows meanwhile. Returns how many."""
    cur.execute(SELECT_MISSING_FINGERPRINTS, params)
    rows = cur.fetchall()
    if rows:
        cur.execute(
            SET_FINGERPRINTS,
            {
                "ids": [row[0] for row in rows],
                "timestamps": [row[1] for row in rows],
                "fingerprints": [fingerprint(row[2], row[3]) for row in rows],
                "lo": params["lo"],
                "hi": params["hi"],
            },
        )
    return len(rows)


def ensure_users(conn: psycopg.Connection[Any], params: dict[str, Any]) -> None:
    conn.execute(ENSURE_USERS, params)
    conn.commit()


def create_agg_events(cur: Cursor, params: dict[str, Any]) -> None:
    """The temp table agg_events: the hours' events (of one shard of the users if params has "shard")."""
    cur.execute(CREATE_SHARD_EVENTS if "shard" in params else CREATE_AGG_EVENTS, params | {"log_gamma": LOG_GAMMA})


# A histogram (sketches.py) from (bucket, n) rows: big-endian (int2 bucket, int4 count) pairs.
HIST = "string_agg(int2send(bucket::int2) || int4send(n::int4), ''::bytea ORDER BY bucket)"
# The additive figures every rollup row of agg_events has (docs/design.md §3), as one SQL fragment.
COUNTS = """count(*) FILTER (WHERE event_type = 'request') AS requests,
           count(*) FILTER (WHERE event_type = 'completion' AND success) AS successes,
           count(*) FILTER (WHERE failed) AS failures,
           count(*) FILTER (WHERE event_type = 'cancellation') AS cancellations,
           count(*) FILTER (WHERE bucket IS NOT NULL) AS duration_count,
           coalesce(sum(duration_ms) FILTER (WHERE bucket IS NOT NULL), 0) AS duration_sum"""
DAY_OF_HOUR = "(hour AT TIME ZONE 'UTC')::date"

# The users of each quarter hour: the hour's user set is the union of its quarters' sets.
SELECT_QUARTER_UIDS = "SELECT hour, quarter, array_agg(uid) FROM agg_events GROUP BY hour, quarter"

UPSERT_HOURLY = f"""
INSERT INTO generation_metrics_hourly AS m (
    timestamp, total_requests, successful_generations, failed_generations, cancelled_generations,
    avg_duration_ms, p50_duration_ms, p95_duration_ms, p99_duration_ms, unique_users, avg_queue_length,
    max_queue_length, total_images_generated, duration_count, duration_sum, queue_length_count,
    queue_length_sum, first_event_at, last_event_at, duration_hist, user_bitmap, aggregated_at)
SELECT s.hour, s.requests, s.successes, s.failures, s.cancellations,
       s.avg_duration, s.pcts[1], s.pcts[2], s.pcts[3], u.users, s.avg_queue,
       s.max_queue, s.images, s.duration_count, s.duration_sum, s.queue_count,
       s.queue_sum, s.first_at, s.last_at, coalesce(h.hist, ''::bytea), u.bitmap, now()
FROM (
    SELECT hour,
           {COUNTS},
           avg(duration_ms) FILTER (WHERE bucket IS NOT NULL)::float8 AS avg_duration,
           percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms)
               FILTER (WHERE bucket IS NOT NULL) AS pcts,
           avg(queue_length) FILTER (WHERE event_type = 'request')::float8 AS avg_queue,
           max(queue_length) FILTER (WHERE event_type = 'request') AS max_queue,
           sum(images) AS images,
           count(queue_length) FILTER (WHERE event_type = 'request') AS queue_count,
           coalesce(sum(queue_length) FILTER (WHERE event_type = 'request'), 0) AS queue_sum,
           min(timestamp) AS first_at, max(timestamp) AS last_at
    FROM agg_events GROUP BY hour
) AS s
JOIN unnest(%(set_hours)s::timestamptz[], %(sets)s::bytea[], %(set_sizes)s::int[]) AS u(hour, bitmap, users)
    USING (hour)
LEFT JOIN (
    SELECT hour, {HIST} AS hist
    FROM (SELECT hour, bucket, count(*) AS n FROM agg_events WHERE bucket IS NOT NULL GROUP BY 1, 2) AS b
    GROUP BY hour
) AS h USING (hour)
ON CONFLICT (timestamp) DO UPDATE SET
    total_requests = EXCLUDED.total_requests, successful_generations = EXCLUDED.successful_generations,
    failed_generations = EXCLUDED.failed_generations, cancelled_generations = EXCLUDED.cancelled_generations,
    avg_duration_ms = EXCLUDED.avg_duration_ms, p50_duration_ms = EXCLUDED.p50_duration_ms,
    p95_duration_ms = EXCLUDED.p95_duration_ms, p99_duration_ms = EXCLUDED.p99_duration_ms,
    unique_users = EXCLUDED.unique_users, avg_queue_length = EXCLUDED.avg_queue_length,
    max_queue_length = EXCLUDED.max_queue_length, total_images_generated = EXCLUDED.total_images_generated,
    duration_count = EXCLUDED.duration_count, duration_sum = EXCLUDED.duration_sum,
    queue_length_count = EXCLUDED.queue_length_count, queue_length_sum = EXCLUDED.queue_length_sum,
    first_event_at = EXCLUDED.first_event_at, last_event_at = EXCLUDED.last_event_at,
    duration_hist = EXCLUDED.duration_hist, user_bitmap = EXCLUDED.user_bitmap, aggregated_at = EXCLUDED.aggregated_at
"""
DELETE_EMPTY_HOURLY = """
DELETE FROM generation_metrics_hourly AS m
WHERE m.timestamp = ANY(%(hours)s) AND NOT EXISTS (SELECT 1 FROM agg_events AS a WHERE a.hour = m.timestamp)
"""


# Quarter-hour rows: the figures that add up, the duration histogram and the user set, replaced with
# the hours they belong to (local days and hours of day in any zone, see queries/local_time.py).
DELETE_QUARTERS = """
DELETE FROM generation_metrics_quarterly AS q
USING unnest(%(hours)s::timestamptz[]) AS h(hour)
WHERE q.quarter >= h.hour AND q.quarter < h.hour + interval '1 hour'
"""
INSERT_QUARTERS = f"""
INSERT INTO generation_metrics_quarterly (
    quarter, total_requests, successful_generations, failed_generations, cancelled_generations,
    duration_count, duration_sum, total_images_generated, queue_length_count, queue_length_sum,
    max_queue_length, duration_hist, user_bitmap)
SELECT s.quarter, s.requests, s.successes, s.failures, s.cancellations, s.duration_count, s.duration_sum,
       s.images, s.queue_count, s.queue_sum, s.max_queue, coalesce(h.hist, ''::bytea), u.bitmap
FROM (
    SELECT quarter,
           {COUNTS},
           sum(images) AS images,
           count(queue_length) FILTER (WHERE event_type = 'request') AS queue_count,
           coalesce(sum(queue_length) FILTER (WHERE event_type = 'request'), 0) AS queue_sum,
           max(queue_length) FILTER (WHERE event_type = 'request') AS max_queue
    FROM agg_events GROUP BY quarter
) AS s
JOIN unnest(%(set_quarters)s::timestamptz[], %(quarter_sets)s::bytea[]) AS u(quarter, bitmap) USING (quarter)
LEFT JOIN (
    SELECT quarter, {HIST} AS hist
    FROM (SELECT quarter, bucket, count(*) AS n FROM agg_events WHERE bucket IS NOT NULL GROUP BY 1, 2) AS b
    GROUP BY quarter
) AS h USING (quarter)
"""


def write_hourly(cur: Cursor, params: dict[str, Any]) -> None:
    """generation_metrics_hourly for the hours (the seed's table): exact percentiles, the hour's user set;
    and generation_metrics_quarterly, the same figures (but percentiles) per quarter hour."""
    cur.execute(SELECT_QUARTER_UIDS)
    by_hour: dict[Any, list[BitMap]] = {}
    quarters, quarter_sets = [], []
    for hour, quarter, uids in cur.fetchall():
        users = BitMap(uid for uid in uids if uid is not None)
        by_hour.setdefault(hour, []).append(users)
        quarters.append(quarter)
        quarter_sets.append(sketches.serialize(users))
    hours, sets, sizes = [], [], []
    for hour, parts in by_hour.items():
        users = BitMap.union(*parts)
        hours.append(hour)
        sets.append(sketches.serialize(users))
        sizes.append(len(users))
    cur.execute(UPSERT_HOURLY, params | {"set_hours": hours, "sets": sets, "set_sizes": sizes})
    cur.execute(DELETE_EMPTY_HOURLY, params)
    cur.execute(DELETE_QUARTERS, params)
    cur.execute(INSERT_QUARTERS, params | {"set_quarters": quarters, "quarter_sets": quarter_sets})


# The (day, key) pairs whose hourly rows change: the keys of the rows replaced and of the new rows.
CREATE_TOUCHED = """
CREATE TEMP TABLE touched_days (kind text, day date, key text) ON COMMIT DROP
"""
DELETE_MODEL_ROWS = f"""
WITH old AS (
    DELETE FROM generation_model_metrics_hourly WHERE hour = ANY(%(hours)s::timestamptz[])
    RETURNING hour, model_checkpoint
)
INSERT INTO touched_days SELECT DISTINCT 'model', {DAY_OF_HOUR}, model_checkpoint FROM old
"""
INSERT_MODEL_ROWS = f"""
WITH new AS (
    INSERT INTO generation_model_metrics_hourly (
        hour, model_checkpoint, total_requests, successful_generations, failed_generations, cancelled_generations,
        duration_count, duration_sum, total_images_generated, last_used_at, duration_hist)
    SELECT s.hour, s.model_checkpoint, s.requests, s.successes, s.failures, s.cancellations,
           s.duration_count, s.duration_sum, s.images, s.last_at, coalesce(h.hist, ''::bytea)
    FROM (
        SELECT hour, model_checkpoint,
               {COUNTS},
               sum(images) AS images, max(timestamp) AS last_at
        FROM agg_events WHERE model_checkpoint IS NOT NULL GROUP BY 1, 2
    ) AS s
    LEFT JOIN (
        SELECT hour, model_checkpoint,
               {HIST} AS hist
        FROM (SELECT hour, model_checkpoint, bucket, count(*) AS n FROM agg_events
              WHERE bucket IS NOT NULL AND model_checkpoint IS NOT NULL GROUP BY 1, 2, 3) AS b
        GROUP BY 1, 2
    ) AS h USING (hour, model_checkpoint)
    RETURNING hour, model_checkpoint
)
INSERT INTO touched_days SELECT DISTINCT 'model', {DAY_OF_HOUR}, model_checkpoint FROM new
"""

DELETE_ERROR_ROWS = f"""
WITH old AS (
    DELETE FROM generation_error_metrics_hourly WHERE hour = ANY(%(hours)s::timestamptz[])
    RETURNING hour, error_type
)
INSERT INTO touched_days SELECT DISTINCT 'error', {DAY_OF_HOUR}, error_type FROM old
"""
SELECT_ERROR_UIDS = "SELECT hour, error_type, array_agg(uid) FROM agg_events WHERE failed GROUP BY 1, 2"
INSERT_ERROR_ROWS = f"""
WITH new AS (
    INSERT INTO generation_error_metrics_hourly (
        hour, error_type, failures, duration_count, duration_sum, first_seen, last_seen, sample_messages,
        model_counts, user_bitmap)
    SELECT s.hour, s.error_type, s.failures, s.duration_count, s.duration_sum, s.first_seen, s.last_seen,
           s.samples, coalesce(m.model_counts, '{{}}'::jsonb), coalesce(u.bitmap, ''::bytea)
    FROM (
        SELECT hour, error_type, count(*) AS failures,
               count(duration_ms) AS duration_count, coalesce(sum(duration_ms), 0) AS duration_sum,
               min(timestamp) AS first_seen, max(timestamp) AS last_seen,
               coalesce((array_agg(DISTINCT error_message) FILTER (WHERE error_message IS NOT NULL))[1:5], '{{}}')
                   AS samples
        FROM agg_events WHERE failed GROUP BY 1, 2
    ) AS s
    LEFT JOIN (
        SELECT hour, error_type, jsonb_object_agg(model_checkpoint, n) AS model_counts
        FROM (SELECT hour, error_type, model_checkpoint, count(*) AS n FROM agg_events
              WHERE failed AND model_checkpoint IS NOT NULL GROUP BY 1, 2, 3) AS c
        GROUP BY 1, 2
    ) AS m USING (hour, error_type)
    LEFT JOIN unnest(%(set_hours)s::timestamptz[], %(set_keys)s::text[], %(sets)s::bytea[])
        AS u(hour, error_type, bitmap) USING (hour, error_type)
    RETURNING hour, error_type
)
INSERT INTO touched_days SELECT DISTINCT 'error', {DAY_OF_HOUR}, error_type FROM new
"""


# Error groups: failures per hour, fingerprint and checkpoint ('' for none). The sample is the message of
# the latest failure ('' when it has none; at equal times the greatest text), so that a window's sample,
# the sample of its latest row, is the message of the window's latest failure.
# Their (day, key) pairs go to touched_days as kind 'group', key = fingerprint || model_checkpoint (a
# fingerprint is always 16 characters: `fingerprints.fingerprint`), for the daily rows.
GROUP_KEY = "fingerprint || model_checkpoint"
DELETE_GROUP_ROWS = f"""
WITH old AS (
    DELETE FROM generation_error_group_metrics_hourly WHERE hour = ANY(%(hours)s::timestamptz[])
    RETURNING hour, {GROUP_KEY} AS key
)
INSERT INTO touched_days SELECT DISTINCT 'group', {DAY_OF_HOUR}, key FROM old
"""
SELECT_GROUP_UIDS = """
SELECT hour, error_fingerprint, coalesce(model_checkpoint, ''), array_agg(uid) FROM agg_events
WHERE failed GROUP BY 1, 2, 3
"""
INSERT_GROUP_ROWS = f"""
WITH new AS (
    INSERT INTO generation_error_group_metrics_hourly (
        hour, fingerprint, model_checkpoint, error_type, failures, first_seen, last_seen, sample_message, user_bitmap)
    SELECT s.hour, s.fingerprint, s.model_checkpoint, s.error_type, s.failures, s.first_seen, s.last_seen,
           m.message, coalesce(u.bitmap, ''::bytea)
    FROM (
        SELECT hour, error_fingerprint AS fingerprint, coalesce(model_checkpoint, '') AS model_checkpoint,
               min(error_type) AS error_type, count(*) AS failures, min(timestamp) AS first_seen,
               max(timestamp) AS last_seen
        FROM agg_events WHERE failed GROUP BY 1, 2, 3
    ) AS s
    JOIN (
        SELECT DISTINCT ON (hour, error_fingerprint, coalesce(model_checkpoint, ''))
               hour, error_fingerprint AS fingerprint, coalesce(model_checkpoint, '') AS model_checkpoint,
               coalesce(error_message, '') AS message
        FROM agg_events WHERE failed
        ORDER BY hour, error_fingerprint, coalesce(model_checkpoint, ''), timestamp DESC,
                 coalesce(error_message, '') DESC
    ) AS m USING (hour, fingerprint, model_checkpoint)
    LEFT JOIN unnest(
        %(set_hours)s::timestamptz[], %(set_keys)s::text[], %(set_models)s::text[], %(sets)s::bytea[]
    ) AS u(hour, fingerprint, model_checkpoint, bitmap) USING (hour, fingerprint, model_checkpoint)
    RETURNING hour, {GROUP_KEY} AS key
)
INSERT INTO touched_days SELECT DISTINCT 'group', {DAY_OF_HOUR}, key FROM new
"""


# Error groups over all checkpoints per hour, merged from the hourly rows per checkpoint of the same hours.
SELECT_GROUP_HOUR_SETS = """
SELECT hour, fingerprint, user_bitmap FROM generation_error_group_metrics_hourly
WHERE hour = ANY(%(hours)s::timestamptz[])
"""
DELETE_GROUP_HOUR_TOTALS = "DELETE FROM generation_error_group_totals_hourly WHERE hour = ANY(%(hours)s::timestamptz[])"


def _insert_group_totals(*, table: str, period: str, rows: str, sets: str) -> str:
    """Error groups over all checkpoints per `period` (hour or day) into `table`, merged from `rows` (rows per
    checkpoint of the periods replaced); the user sets, unioned in Python, come as the arrays `sets`."""
    return f"""
WITH periods AS ({rows})
INSERT INTO {table} (
    {period}, fingerprint, error_type, failures, first_seen, last_seen, sample_message, user_bitmap,
    checkpoint_failures)
SELECT s.{period}, s.fingerprint, s.error_type, s.failures, s.first_seen, s.last_seen, m.sample_message,
       coalesce(x.bitmap, ''::bytea), s.checkpoint_failures
FROM (
    SELECT {period}, fingerprint, min(error_type) AS error_type, sum(failures) AS failures,
           min(first_seen) AS first_seen, max(last_seen) AS last_seen,
           jsonb_object_agg(model_checkpoint, failures) AS checkpoint_failures
    FROM periods GROUP BY 1, 2
) AS s
JOIN (
    SELECT DISTINCT ON ({period}, fingerprint) {period}, fingerprint, sample_message FROM periods
    ORDER BY {period}, fingerprint, last_seen DESC, sample_message DESC
) AS m USING ({period}, fingerprint)
LEFT JOIN unnest({sets}) AS x({period}, fingerprint, bitmap) USING ({period}, fingerprint)
"""


INSERT_GROUP_HOUR_TOTALS = _insert_group_totals(
    table="generation_error_group_totals_hourly",
    period="hour",
    rows="SELECT * FROM generation_error_group_metrics_hourly WHERE hour = ANY(%(hours)s::timestamptz[])",
    sets="%(set_hours)s::timestamptz[], %(set_keys)s::text[], %(sets)s::bytea[]",
)


def write_error_groups(cur: Cursor, params: dict[str, Any]) -> None:
    """Hourly rows per error group and checkpoint, replaced with their hours (fill_fingerprints first), and
    per error group over all checkpoints; records the (day, key) pairs they touched (after write_dimensions,
    which creates touched_days)."""
    cur.execute(SELECT_GROUP_UIDS)
    hours, keys, models, sets = [], [], [], []
    for hour, key, model, uids in cur.fetchall():
        hours.append(hour)
        keys.append(key)
        models.append(model)
        sets.append(sketches.bitmap_of(uid for uid in uids if uid is not None))
    cur.execute(DELETE_GROUP_ROWS, params)
    cur.execute(INSERT_GROUP_ROWS, params | {"set_hours": hours, "set_keys": keys, "set_models": models, "sets": sets})
    write_group_hour_totals(cur, params["hours"])


# The failures per checkpoint of every daily total, from the daily rows per checkpoint (migration 0017).
FILL_TOTAL_DAY_CHECKPOINTS = """
UPDATE generation_error_group_totals_daily AS t
SET checkpoint_failures = c.failures
FROM (
    SELECT day, fingerprint, jsonb_object_agg(model_checkpoint, failures) AS failures
    FROM generation_error_group_metrics_daily GROUP BY 1, 2
) AS c
WHERE t.day = c.day AND t.fingerprint = c.fingerprint
"""


def write_group_hour_totals(cur: Cursor, hours: list[datetime]) -> None:
    """Replace generation_error_group_totals_hourly's rows of `hours` with their rows per checkpoint merged
    (an hour without such rows keeps none)."""
    cur.execute(SELECT_GROUP_HOUR_SETS, {"hours": hours})
    sets = sketches.union_groups(((hour, key), blob) for hour, key, blob in cur.fetchall())
    cur.execute(DELETE_GROUP_HOUR_TOTALS, {"hours": hours})
    cur.execute(
        INSERT_GROUP_HOUR_TOTALS,
        {
            "hours": hours,
            "set_hours": [k[0] for k in sets],
            "set_keys": [k[1] for k in sets],
            "sets": list(sets.values()),
        },
    )


def write_dimensions(cur: Cursor, params: dict[str, Any]) -> None:
    """Hourly rows per checkpoint and per error type; records the (day, key) pairs they touched."""
    cur.execute(CREATE_TOUCHED)
    cur.execute(DELETE_MODEL_ROWS, params)
    cur.execute(INSERT_MODEL_ROWS, params)
    cur.execute(SELECT_ERROR_UIDS)
    hours, keys, sets = [], [], []
    for hour, error_type, uids in cur.fetchall():
        hours.append(hour)
        keys.append(error_type)
        sets.append(sketches.bitmap_of(uid for uid in uids if uid is not None))
    cur.execute(DELETE_ERROR_ROWS, params)
    cur.execute(INSERT_ERROR_ROWS, params | {"set_hours": hours, "set_keys": keys, "sets": sets})


# The hourly rows behind the touched (day, key) pairs: 24 primary-key probes per pair, so the cost
# follows the pairs touched, not the number of checkpoints or error types in the day.
TOUCHED_HOURS = """
SELECT t.day, t.key, h.hour
FROM (SELECT DISTINCT day, key FROM touched_days WHERE kind = %(kind)s) AS t
CROSS JOIN LATERAL generate_series(
    t.day::timestamp AT TIME ZONE 'UTC', t.day::timestamp AT TIME ZONE 'UTC' + interval '23 hours', interval '1 hour'
) AS h(hour)
"""


def _touched_blobs(hourly: str, key: str, blob: str) -> str:
    """The (day, key, blob) of each hourly row behind a touched pair (blobs are merged in Python)."""
    return f"""
SELECT k.day, k.key, h.{blob}
FROM ({TOUCHED_HOURS}) AS k
JOIN {hourly} AS h ON h.hour = k.hour AND h.{key} = k.key
"""


def _delete_touched(daily: str, key: str) -> str:
    return f"""
DELETE FROM {daily} AS d
USING (SELECT DISTINCT day, key FROM touched_days WHERE kind = %(kind)s) AS t
WHERE d.day = t.day AND d.{key} = t.key
"""


SELECT_MODEL_DAY_HISTS = _touched_blobs("generation_model_metrics_hourly", "model_checkpoint", "duration_hist")
DELETE_MODEL_DAYS = _delete_touched("generation_model_metrics_daily", "model_checkpoint")
INSERT_MODEL_DAYS = f"""
INSERT INTO generation_model_metrics_daily (
    day, model_checkpoint, total_requests, successful_generations, failed_generations, cancelled_generations,
    duration_count, duration_sum, total_images_generated, last_used_at, duration_hist)
SELECT s.*, coalesce(x.hist, ''::bytea)
FROM (
    SELECT k.day, k.key, sum(m.total_requests), sum(m.successful_generations), sum(m.failed_generations),
           sum(m.cancelled_generations), sum(m.duration_count), sum(m.duration_sum), sum(m.total_images_generated),
           max(m.last_used_at)
    FROM ({TOUCHED_HOURS}) AS k
    JOIN generation_model_metrics_hourly AS m ON m.hour = k.hour AND m.model_checkpoint = k.key
    GROUP BY k.day, k.key
) AS s
LEFT JOIN unnest(%(blob_days)s::date[], %(blob_keys)s::text[], %(blobs)s::bytea[]) AS x(day, key, hist)
    USING (day, key)
"""

SELECT_ERROR_DAY_SETS = _touched_blobs("generation_error_metrics_hourly", "error_type", "user_bitmap")
DELETE_ERROR_DAYS = _delete_touched("generation_error_metrics_daily", "error_type")
INSERT_ERROR_DAYS = f"""
WITH hours AS (
    SELECT k.day, e.* FROM ({TOUCHED_HOURS}) AS k
    JOIN generation_error_metrics_hourly AS e ON e.hour = k.hour AND e.error_type = k.key
)
INSERT INTO generation_error_metrics_daily (
    day, error_type, failures, duration_count, duration_sum, first_seen, last_seen, sample_messages, model_counts,
    user_bitmap)
SELECT s.day, s.error_type, s.failures, s.duration_count, s.duration_sum, s.first_seen, s.last_seen,
       coalesce(m.samples, '{{}}'), coalesce(c.model_counts, '{{}}'::jsonb), coalesce(x.bitmap, ''::bytea)
FROM (
    SELECT day, error_type, sum(failures) AS failures, sum(duration_count) AS duration_count,
           sum(duration_sum) AS duration_sum, min(first_seen) AS first_seen, max(last_seen) AS last_seen
    FROM hours GROUP BY 1, 2
) AS s
LEFT JOIN (
    SELECT day, error_type, (array_agg(DISTINCT message))[1:5] AS samples
    FROM hours, unnest(sample_messages) AS message GROUP BY 1, 2
) AS m USING (day, error_type)
LEFT JOIN (
    SELECT day, error_type, jsonb_object_agg(model, n) AS model_counts
    FROM (SELECT day, error_type, kv.key AS model, sum(kv.value::bigint) AS n
          FROM hours, jsonb_each_text(model_counts) AS kv GROUP BY 1, 2, 3) AS per_model
    GROUP BY 1, 2
) AS c USING (day, error_type)
LEFT JOIN unnest(%(blob_days)s::date[], %(blob_keys)s::text[], %(blobs)s::bytea[]) AS x(day, error_type, bitmap)
    USING (day, error_type)
"""


# Error groups: the key of touched_days is fingerprint || model_checkpoint (see GROUP_KEY).
GROUP_MATCH = "{t}.fingerprint = left({k}.key, 16) AND {t}.model_checkpoint = substr({k}.key, 17)"
SELECT_GROUP_DAY_SETS = f"""
SELECT k.day, k.key, h.user_bitmap
FROM ({TOUCHED_HOURS}) AS k
JOIN generation_error_group_metrics_hourly AS h ON h.hour = k.hour AND {GROUP_MATCH.format(t="h", k="k")}
"""
DELETE_GROUP_DAYS = f"""
DELETE FROM generation_error_group_metrics_daily AS d
USING (SELECT DISTINCT day, key FROM touched_days WHERE kind = %(kind)s) AS t
WHERE d.day = t.day AND {GROUP_MATCH.format(t="d", k="t")}
"""
INSERT_GROUP_DAYS = f"""
WITH hours AS (
    SELECT k.day, k.key, g.* FROM ({TOUCHED_HOURS}) AS k
    JOIN generation_error_group_metrics_hourly AS g ON g.hour = k.hour AND {GROUP_MATCH.format(t="g", k="k")}
)
INSERT INTO generation_error_group_metrics_daily (
    day, fingerprint, model_checkpoint, error_type, failures, first_seen, last_seen, sample_message, user_bitmap)
SELECT s.day, s.fingerprint, s.model_checkpoint, s.error_type, s.failures, s.first_seen, s.last_seen,
       m.sample_message, coalesce(x.bitmap, ''::bytea)
FROM (
    SELECT day, key, fingerprint, model_checkpoint, min(error_type) AS error_type, sum(failures) AS failures,
           min(first_seen) AS first_seen, max(last_seen) AS last_seen
    FROM hours GROUP BY 1, 2, 3, 4
) AS s
JOIN (
    SELECT DISTINCT ON (day, key) day, key, sample_message FROM hours
    ORDER BY day, key, last_seen DESC, sample_message DESC
) AS m USING (day, key)
LEFT JOIN unnest(%(blob_days)s::date[], %(blob_keys)s::text[], %(blobs)s::bytea[]) AS x(day, key, bitmap)
    USING (day, key)
"""

# Error groups over all their checkpoints, per day: for the fingerprints of the touched (day, key) pairs,
# summed from the daily rows per checkpoint just replaced (kind 'group' comes first in DAILY).
TOUCHED_GROUPS = "SELECT DISTINCT day, left(key, 16) AS fingerprint FROM touched_days WHERE kind = 'group'"
SELECT_TOTAL_DAY_SETS = f"""
SELECT d.day, d.fingerprint, d.user_bitmap FROM ({TOUCHED_GROUPS}) AS t
JOIN generation_error_group_metrics_daily AS d ON d.day = t.day AND d.fingerprint = t.fingerprint
"""
DELETE_TOTAL_DAYS = f"""
DELETE FROM generation_error_group_totals_daily AS d USING ({TOUCHED_GROUPS}) AS t
WHERE d.day = t.day AND d.fingerprint = t.fingerprint
"""
INSERT_TOTAL_DAYS = _insert_group_totals(
    table="generation_error_group_totals_daily",
    period="day",
    rows=f"""SELECT d.* FROM ({TOUCHED_GROUPS}) AS t
    JOIN generation_error_group_metrics_daily AS d ON d.day = t.day AND d.fingerprint = t.fingerprint""",
    sets="%(blob_days)s::date[], %(blob_keys)s::text[], %(blobs)s::bytea[]",
)


# The whole service's daily rows (generation_metrics_daily) of the given days, rebuilt from their hourly
# rows: one index range scan per day; the blobs are merged in Python and joined back by day.
OVERALL_DAY_HOURS = """
SELECT d.day, h.duration_hist, h.user_bitmap
FROM unnest(%(days)s::date[]) AS d(day)
JOIN generation_metrics_hourly AS h
    ON h.timestamp >= d.day::timestamp AT TIME ZONE 'UTC' AND h.timestamp < (d.day + 1)::timestamp AT TIME ZONE 'UTC'
"""
DELETE_OVERALL_DAYS = "DELETE FROM generation_metrics_daily WHERE day = ANY(%(days)s::date[])"
INSERT_OVERALL_DAYS = """
INSERT INTO generation_metrics_daily (
    day, total_requests, successful_generations, failed_generations, cancelled_generations, duration_count,
    duration_sum, total_images_generated, queue_length_count, queue_length_sum, max_queue_length,
    first_event_at, last_event_at, unique_users, duration_hist, user_bitmap)
SELECT s.*, x.users, x.hist, x.bitmap
FROM (
    SELECT d.day, sum(h.total_requests), sum(h.successful_generations), sum(h.failed_generations),
           sum(h.cancelled_generations), sum(h.duration_count), sum(h.duration_sum), sum(h.total_images_generated),
           sum(h.queue_length_count), sum(h.queue_length_sum), max(h.max_queue_length), min(h.first_event_at),
           max(h.last_event_at)
    FROM unnest(%(days)s::date[]) AS d(day)
    JOIN generation_metrics_hourly AS h
        ON h.timestamp >= d.day::timestamp AT TIME ZONE 'UTC'
       AND h.timestamp < (d.day + 1)::timestamp AT TIME ZONE 'UTC'
    GROUP BY d.day
) AS s (day)
JOIN unnest(%(blob_days)s::date[], %(users)s::int[], %(hists)s::bytea[], %(bitmaps)s::bytea[])
    AS x(day, users, hist, bitmap) USING (day)
ORDER BY day
"""


def write_overall_days(cur: Cursor, days: list[date]) -> None:
    """Replace generation_metrics_daily's rows of `days` (a day without hourly rows keeps none)."""
    cur.execute(OVERALL_DAY_HOURS, {"days": days})
    rows = cur.fetchall()
    hists = sketches.compact_groups((day, hist) for day, hist, _ in rows)
    sets = sketches.group_sets((day, bitmap) for day, _, bitmap in rows)
    blob_days = list(sets)
    cur.execute(DELETE_OVERALL_DAYS, {"days": days})
    cur.execute(
        INSERT_OVERALL_DAYS,
        {
            "days": days,
            "blob_days": blob_days,
            "users": [len(sets[d]) for d in blob_days],
            "hists": [hists.get(d, b"") for d in blob_days],
            "bitmaps": [sketches.serialize(sets[d]) for d in blob_days],
        },
    )


# Daily rows per kind: the hourly blobs to merge, how (histograms summed, user sets unioned), the rows
# to replace, and the insert that sums the rest in SQL.
DAILY = {
    "model": (SELECT_MODEL_DAY_HISTS, sketches.compact_groups, DELETE_MODEL_DAYS, INSERT_MODEL_DAYS),
    "error": (SELECT_ERROR_DAY_SETS, sketches.union_groups, DELETE_ERROR_DAYS, INSERT_ERROR_DAYS),
    "group": (SELECT_GROUP_DAY_SETS, sketches.union_groups, DELETE_GROUP_DAYS, INSERT_GROUP_DAYS),
    "group totals": (SELECT_TOTAL_DAY_SETS, sketches.union_groups, DELETE_TOTAL_DAYS, INSERT_TOTAL_DAYS),
}


def write_days(cur: Cursor) -> None:
    """Replace the daily rows of every touched (day, checkpoint), (day, error type) and (day, error group and
    checkpoint), from the hourly rows, and of every touched (day, error group), from the last."""
    for kind, (select_blobs, merge, delete, insert) in DAILY.items():
        cur.execute(select_blobs, {"kind": kind})
        blobs = merge(((day, key), blob) for day, key, blob in cur.fetchall())
        cur.execute(delete, {"kind": kind})
        cur.execute(
            insert,
            {
                "kind": kind,
                "blob_days": [day for day, _ in blobs],
                "blob_keys": [key for _, key in blobs],
                "blobs": list(blobs.values()),
            },
        )
