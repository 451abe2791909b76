"""The Redis stream, in one place: key names built from the namespace, the entry format, the Lua script
that appends entries, and the reading of its consumer group's state (shared by transfer and status).

An entry has one field `e` holding a GenerationEvent in protobuf wire format. Capture appends entries
(`APPEND_EVENTS_LUA`); transfer reads them back into rows of generation_events (`event_to_row`).
Protobuf keeps entries compact, lossless and evolvable: a newer producer's extra fields are skipped,
a missing optional field stays NULL.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from generation_analytics.service.fingerprints import fingerprint
from generation_analytics.v1 import events_pb2
from generation_analytics.vocabulary import EventType

# Field of a stream entry that holds the serialized GenerationEvent (protobuf wire format).
EVENT_FIELD = b"e"
# Consumer group shared by every transfer worker of every replica.
TRANSFER_GROUP = "generation_analytics_transfer"


@dataclass(frozen=True)
class StreamKeys:
    """Names of the Redis objects one namespace uses."""

    namespace: str

    @property
    def stream(self) -> str:
        """Events accepted by capture and not yet acknowledged by transfer."""
        return f"{self.namespace}:generation_events:stream"

    @property
    def dead_letter(self) -> str:
        """Entries transfer could not store, with the reason (also copied to a Postgres table)."""
        return f"{self.namespace}:generation_events:dead"

    @property
    def pattern(self) -> str:
        """Matches every key of the namespace (used by tests to clean up)."""
        return f"{self.namespace}:*"


# Appends ARGV[2..] as entries {e: ARGV[i]} to the stream KEYS[1], all or none, unless the stream
# already holds more than ARGV[1] entries (the backlog cap), in which case it adds nothing and
# answers the error BACKLOG. One round trip and one command per batch: atomic (a retry after a
# failure cannot half-apply) and far cheaper to encode client-side than one XADD per event.
# Returns the number of entries added. Called by SHA (EVALSHA), loaded on first NOSCRIPT.
APPEND_EVENTS_LUA = """
local max_backlog = tonumber(ARGV[1])
if redis.call('XLEN', KEYS[1]) > max_backlog then
  return redis.error_reply('BACKLOG stream holds more than ' .. ARGV[1] .. ' entries')
end
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
end
return #ARGV - 1
"""
APPEND_EVENTS_SHA = hashlib.sha1(APPEND_EVENTS_LUA.encode()).hexdigest()
assert EVENT_FIELD == b"e", "APPEND_EVENTS_LUA writes the field name literally"


def connect_redis(url: str, *, timeout_s: float) -> aioredis.Redis:
    """An asyncio Redis client that fails within `timeout_s` instead of retrying or hanging."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def transfer_group(groups: Any) -> dict[str, Any] | None:
    """The transfer group's entry in an XINFO GROUPS reply (None until the group exists)."""
    for group in groups:
        name = group["name"]
        if (name.decode() if isinstance(name, bytes) else name) == TRANSFER_GROUP:
            return dict(group)
    return None


def group_backlog(group: dict[str, Any] | None) -> int | None:
    """Entries accepted but not yet stored (pending + undelivered) per the group's XINFO entry; None when
    only XLEN can tell (no group yet, or Redis < 7, which reports no lag)."""
    if group is None or group.get("lag") is None:
        return None
    return int(group["lag"]) + int(group["pending"])


# Columns of generation_events that transfer writes, in row order (id and created_at are Postgres's).
ROW_COLUMNS = (
    "event_id", "event_type", "generation_id", "user_id", "timestamp", "duration_ms", "success",
    "error_type", "error_message", "model_checkpoint", "generation_type", "queue_length",
    "queue_wait_time_ms", "generation_time_ms", "batch_size", "image_width", "image_height",
    "prompt_tokens", "attributes", "error_fingerprint",
)  # fmt: skip

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Row = tuple[Any, ...]


def event_to_row(event: events_pb2.GenerationEvent) -> Row:
    """A generation_events row (ROW_COLUMNS order) for a validated event; "" strings become NULL.

    A failed completion gets its error group here, once, on its way into Postgres (fingerprints.py).
    """
    # Written out field by field (no helper per optional field): transfer runs this once per event.
    has = event.HasField
    ts = event.timestamp
    dims = event.image_dimensions if has("image_dimensions") else None
    success = event.success if has("success") else None
    return (
        event.event_id,
        EventType.from_proto(event.event_type).value,
        event.generation_id,
        event.user_id,
        _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000),
        event.duration_ms if has("duration_ms") else None,
        success,
        event.error_type or None,
        event.error_message or None,
        event.model_checkpoint or None,
        event.generation_type or None,
        event.queue_length if has("queue_length") else None,
        event.queue_wait_time_ms if has("queue_wait_time_ms") else None,
        event.generation_time_ms if has("generation_time_ms") else None,
        event.batch_size if has("batch_size") else None,
        dims.width if dims else None,
        dims.height if dims else None,
        event.prompt_tokens if has("prompt_tokens") else None,
        json.dumps(dict(event.attributes), ensure_ascii=False) if event.attributes else "{}",
        fingerprint(event.error_type, event.error_message)
        if success is False and event.event_type == events_pb2.EVENT_TYPE_COMPLETION
        else None,
    )
