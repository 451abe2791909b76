"""The Redis stream, in one place: key names built from the namespace, the entry format, the Lua script
that appends entries, and the reading of its consumer group's state (shared by transfer and status).

An entry has one field `e` holding a GenerationEvent in protobuf wire format. Capture appends entries
(`APPEND_EVENTS_LUA`); transfer reads them back into rows of generation_events (`event_to_row`).
Protobuf keeps entries compact, lossless and evolvable: a newer producer's extra fields are skipped,
a missing optional field stays NULL.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS as REDIS_CLUSTER_SLOTS
from redis.crc import key_slot
from redis.retry import Retry as SyncRetry

from generation_analytics.service.fingerprints import fingerprint
from generation_analytics.service.settings import RedisSettings
from generation_analytics.v1 import events_pb2
from generation_analytics.vocabulary import EventType

# Field of a stream entry that holds the serialized GenerationEvent (protobuf wire format).
EVENT_FIELD = b"e"
# Consumer group shared by every transfer worker of every replica.
TRANSFER_GROUP = "generation_analytics_transfer"


@dataclass(frozen=True)
class ShardKeys:
    """Names of the Redis objects of one stream shard. On Redis Cluster both share one hash tag, so the
    transaction that dead-letters entries and acknowledges them touches one slot."""

    index: int
    stream: str
    dead_letter: str


@dataclass(frozen=True)
class StreamKeys:
    """Names of the Redis objects one namespace uses: its stream shards (`shard_count`, 1 by default).

    One shard on a single Redis keeps the original names (`{ns}:generation_events:stream`), so data
    recorded before shards existed is still drained. Otherwise each shard's keys carry a hash tag chosen
    so that shard i falls in the i-th of `shard_count` equal slot ranges: spread over the masters of a
    cluster whose slots are split evenly, as `redis-cli --cluster create` splits them.
    """

    namespace: str
    shard_count: int = 1
    cluster: bool = False

    @classmethod
    def of(cls, settings: RedisSettings) -> StreamKeys:
        return cls(settings.namespace, settings.stream_shards, settings.cluster)

    @cached_property
    def shards(self) -> tuple[ShardKeys, ...]:
        base = f"{self.namespace}:generation_events"
        if self.shard_count == 1 and not self.cluster:
            return (ShardKeys(0, f"{base}:stream", f"{base}:dead"),)
        tags = (_spread_tag(self.namespace, i, self.shard_count) for i in range(self.shard_count))
        return tuple(ShardKeys(i, f"{base}:{{{tag}}}:stream", f"{base}:{{{tag}}}:dead") for i, tag in enumerate(tags))

    def shard_for(self, event_id: str) -> ShardKeys:
        """The shard an event goes to: a function of its event_id alone, so a retry lands where the first
        attempt did, whichever server takes it."""
        shards = self.shards
        return shards[zlib.crc32(event_id.encode()) % len(shards)] if len(shards) > 1 else shards[0]

    @property
    def registry(self) -> str:
        """A set of every shard stream transfer has served in this namespace, whatever the shard count was
        then: entries left in shards of an earlier count are still drained (`retired`)."""
        return f"{self.namespace}:generation_events:shards"

    def retired(self, registered: Iterable[bytes | str]) -> list[ShardKeys]:
        """Shards not in today's layout that may still hold entries: the registered ones and the unsharded
        stream (which predates the registry). Their index is -1."""
        current = {shard.stream for shard in self.shards}
        streams = [StreamKeys(self.namespace).stream, *(_text(key) for key in registered)]
        return [
            ShardKeys(-1, stream, stream.removesuffix(":stream") + ":dead")
            for stream in sorted(set(streams) - current)
            if stream.endswith(":stream")
        ]

    @property
    def stream(self) -> str:
        """The first shard's stream (the only one unless `shard_count` > 1)."""
        return self.shards[0].stream

    @property
    def dead_letter(self) -> str:
        """The first shard's dead letters: entries transfer could not store, with the reason (also copied
        to a Postgres table)."""
        return self.shards[0].dead_letter

    @property
    def pattern(self) -> str:
        """Matches every key of the namespace (used by tests to clean up)."""
        return f"{self.namespace}:*"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _spread_tag(namespace: str, index: int, count: int) -> str:
    """The first hash tag `{namespace}/{index}/{k}` whose slot lies in the index-th of `count` equal ranges."""
    for k in itertools.count():
        tag = f"{namespace}/{index}/{k}"
        if key_slot(tag.encode()) * count // REDIS_CLUSTER_SLOTS == index:
            return tag
    raise AssertionError("unreachable")


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


# A client of one Redis or of a Redis Cluster (redis-py's cluster clients route each key to its slot's
# master and follow MOVED themselves).
AsyncRedis = aioredis.Redis | aioredis.RedisCluster
SyncRedis = redis.Redis | redis.RedisCluster


def connect_redis(url: str, *, timeout_s: float, cluster: bool = False) -> AsyncRedis:
    """An asyncio Redis client that fails within `timeout_s` instead of retrying or hanging."""
    if cluster:
        return aioredis.RedisCluster.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def connect_redis_sync(url: str, *, timeout_s: float, connect_timeout_s: float, cluster: bool = False) -> SyncRedis:
    """A blocking Redis client for the pipeline's threads; on a cluster it retries a command a few times
    while a failover settles (the pipeline can wait), elsewhere it fails at once and the job runs again."""
    if cluster:
        return redis.RedisCluster.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=connect_timeout_s)
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=connect_timeout_s, retry=SyncRetry(NoBackoff(), 0)
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
