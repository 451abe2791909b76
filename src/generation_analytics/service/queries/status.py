"""Pipeline status: the seed's "Monitoring the pipeline" queries plus the stream's view, in one call."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import redis.exceptions
from psycopg_pool import AsyncConnectionPool

from generation_analytics.service.stream import (
    TRANSFER_GROUP,
    AsyncRedis,
    ShardKeys,
    StreamKeys,
    group_backlog,
    transfer_group,
)


@dataclass
class JobRunStatus:
    started_at: datetime | None = None
    duration_s: float = 0.0
    processed: int = 0
    error: str = ""
    last_error: str = ""
    last_error_at: datetime | None = None


@dataclass
class StreamStatus:
    """The stream's state: totals over its shards, and each shard's own (`shards`, in shard order)."""

    length: int = 0
    pending: int = 0
    undelivered: int = 0
    oldest_untransferred_at: datetime | None = None
    dead_letters: int = 0
    shards: list[ShardStatus] = field(default_factory=list)

    @property
    def backlog(self) -> int:
        """Events accepted but not yet in Postgres."""
        return self.pending + self.undelivered


@dataclass
class FailingHour:
    hour: datetime
    failing_since: datetime | None
    failures: int
    last_error: str
    next_retry_at: datetime | None


@dataclass
class PipelineStatus:
    stream: StreamStatus
    now: datetime
    latest_event_at: datetime | None = None
    total_events: int = 0
    latest_hourly_metric_at: datetime | None = None
    total_hours: int = 0
    hours_with_data: list[tuple[date, int]] = field(default_factory=list)
    dirty_hours: int = 0
    failing_hours: list[FailingHour] = field(default_factory=list)
    failing_hours_count: int = 0
    jobs: dict[str, JobRunStatus] = field(default_factory=dict)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_time(entry_id: Any) -> datetime:
    return datetime.fromtimestamp(int(_text(entry_id).split("-")[0]) / 1000, UTC)


@dataclass
class ShardStatus(StreamStatus):
    """One shard's state (its `shards` stays empty)."""

    index: int = 0
    key: str = ""


async def stream_status(client: AsyncRedis, keys: StreamKeys) -> StreamStatus:
    """Length, pending, undelivered and the age of the oldest entry not yet in Postgres, over every shard
    (read one after the other: a status call is rare and small next to the many shards it would fan to)."""
    shards = [await _shard_status(client, shard) for shard in await _every_shard(client, keys)]
    shards = [shard for shard in shards if shard.index >= 0 or shard.length or shard.dead_letters]
    oldest = [shard.oldest_untransferred_at for shard in shards if shard.oldest_untransferred_at]
    return StreamStatus(
        length=sum(shard.length for shard in shards),
        pending=sum(shard.pending for shard in shards),
        undelivered=sum(shard.undelivered for shard in shards),
        oldest_untransferred_at=min(oldest) if oldest else None,
        dead_letters=sum(shard.dead_letters for shard in shards),
        shards=shards,
    )


async def _every_shard(client: AsyncRedis, keys: StreamKeys) -> list[ShardKeys]:
    """Today's shards, then those of an earlier shard count that may still hold entries."""
    return [*keys.shards, *keys.retired(await client.smembers(keys.registry))]


async def _shard_status(client: AsyncRedis, keys: ShardKeys) -> ShardStatus:
    status = ShardStatus(index=keys.index, key=keys.stream)
    pipe = client.pipeline(transaction=False)
    pipe.xlen(keys.stream)
    pipe.xlen(keys.dead_letter)
    status.length, status.dead_letters = (int(v) for v in await pipe.execute())
    if status.length == 0:
        return status
    try:
        groups: Any = await client.xinfo_groups(keys.stream)
        summary: Any = await client.xpending(keys.stream, TRANSFER_GROUP)
    except redis.exceptions.ResponseError:  # no group yet: nothing was ever delivered
        first: Any = await client.xrange(keys.stream, count=1)
        status.undelivered = status.length
        status.oldest_untransferred_at = _id_time(first[0][0]) if first else None
        return status
    group = transfer_group(groups)
    last_delivered = _text(group["last-delivered-id"]) if group else "0-0"
    status.pending = int(summary["pending"])
    lag = group.get("lag") if group else None
    after: Any = await client.xrange(keys.stream, min=f"({last_delivered}", count=1)
    # Redis < 7 reports no lag; after trimming, the stream is about pending + undelivered entries.
    status.undelivered = int(lag) if lag is not None else max(status.length - status.pending, 0)
    candidates = [_id_time(summary["min"])] if status.pending else []
    if after:
        candidates.append(_id_time(after[0][0]))
    status.oldest_untransferred_at = min(candidates) if candidates else None
    return status


