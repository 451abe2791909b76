"""Transfer: drain the Redis stream into generation_events, exactly once per event_id.

Each batch is read through the consumer group, decoded, COPYed into a staging table and inserted
where its event_id is new (generation_event_ids, `ON CONFLICT (event_id) DO NOTHING`); the hours it
touched are marked dirty in the same transaction; only after the commit are the entries acknowledged
(and only acknowledged entries are ever trimmed). A crash anywhere before the acknowledgement means
redelivery, and redelivery is harmless because the insert is idempotent. Entries that cannot become
rows are dead-lettered (to a stream and a table, with the reason) and acknowledged, so they never
block the entries behind them. With several stream shards, a run visits each in turn.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg
import redis
from google.protobuf.message import DecodeError
from psycopg import postgres
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg_pool import ConnectionPool

from generation_analytics.service.ingest.validation import check_stored_event
from generation_analytics.service.settings import TransferSettings
from generation_analytics.service.stream import (
    EVENT_FIELD,
    ROW_COLUMNS,
    TRANSFER_GROUP,
    Row,
    ShardKeys,
    StreamKeys,
    SyncRedis,
    event_to_row,
    group_backlog,
    transfer_group,
)
from generation_analytics.v1 import events_pb2

log = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes]]
FailPoint = Callable[[str], None]


class PoisonEntry(ValueError):
    """A stream entry that can never become a row (the message says why)."""


def decode_entry(fields: dict[bytes, bytes]) -> Row:
    """The row for a stream entry.

    Raises:
        PoisonEntry: the entry is not a GenerationEvent, or breaks the contract.
    """
    payload = fields.get(EVENT_FIELD)
    if payload is None:
        raise PoisonEntry(f"entry has no {EVENT_FIELD.decode()!r} field (fields: {sorted(fields)[:5]})")
    try:
        event = events_pb2.GenerationEvent.FromString(payload)
    except DecodeError as exc:
        raise PoisonEntry(f"not a GenerationEvent: {exc}") from None
    problem = check_stored_event(event)
    if problem:
        raise PoisonEntry(f"invalid {problem[0]}: {problem[1]}")
    try:
        return event_to_row(event)
    except (OverflowError, ValueError) as exc:
        raise PoisonEntry(f"invalid timestamp: {exc}") from None


@dataclass
class TransferReport:
    """What one transfer run did (the RunTransfer RPC returns it)."""

    read_entries: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    batches: int = 0
    duration_s: float = 0.0
    remaining: int = 0

    @property
    def processed(self) -> int:
        return self.inserted


class _Delivery(NamedTuple):
    """A stream entry as delivered to this consumer, and how often it has been delivered (a NamedTuple:
    one is made per entry, at a third of a frozen dataclass's cost)."""

    entry_id: bytes
    fields: dict[bytes, bytes]
    deliveries: int


@dataclass(frozen=True)
class _Dead:
    """An entry that can never become a row, and why."""

    delivery: _Delivery
    reason: str

    @property
    def record(self) -> tuple[str, bytes | None, str, int]:
        """Its row of generation_events_dead_letter (INSERT_DEAD_LETTER's parameters)."""
        d = self.delivery
        return d.entry_id.decode(), d.fields.get(EVENT_FIELD), self.reason, d.deliveries


@dataclass
class _Batch:
    """Entries read together, decoded: rows to store (with the delivery behind each) and dead letters."""

    entries: Sequence[Entry]
    rows: list[Row] = field(default_factory=list)
    row_deliveries: list[_Delivery] = field(default_factory=list)
    dead: list[_Dead] = field(default_factory=list)


CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS transfer_staging (
    event_id uuid, event_type text, generation_id text, user_id uuid, timestamp timestamptz,
    duration_ms bigint, success boolean, error_type text, error_message text, model_checkpoint text,
    generation_type text, queue_length integer, queue_wait_time_ms bigint, generation_time_ms bigint,
    batch_size integer, image_width integer, image_height integer, prompt_tokens integer, attributes jsonb,
    error_fingerprint text
) ON COMMIT DELETE ROWS
"""
COPY_STAGING = f"COPY transfer_staging ({', '.join(ROW_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
COPY_TYPES = (
    "uuid", "text", "text", "uuid", "timestamptz", "int8", "bool", "text", "text", "text", "text", "int4",
    "int8", "int8", "int4", "int4", "int4", "int4", "jsonb", "text",
)  # fmt: skip


class _UuidFromText(Dumper):
    """Binary COPY of a canonical UUID string without building a uuid.UUID (half the cost of text COPY)."""

    format = Format.BINARY
    oid = postgres.types["uuid"].oid

    def dump(self, obj: str) -> bytes:
        return bytes.fromhex(obj.replace("-", ""))


class _JsonbFromText(Dumper):
    """Binary COPY of an already serialised JSON document (jsonb binary format: version 1, then text)."""

    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: str) -> bytes:
        return b"\x01" + obj.encode()


_COLUMNS = ", ".join(ROW_COLUMNS)

# Each user gets a dense id (uid, for the Roaring user sets of the rollups) the first time one of their
# events is stored: looked up once per distinct user of a batch (an index probe each, never a scan of
# every user), new users inserted in user_id order so concurrent workers cannot deadlock. A user another
# worker is inserting at the same time is waited for by ON CONFLICT and, committed by then, found by the
# fallback lookup of INSERT_FROM_STAGING (the next statement).
CREATE_BATCH_USERS = """
CREATE TEMP TABLE IF NOT EXISTS transfer_users (user_id uuid, uid integer) ON COMMIT DELETE ROWS
"""
FIND_BATCH_USERS = """
WITH batch AS (
    SELECT s.user_id, (SELECT u.uid FROM generation_users AS u WHERE u.user_id = s.user_id) AS uid
    FROM (SELECT DISTINCT user_id FROM transfer_staging) AS s
), added AS (
    INSERT INTO generation_users (user_id)
    SELECT user_id FROM batch WHERE uid IS NULL ORDER BY user_id
    ON CONFLICT (user_id) DO NOTHING
    RETURNING user_id, uid
)
INSERT INTO transfer_users (user_id, uid)
SELECT b.user_id, coalesce(b.uid, a.uid) FROM batch AS b LEFT JOIN added AS a USING (user_id)
"""

# Insert what is new, mark the hours it falls in as dirty (fresh version, see 0002_pipeline.sql).
# What is new is decided by generation_event_ids (0016: generation_events is partitioned by week, so it cannot
# hold a unique key on event_id alone): the batch's ids go there first, and only the events whose id was new
# are stored — once each, even when the batch holds an event twice (DISTINCT ON).
# Rows and hours are taken in a fixed order so concurrent workers cannot deadlock.
INSERT_FROM_STAGING = f"""
WITH new_ids AS (
    INSERT INTO generation_event_ids (event_id, timestamp)
    SELECT event_id, timestamp FROM transfer_staging
    ORDER BY event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), inserted AS (
    INSERT INTO generation_events ({_COLUMNS}, uid)
    SELECT DISTINCT ON (s.event_id) {", ".join(f"s.{c}" for c in ROW_COLUMNS)},
           coalesce(u.uid, (SELECT g.uid FROM generation_users AS g WHERE g.user_id = s.user_id))
    FROM transfer_staging AS s JOIN new_ids USING (event_id) LEFT JOIN transfer_users AS u USING (user_id)
    ORDER BY s.event_id
    RETURNING timestamp
), marked AS (
    INSERT INTO generation_dirty_hours (hour, version)
    SELECT hour, nextval('generation_dirty_hours_version_seq')
    FROM (SELECT DISTINCT date_trunc('hour', timestamp) AS hour FROM inserted) AS hours
    ORDER BY hour
    ON CONFLICT (hour) DO UPDATE SET version = EXCLUDED.version
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM marked)
"""

INSERT_DEAD_LETTER = """
INSERT INTO generation_events_dead_letter (stream_entry_id, payload, reason, deliveries)
VALUES (%s, %s, %s, %s)
ON CONFLICT (stream_entry_id) DO NOTHING
"""


# Decoding makes ~10 objects the cyclic GC tracks per entry (the reply's lists and dict, the row, the
# delivery). At CPython's default, a collection every 700 of them, collections took ~30% of transfer's
# Python time (bench.transfer_throughput: 13.7 -> 9.7 µs of Python per event, 50.9k -> 53.3k events/s).
# While a run drains, collections wait for this many new objects instead; nothing here makes cycles.
RELAXED_GC_THRESHOLD = 50_000


class _RelaxedCollections:
    """The GC's first threshold relaxed while any transfer run is active (in any thread); the last run to
    finish restores what was there before."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._saved = gc.get_threshold()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self._lock:
            if self._runs == 0:
                self._saved = gc.get_threshold()
                gc.set_threshold(max(RELAXED_GC_THRESHOLD, self._saved[0]), *self._saved[1:])
            self._runs += 1
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if self._runs == 0:
                    gc.set_threshold(*self._saved)


_fewer_collections = _RelaxedCollections()


def _next_stream_id(entry_id: bytes | str) -> str:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    millis, _, seq = text.partition("-")
    return f"{millis}-{int(seq or 0) + 1}"


def default_consumer_name() -> str:
    """Unique per process and instance, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Transfer:
    """Moves events from the stream to Postgres; one instance per process, safe to run in many."""

    def __init__(
        self,
        *,
        redis_client: SyncRedis,
        pool: ConnectionPool,
        keys: StreamKeys,
        settings: TransferSettings,
        consumer: str | None = None,
        fail_point: FailPoint | None = None,
    ) -> None:
        self._redis = redis_client
        self._pool = pool
        self._keys = keys
        self._settings = settings
        self.consumer = consumer or default_consumer_name()
        self._fail_point = fail_point or (lambda _: None)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._first_shard = zlib.crc32(self.consumer.encode()) % len(keys.shards)
        self._runs = 0

    def stop(self) -> None:
        """Make a run in progress return after its current batch (for a prompt shutdown)."""
        self._stopping.set()

    def run(self, *, time_budget_s: float | None = None) -> TransferReport:
        """Drain the stream: stale entries of stopped consumers, our own unfinished ones, then new ones.

        Stops early only when the time budget runs out (`remaining` then says what is left).
        Raises on Redis/Postgres errors; nothing unstored is ever acknowledged.
        """
        with self._lock, _fewer_collections.active():
            started = time.monotonic()
            deadline = started + (time_budget_s or self._settings.time_budget_s)
            report = TransferReport()
            self.ensure_group()
            retired = self._retired_shards()
            self._create_groups(retired)
            visited = [*self._visiting_order(), *retired]
            for shard in visited:
                if time.monotonic() >= deadline or self._stopping.is_set():
                    break
                self._reclaim(shard, report, deadline)
                self._drain_history(shard, report, deadline)
                self._drain_new(shard, report, deadline)
                self._trim(shard)
            report.remaining = sum(self._shard_backlog(shard) for shard in visited)
            report.duration_s = time.monotonic() - started
            if report.read_entries:
                log.info(
                    "transfer: read %d, inserted %d, duplicates %d, dead-lettered %d, reclaimed %d in %.2f s",
                    report.read_entries, report.inserted, report.duplicates, report.dead_lettered,
                    report.reclaimed, report.duration_s,
                )  # fmt: skip
            return report

    def ensure_group_quietly(self) -> None:
        """Create the consumer group if Redis is up; the first run retries otherwise."""
        try:
            self.ensure_group()
        except redis.RedisError as exc:
            log.warning("cannot create the consumer group yet: %s", exc)

    def ensure_group(self) -> None:
        """Create each shard's consumer group (and stream) unless it exists, and register the shards (so
        that a later shard count still drains what they hold)."""
        self._create_groups(self._keys.shards)
        self._redis.sadd(self._keys.registry, *(shard.stream for shard in self._keys.shards))

    def _create_groups(self, shards: Sequence[ShardKeys]) -> None:
        for shard in shards:
            try:
                self._redis.xgroup_create(shard.stream, TRANSFER_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _retired_shards(self) -> list[ShardKeys]:
        """Shards of an earlier shard count that still exist: visited after today's, until empty."""
        registered: Any = self._redis.smembers(self._keys.registry)
        return [shard for shard in self._keys.retired(registered) if self._redis.exists(shard.stream)]

    def _visiting_order(self) -> list[ShardKeys]:
        """Every shard, starting at one that moves on each run and differs between consumers: workers
        sharing the shards start apart, and a run cut short by its time budget does not always leave
        the same shards for later (entries of a stopped worker are reclaimed by whoever visits next)."""
        shards = self._keys.shards
        start = (self._first_shard + self._runs) % len(shards)
        self._runs += 1
        return [*shards[start:], *shards[:start]]

    def _reclaim(self, shard: ShardKeys, report: TransferReport, deadline: float) -> None:
        """Take over entries other consumers left unacknowledged for longer than `reclaim_idle_ms`."""
        start: bytes | str = "0-0"
        while time.monotonic() < deadline and not self._stopping.is_set():
            reply: Any = self._redis.xautoclaim(
                shard.stream, TRANSFER_GROUP, self.consumer, self._settings.reclaim_idle_ms,
                start_id=start, count=self._settings.batch_size,
            )  # fmt: skip
            start, entries = reply[0], [e for e in reply[1] if e[1] is not None]
            if entries:
                report.reclaimed += len(entries)
                log.warning("transfer: reclaimed %d entries left pending by stopped consumers", len(entries))
                self._finish(shard, self._decode(entries, self._delivery_counts(shard, entries)), report)
            if start in (b"0-0", "0-0"):
                return

    def _drain_history(self, shard: ShardKeys, report: TransferReport, deadline: float) -> None:
        """Re-read and store the entries delivered to this consumer but never acknowledged (an earlier
        run failed part-way), batch by batch, until none is left (or the deadline passes)."""
        next_id = "0"
        while time.monotonic() < deadline and not self._stopping.is_set():
            entries = self._read(shard, next_id)
            if not entries:
                return
            self._finish(shard, self._decode(entries, self._delivery_counts(shard, entries)), report)
            next_id = entries[-1][0].decode()  # XREADGROUP returns history strictly after this id

    def _read(self, shard: ShardKeys, from_id: str) -> list[Entry]:
        reply: Any = self._redis.xreadgroup(
            TRANSFER_GROUP, self.consumer, {shard.stream: from_id}, count=self._settings.batch_size
        )
        return [e for e in (reply[0][1] if reply else []) if e[1]]

    def _drain_new(self, shard: ShardKeys, report: TransferReport, deadline: float) -> None:
        """Read and store entries never delivered to anyone until none is left (or the deadline passes)."""
        # Decoding is CPU in Python; storing is mostly waiting on Postgres (GIL released). A reader
        # thread decodes ahead while `transfer_store_workers` threads store batches on connections of
        # their own, so Python and Postgres both keep busy. Entries read ahead but not stored stay
        # pending for this consumer and are re-read as history on the next run.
        workers = max(1, self._settings.store_workers)
        batches: queue.Queue[_Batch | None] = queue.Queue(maxsize=workers + 1)
        stop = threading.Event()
        errors: list[BaseException] = []
        report_lock = threading.Lock()

        def put(item: _Batch | None) -> bool:
            while not stop.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def reader() -> None:
            try:
                while time.monotonic() < deadline and not self._stopping.is_set() and not stop.is_set():
                    entries = self._read(shard, ">")
                    if not entries or not put(self._decode(entries, {})):
                        break
            except BaseException as exc:  # re-raised by the calling thread
                errors.append(exc)
                stop.set()
            finally:
                for _ in range(workers):
                    put(None)

        def storer() -> None:
            try:
                while not stop.is_set():
                    try:
                        item = batches.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    if item is None:
                        return
                    self._finish(shard, item, report, report_lock)
            except BaseException as exc:  # re-raised by the calling thread
                errors.append(exc)
                stop.set()

        threads = [threading.Thread(target=reader, name="transfer-reader", daemon=True)]
        threads += [threading.Thread(target=storer, name=f"transfer-store-{i}", daemon=True) for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def _delivery_counts(self, shard: ShardKeys, entries: Sequence[Entry]) -> dict[bytes, int]:
        """How often each entry has been delivered (this delivery included), for every one of them.

        One XPENDING over the batch's id range, restricted to this consumer, usually answers for the
        whole batch. But that range can also hold other entries pending for this consumer (read but
        not idle long enough to be reclaimed, or deleted from the stream, which a history read skips),
        and those use up `count` before the batch's last entries. Whatever it leaves unanswered is
        looked up entry by entry (XPENDING min=max=id, count=1: O(log n) each), pipelined in one
        round trip, so no entry escapes the `max_deliveries` cap by defaulting to one delivery.
        """
        pending: Any = self._redis.xpending_range(
            shard.stream, TRANSFER_GROUP, min=entries[0][0], max=entries[-1][0],
            count=len(entries), consumername=self.consumer,
        )  # fmt: skip
        wanted = {entry_id for entry_id, _ in entries}
        counts = {p["message_id"]: int(p["times_delivered"]) for p in pending if p["message_id"] in wanted}
        missing = [entry_id for entry_id, _ in entries if entry_id not in counts]
        if missing:
            pipe = self._redis.pipeline(transaction=False)
            for entry_id in missing:
                # Not restricted to this consumer: the entry's count is what matters, whoever holds it.
                pipe.xpending_range(shard.stream, TRANSFER_GROUP, min=entry_id, max=entry_id, count=1)
            replies: list[Any] = pipe.execute()
            for entry_id, reply in zip(missing, replies, strict=True):
                if reply:
                    counts[entry_id] = int(reply[0]["times_delivered"])
        return counts

    def _decode(self, entries: Sequence[Entry], deliveries: dict[bytes, int]) -> _Batch:
        batch = _Batch(entries=entries)
        for entry_id, fields in entries:
            delivery = _Delivery(entry_id, fields, deliveries.get(entry_id, 1))
            if delivery.deliveries > self._settings.max_deliveries:
                batch.dead.append(_Dead(delivery, f"delivered {delivery.deliveries} times without being stored"))
                continue
            try:
                batch.rows.append(decode_entry(fields))
                batch.row_deliveries.append(delivery)
            except PoisonEntry as exc:
                batch.dead.append(_Dead(delivery, str(exc)))
        return batch

    def _finish(
        self, shard: ShardKeys, batch: _Batch, report: TransferReport, report_lock: threading.Lock | None = None
    ) -> None:
        """Store a decoded batch, then acknowledge it (never the other way round)."""
        decoded_dead = len(batch.dead)
        inserted = self._store(batch.rows, batch.row_deliveries, batch.dead)
        self._fail_point("after_commit")
        self._acknowledge(shard, [e[0] for e in batch.entries], batch.dead)
        self._fail_point("after_ack")
        with report_lock or contextlib.nullcontext():
            self._count(batch, report, inserted, decoded_dead)

    @staticmethod
    def _count(batch: _Batch, report: TransferReport, inserted: int, decoded_dead: int) -> None:
        report.batches += 1
        report.read_entries += len(batch.entries)
        report.inserted += inserted
        report.duplicates += len(batch.rows) - (len(batch.dead) - decoded_dead) - inserted
        report.dead_lettered += len(batch.dead)

    def _store(self, rows: list[Row], row_deliveries: list[_Delivery], dead: list[_Dead]) -> int:
        """Insert rows and dead letters in one transaction; returns how many rows were new.

        A row Postgres refuses (a data error) is found by bisection under savepoints and dead-lettered;
        the rest of the batch is stored. Connection errors propagate: the batch stays unacknowledged.
        """
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(CREATE_STAGING)
            conn.execute(CREATE_BATCH_USERS)
            inserted = self._insert_bisecting(conn, rows, row_deliveries, dead)
            if dead:
                with conn.cursor() as cur:
                    cur.executemany(INSERT_DEAD_LETTER, [d.record for d in dead])
        return inserted

    def _insert_bisecting(
        self, conn: psycopg.Connection[Any], rows: list[Row], row_deliveries: list[_Delivery], dead: list[_Dead]
    ) -> int:
        if not rows:
            return 0
        try:
            with conn.transaction():  # a savepoint inside the batch transaction
                return self._insert(conn, rows)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            if len(rows) == 1:
                delivery = row_deliveries[0]
                log.error("transfer: Postgres refused entry %s: %s", delivery.entry_id.decode(), exc)
                dead.append(_Dead(delivery, f"refused by Postgres: {exc}"))
                return 0
            half = len(rows) // 2
            first = self._insert_bisecting(conn, rows[:half], row_deliveries[:half], dead)
            return first + self._insert_bisecting(conn, rows[half:], row_deliveries[half:], dead)

    @staticmethod
    def _insert(conn: psycopg.Connection[Any], rows: list[Row]) -> int:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE transfer_staging, transfer_users")
            cur.adapters.register_dumper(None, _UuidFromText)
            cur.adapters.register_dumper(None, _JsonbFromText)
            with cur.copy(COPY_STAGING) as copy:
                copy.set_types(COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
            cur.execute(FIND_BATCH_USERS)
            cur.execute(INSERT_FROM_STAGING)
            counts = cur.fetchone()
            return int(counts[0]) if counts else 0

    def _acknowledge(self, shard: ShardKeys, entry_ids: list[bytes], dead: list[_Dead]) -> None:
        """Copy dead letters to the shard's dead-letter stream and acknowledge the batch, atomically (one
        slot: the shard's keys share a hash tag)."""
        pipe = self._redis.pipeline(transaction=True)
        for d in dead:
            fields: dict[bytes | str, bytes | str | int] = {
                "entry_id": d.delivery.entry_id, "reason": d.reason, "deliveries": d.delivery.deliveries,
            }  # fmt: skip
            if EVENT_FIELD in d.delivery.fields:
                fields["payload"] = d.delivery.fields[EVENT_FIELD]
            pipe.xadd(shard.dead_letter, fields)  # type: ignore[arg-type]
        pipe.xack(shard.stream, TRANSFER_GROUP, *entry_ids)
        pipe.execute()

    def _trim(self, shard: ShardKeys) -> None:
        """Remove acknowledged entries: everything before the oldest pending or undelivered entry."""
        group = self._group_info(shard)
        if group is None:
            return
        summary: Any = self._redis.xpending(shard.stream, TRANSFER_GROUP)
        if summary["pending"]:
            trim_to: bytes | str = summary["min"]
        else:
            trim_to = _next_stream_id(group["last-delivered-id"])
        self._redis.xtrim(shard.stream, minid=trim_to, approximate=False)
        self._forget_idle_consumers(shard)

    def _group_info(self, shard: ShardKeys) -> dict[str, Any] | None:
        return transfer_group(self._redis.xinfo_groups(shard.stream))

    def _forget_idle_consumers(self, shard: ShardKeys) -> None:
        """Drop consumers of stopped processes once they hold nothing (keeps XINFO readable)."""
        consumers: Any = self._redis.xinfo_consumers(shard.stream, TRANSFER_GROUP)
        for consumer in consumers:
            name = consumer["name"]
            name = name.decode() if isinstance(name, bytes) else name
            if name != self.consumer and consumer["pending"] == 0 and consumer["idle"] > 3_600_000:
                self._redis.xgroup_delconsumer(shard.stream, TRANSFER_GROUP, name)

    def backlog(self) -> int:
        """Entries not yet stored, over every shard: pending plus undelivered (XLEN where Redis < 7
        cannot tell lag)."""
        return sum(self._shard_backlog(shard) for shard in [*self._keys.shards, *self._retired_shards()])

    def _shard_backlog(self, shard: ShardKeys) -> int:
        try:
            group = self._group_info(shard)
        except redis.ResponseError:
            return 0
        backlog = group_backlog(group)
        return int(self._redis.xlen(shard.stream)) if backlog is None else backlog
