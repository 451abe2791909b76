"""Transfer on real Redis and Postgres: exactly once under crashes, outages, poison and concurrency."""

from __future__ import annotations

import gc
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis

from generation_analytics.service.fingerprints import fingerprint
from generation_analytics.service.pipeline.transfer import RELAXED_GC_THRESHOLD, Transfer, _fewer_collections
from generation_analytics.service.pipeline.worker import Pipeline
from generation_analytics.service.settings import PostgresSettings, Settings
from generation_analytics.service.stream import TRANSFER_GROUP, StreamKeys, event_to_row
from generation_analytics.v1 import events_pb2
from tests.factories import full_event, make_event
from tests.fix_pipeline import push, push_raw

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def stored_ids(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [str(r[0]) for r in conn.execute("SELECT event_id FROM generation_events").fetchall()]


def pending_count(client: redis.Redis, namespace: str) -> int:
    summary: Any = client.xpending(StreamKeys(namespace).stream, TRANSFER_GROUP)
    return int(summary["pending"])


def events(n: int, **fields: Any) -> list[events_pb2.GenerationEvent]:
    return [make_event(timestamp=NOW - timedelta(seconds=i), **fields) for i in range(n)]


def test_every_field_reaches_postgres(pipeline: Pipeline, stream_client: redis.Redis, settings: Settings) -> None:
    event = full_event()
    push(stream_client, settings.redis.namespace, [event])

    report = pipeline.run_transfer()

    assert (report.read_entries, report.inserted, report.duplicates, report.remaining) == (1, 1, 0, 0)
    columns = "event_id::text, event_type, generation_id, user_id::text, timestamp, duration_ms, success, error_type,"
    columns += " error_message, model_checkpoint, generation_type, queue_length, queue_wait_time_ms,"
    columns += " generation_time_ms, batch_size, image_width, image_height, prompt_tokens, attributes,"
    columns += " error_fingerprint"
    with psycopg.connect(settings.postgres.dsn) as conn:
        row = conn.execute(f"SELECT {columns} FROM generation_events").fetchone()
    assert row is not None
    expected = list(event_to_row(event))
    expected[-2] = dict(event.attributes)
    assert list(row) == expected
    # A failed completion is stored with its error group, computed here, once.
    assert row[-1] == fingerprint("OutOfMemory", "CUDA out of memory — tried to allocate <n> GiB")


def test_only_failed_completions_get_an_error_group(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    sent = [
        make_event("completion", timestamp=NOW, success=False, error_type="Timeout", error_message="after 30s"),
        make_event("completion", timestamp=NOW, success=False),  # no type, no message: a group too
        make_event("completion", timestamp=NOW, success=True, error_type="Timeout", error_message="after 30s"),
        make_event("request", timestamp=NOW),
        make_event("cancellation", timestamp=NOW, error_type="Timeout", error_message="after 30s"),
    ]
    push(stream_client, settings.redis.namespace, sent)
    pipeline.run_transfer()
    with psycopg.connect(settings.postgres.dsn) as conn:
        stored: dict[str, str | None] = dict(
            conn.execute("SELECT event_id::text, error_fingerprint FROM generation_events").fetchall()
        )
    assert [stored[e.event_id] for e in sent] == [
        fingerprint("Timeout", "after 99 s"),
        fingerprint("", ""),
        None,
        None,
        None,
    ]


def test_backlog_is_drained_in_one_run_and_trimmed(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    batch = events(2_345)
    push(stream_client, settings.redis.namespace, batch)
    transfer = replace_batch_size(pipeline, settings, 500)

    report = transfer.run()

    assert report.inserted == 2_345
    assert report.batches == 5
    assert sorted(stored_ids(settings.postgres.dsn)) == sorted(e.event_id for e in batch)
    assert stream_client.xlen(StreamKeys(settings.redis.namespace).stream) == 0
    assert pending_count(stream_client, settings.redis.namespace) == 0


def replace_batch_size(pipeline: Pipeline, settings: Settings, size: int, **kwargs: Any) -> Transfer:
    return Transfer(
        redis_client=pipeline.redis,
        pool=pipeline.pool,
        keys=StreamKeys(settings.redis.namespace),
        settings=replace(settings.transfer, batch_size=size),
        **kwargs,
    )


def test_retried_events_are_stored_once(pipeline: Pipeline, stream_client: redis.Redis, settings: Settings) -> None:
    batch = events(50)
    push(stream_client, settings.redis.namespace, batch)
    push(stream_client, settings.redis.namespace, batch[:20])  # a client retried these
    pipeline.run_transfer()
    push(stream_client, settings.redis.namespace, batch[10:30])  # and later again
    report = pipeline.run_transfer()

    assert report.duplicates == 20
    ids = stored_ids(settings.postgres.dsn)
    assert sorted(ids) == sorted(e.event_id for e in batch)


class Crash(RuntimeError):
    pass


def crash_at(point: str) -> Any:
    def fail(name: str) -> None:
        if name == point:
            raise Crash(name)

    return fail


def test_crash_between_commit_and_ack_loses_and_duplicates_nothing(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    batch = events(1_000)
    push(stream_client, settings.redis.namespace, batch)
    crashing = replace_batch_size(pipeline, settings, 300, fail_point=crash_at("after_commit"))

    with pytest.raises(Crash):
        crashing.run()
    committed = len(stored_ids(settings.postgres.dsn))  # committed, never acknowledged
    assert committed in (300, 600)  # one batch per store worker that reached the crash point
    left_pending = pending_count(stream_client, settings.redis.namespace)
    assert left_pending >= committed  # the stored batches, plus whatever was read ahead

    # Recovery by another worker once the crashed one's entries are idle long enough.
    successor = Transfer(
        redis_client=pipeline.redis,
        pool=pipeline.pool,
        keys=StreamKeys(settings.redis.namespace),
        settings=replace(settings.transfer, reclaim_idle_ms=0),
    )
    report = successor.run()

    assert report.reclaimed == left_pending
    assert report.duplicates == committed
    ids = stored_ids(settings.postgres.dsn)
    assert len(ids) == len(set(ids)) == 1_000
    assert pending_count(stream_client, settings.redis.namespace) == 0


def test_same_worker_finishes_its_own_unacknowledged_entries(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    push(stream_client, settings.redis.namespace, events(100))
    state = {"fail": True}

    def fail_once(name: str) -> None:
        if name == "after_commit" and state.pop("fail", False):
            raise Crash(name)

    transfer = replace_batch_size(pipeline, settings, 40, fail_point=fail_once)
    with pytest.raises(Crash):
        transfer.run()
    report = transfer.run()

    assert report.duplicates == 40
    assert len(set(stored_ids(settings.postgres.dsn))) == 100
    assert pending_count(stream_client, settings.redis.namespace) == 0


def test_postgres_down_acknowledges_nothing_and_next_run_delivers_all(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    batch = events(200)
    push(stream_client, settings.redis.namespace, batch)
    down = replace(
        settings, postgres=PostgresSettings(dsn="postgresql://postgres@127.0.0.1:1/none", connect_timeout_s=1)
    )
    broken = Pipeline.of(down)
    try:
        with pytest.raises(Exception) as error:
            broken.transfer.run()
        assert "connection" in str(error.value).lower() or "timeout" in str(error.value).lower()
        stream = StreamKeys(settings.redis.namespace).stream
        assert stream_client.xlen(stream) == 200  # nothing trimmed
        consumer = broken.transfer.consumer
    finally:
        broken.close()

    # The same worker, once Postgres is back, takes its delivered entries again.
    recovered = Transfer(
        redis_client=pipeline.redis,
        pool=pipeline.pool,
        keys=StreamKeys(settings.redis.namespace),
        settings=settings.transfer,
        consumer=consumer,
    )
    recovered.run()
    assert sorted(stored_ids(settings.postgres.dsn)) == sorted(e.event_id for e in batch)
    assert pending_count(stream_client, settings.redis.namespace) == 0


def dead_letters(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT stream_entry_id, reason FROM generation_events_dead_letter").fetchall()
    return [(r[0], r[1]) for r in rows]


def test_poison_entries_are_dead_lettered_and_the_rest_flows(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    ns = settings.redis.namespace
    good = events(30)
    push(stream_client, ns, good[:10])
    garbage = push_raw(stream_client, ns, {b"e": b"\xff\xfe not protobuf \x00"})
    no_field = push_raw(stream_client, ns, {b"something": b"else"})
    invalid = push_raw(stream_client, ns, {b"e": make_event(user_id="nobody").SerializeToString()})
    push(stream_client, ns, good[10:])

    report = pipeline.run_transfer()

    assert report.inserted == 30
    assert report.dead_lettered == 3
    assert sorted(stored_ids(settings.postgres.dsn)) == sorted(e.event_id for e in good)
    reasons = dict(dead_letters(settings.postgres.dsn))
    assert set(reasons) == {garbage.decode(), no_field.decode(), invalid.decode()}
    assert "user_id" in reasons[invalid.decode()]
    assert "field" in reasons[no_field.decode()]
    dead_stream: Any = stream_client.xrange(StreamKeys(ns).dead_letter)
    assert sorted(f[b"entry_id"] for _, f in dead_stream) == sorted([garbage, no_field, invalid])
    assert pending_count(stream_client, ns) == 0


def test_row_refused_by_postgres_is_isolated(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    with psycopg.connect(settings.postgres.dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE generation_events ADD CONSTRAINT no_boom CHECK (model_checkpoint <> 'boom')")
    batch = events(100, model_checkpoint="sdxl")
    batch[37].model_checkpoint = "boom"
    push(stream_client, settings.redis.namespace, batch)

    report = pipeline.run_transfer()

    assert (report.inserted, report.dead_lettered, report.duplicates) == (99, 1, 0)
    assert batch[37].event_id not in stored_ids(settings.postgres.dsn)
    [(_, reason)] = dead_letters(settings.postgres.dsn)
    assert "refused by Postgres" in reason and "no_boom" in reason


def test_entry_delivered_too_often_is_dead_lettered(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    ns = settings.redis.namespace
    pipeline.transfer.ensure_group()
    push(stream_client, ns, events(1))
    stream = StreamKeys(ns).stream
    for _ in range(settings.transfer.max_deliveries):  # a worker that keeps dying on this entry
        stream_client.xreadgroup(TRANSFER_GROUP, "doomed", {stream: "0" if _ else ">"})
    successor = Transfer(
        redis_client=pipeline.redis,
        pool=pipeline.pool,
        keys=StreamKeys(ns),
        settings=replace(settings.transfer, reclaim_idle_ms=0),
    )
    report = successor.run()

    assert (report.reclaimed, report.dead_lettered, report.inserted) == (1, 1, 0)
    [(_, reason)] = dead_letters(settings.postgres.dsn)
    assert "delivered" in reason


def test_two_workers_at_once_store_each_event_once(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    batch = events(20_000)
    for start in range(0, len(batch), 5_000):
        push(stream_client, settings.redis.namespace, batch[start : start + 5_000])
    workers = [replace_batch_size(pipeline, settings, 1_000) for _ in range(2)]
    reports = []
    errors: list[BaseException] = []

    def work(transfer: Transfer) -> None:
        try:
            reports.append(transfer.run())
        except BaseException as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    assert errors == []
    assert sum(r.inserted for r in reports) == 20_000
    assert all(r.read_entries > 0 for r in reports), "both workers took part"
    ids = stored_ids(settings.postgres.dsn)
    assert len(ids) == len(set(ids)) == 20_000
    assert pending_count(stream_client, settings.redis.namespace) == 0


def test_transfer_marks_the_hours_it_touched_dirty(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    hour = NOW.replace(minute=0, second=0)
    push(stream_client, settings.redis.namespace, [make_event(timestamp=hour - timedelta(hours=h)) for h in (0, 0, 3)])
    pipeline.run_transfer()
    with psycopg.connect(settings.postgres.dsn) as conn:
        hours = sorted(r[0] for r in conn.execute("SELECT hour FROM generation_dirty_hours").fetchall())
    assert hours == [hour - timedelta(hours=3), hour]


def test_every_reclaimed_entry_is_capped_though_our_own_pending_entries_lie_between(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    ns = settings.redis.namespace
    stream = StreamKeys(ns).stream
    pipeline.transfer.ensure_group()
    batch = events(40)
    push(stream_client, ns, batch)
    successor = Transfer(
        redis_client=pipeline.redis,
        pool=pipeline.pool,
        keys=StreamKeys(ns),
        settings=settings.transfer,  # reclaims entries idle for reclaim_idle_ms (60 s), not fresher ones
    )
    delivered: Any = stream_client.xreadgroup(TRANSFER_GROUP, "doomed", {stream: ">"})
    ids = [entry_id for entry_id, _ in delivered[0][1]]
    doomed, ours = ids[0::2], ids[1::2]
    # Every other entry: a stopped worker died on it max_deliveries times, the last an hour ago.
    max_deliveries = settings.transfer.max_deliveries
    stream_client.xclaim(stream, TRANSFER_GROUP, "doomed", 0, doomed, idle=3_600_000, retrycount=max_deliveries)
    # The ones between: read by the successor a moment ago and not stored yet (not idle, not reclaimed).
    stream_client.xclaim(stream, TRANSFER_GROUP, successor.consumer, 0, ours, idle=0, retrycount=1)

    report = successor.run()

    assert (report.reclaimed, report.dead_lettered, report.inserted) == (20, 20, 20)
    assert sorted(entry_id for entry_id, _ in dead_letters(settings.postgres.dsn)) == sorted(i.decode() for i in doomed)
    assert sorted(stored_ids(settings.postgres.dsn)) == sorted(e.event_id for e in batch[1::2])
    assert pending_count(stream_client, ns) == 0


def test_every_reread_entry_is_capped_though_deleted_entries_lie_between(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    ns = settings.redis.namespace
    stream = StreamKeys(ns).stream
    pipeline.transfer.ensure_group()
    push(stream_client, ns, events(1))  # left behind by a stopped worker an hour ago: reclaimed first
    stopped: Any = stream_client.xreadgroup(TRANSFER_GROUP, "stopped", {stream: ">"})
    stream_client.xclaim(stream, TRANSFER_GROUP, "stopped", 0, [stopped[0][1][0][0]], idle=3_600_000)
    push(stream_client, ns, events(40))
    delivered: Any = stream_client.xreadgroup(TRANSFER_GROUP, "worker", {stream: ">"})
    ids = [entry_id for entry_id, _ in delivered[0][1]]
    kept, deleted = ids[0::2], ids[1::2]
    # The worker failed on every other entry max_deliveries times (and read them a moment ago).
    max_deliveries = settings.transfer.max_deliveries
    stream_client.xclaim(stream, TRANSFER_GROUP, "worker", 0, kept, retrycount=max_deliveries)
    calls: list[str] = []

    def delete_after_reclaim(point: str) -> None:
        # Entries deleted from the stream (by hand) while pending stay in the PEL, and a history read
        # skips them. XAUTOCLAIM purges them from the PEL, so delete them once the reclaim is done.
        calls.append(point)
        if calls == ["after_commit", "after_ack"]:
            stream_client.xdel(stream, *deleted)

    transfer = replace_batch_size(pipeline, settings, 10_000, consumer="worker", fail_point=delete_after_reclaim)
    report = transfer.run()

    # 1 reclaimed + the 20 kept entries re-read as history (the deleted ones between were skipped).
    assert (report.reclaimed, report.read_entries, report.dead_lettered, report.inserted) == (1, 21, 20, 1)
    assert sorted(entry_id for entry_id, _ in dead_letters(settings.postgres.dsn)) == sorted(i.decode() for i in kept)


def test_collections_are_relaxed_while_any_run_drains_and_restored_by_the_last(
    pipeline: Pipeline, stream_client: redis.Redis, settings: Settings
) -> None:
    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    push(stream_client, settings.redis.namespace, events(30))
    transfer = replace_batch_size(pipeline, settings, 10, fail_point=lambda _: seen.append(gc.get_threshold()))
    with _fewer_collections.active():  # another run, in another thread, still going when this one ends
        assert transfer.run().inserted == 30
        assert gc.get_threshold()[0] >= RELAXED_GC_THRESHOLD
    assert seen and all(threshold[0] >= RELAXED_GC_THRESHOLD for threshold in seen)
    assert gc.get_threshold() == before
    assert transfer.run().read_entries == 0
    assert gc.get_threshold() == before