async def stream_backlog(client: AsyncRedis, keys: StreamKeys) -> int:
    """Events accepted but not yet stored: pending + undelivered, one round trip per shard when Redis >= 7."""
    return sum([await _shard_backlog(client, shard) for shard in await _every_shard(client, keys)])


async def _shard_backlog(client: AsyncRedis, keys: ShardKeys) -> int:
    try:
        backlog = group_backlog(transfer_group(await client.xinfo_groups(keys.stream)))
    except redis.exceptions.ResponseError:  # no stream yet
        backlog = None
    return int(await client.xlen(keys.stream)) if backlog is None else backlog


# The number of events is the sum of the counters triggers keep (0012_event_counts.sql): exact, and a few
# rows to read where count(*) read the whole table (~1.1 s on 10M events).
DATABASE_STATUS = """
SELECT (SELECT max(latest_at) FROM generation_event_counts),
       (SELECT coalesce(sum(events), 0)::bigint FROM generation_event_counts),
       (SELECT max(timestamp) FROM generation_metrics_hourly),
       (SELECT count(*) FROM generation_metrics_hourly),
       (SELECT count(*) FROM generation_dirty_hours),
       now(),
       (SELECT count(*) FROM generation_dirty_hours WHERE failures > 0)
"""
MAX_FAILING_HOURS = 20
FAILING_HOURS = """
SELECT hour, failing_since, failures, coalesce(last_error, ''), retry_at
FROM generation_dirty_hours WHERE failures > 0 ORDER BY hour LIMIT %(limit)s
"""
HOURS_WITH_DATA = """
SELECT DATE(timestamp) AS day, count(*) AS hours_with_data
FROM generation_metrics_hourly
WHERE timestamp >= NOW() - INTERVAL '7 days'
GROUP BY DATE(timestamp)
ORDER BY day DESC
"""
JOB_RUNS = "SELECT job, started_at, duration_s, processed, error, last_error, last_error_at FROM pipeline_job_runs"


async def pipeline_status(client: AsyncRedis, pool: AsyncConnectionPool, keys: StreamKeys) -> PipelineStatus:
    """Everything GetPipelineStatus reports."""
    stream = await stream_status(client, keys)
    async with pool.connection() as conn:
        row: Any = await (await conn.execute(DATABASE_STATUS)).fetchone()
        days = await (await conn.execute(HOURS_WITH_DATA)).fetchall()
        runs = await (await conn.execute(JOB_RUNS)).fetchall()
        failing = await (await conn.execute(FAILING_HOURS, {"limit": MAX_FAILING_HOURS})).fetchall()
    status = PipelineStatus(
        stream=stream,
        latest_event_at=row[0],
        total_events=int(row[1]),
        latest_hourly_metric_at=row[2],
        total_hours=int(row[3]),
        dirty_hours=int(row[4]),
        now=row[5],
        hours_with_data=[(day, int(count)) for day, count in days],
        failing_hours=[FailingHour(*row) for row in failing],
        failing_hours_count=int(row[6]),
    )
    for job, started_at, duration_s, processed, error, last_error, last_error_at in runs:
        status.jobs[job] = JobRunStatus(
            started_at, float(duration_s), int(processed), error or "", last_error or "", last_error_at
        )
    return status
