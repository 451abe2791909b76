"""generation_events partitioned by week (migration 0016): the migration of a populated table, dedupe by
event_id across partitions, and retention by dropping days — as a stateful property test over any history
of recording, retries (with the timestamp a server assigns per attempt), transfer and the passing of days.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from generation_analytics.service.migrate import load_migrations, migrate
from generation_analytics.service.pipeline import partitions
from generation_analytics.service.pipeline.retention import prune
from generation_analytics.service.pipeline.worker import Pipeline
from generation_analytics.service.settings import RetentionSettings, Settings
from generation_analytics.service.stream import StreamKeys
from generation_analytics.v1 import events_pb2
from tests.factories import make_event, timestamp
from tests.fix_pipeline import push
from tests.fix_services import empty_tables

RETENTION_DAYS = 3
USERS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(4)]


def rows(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def stored(dsn: str) -> dict[str, datetime]:
    """event_id -> timestamp of every stored event (asserting none is stored twice)."""
    found = rows(dsn, "SELECT event_id::text, timestamp FROM generation_events")
    assert len({event_id for event_id, _ in found}) == len(found), "an event_id is stored twice"
    return dict(found)


def assert_bookkeeping_agrees(dsn: str) -> None:
    """generation_event_ids holds exactly the stored ids; the counters (0012) equal the rows."""
    ids = {row[0] for row in rows(dsn, "SELECT event_id::text FROM generation_event_ids")}
    assert ids == set(stored(dsn))
    ((counted, real),) = rows(
        dsn,
        "SELECT (SELECT coalesce(sum(events), 0) FROM generation_event_counts),"
        " (SELECT count(*) FROM generation_events)",
    )
    assert counted == real
    ((latest_stored, newest_row),) = rows(
        dsn,
        "SELECT (SELECT max(latest_at) FROM generation_event_counts), (SELECT max(created_at) FROM generation_events)",
    )
    # When the newest event was stored (GetPipelineStatus): never earlier than a row there is; later only
    # when retention removed the newest rows.
    assert newest_row is None or (latest_stored is not None and latest_stored >= newest_row)


def partitions_without_kind_statistics(dsn: str) -> list[str]:
    """Partitions the planner would misjudge "failures of error type X" on (partitions.KIND_STATISTICS)."""
    found = rows(
        dsn,
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'generation_events'::regclass"
        " AND NOT EXISTS (SELECT 1 FROM pg_statistic_ext AS s WHERE s.stxrelid = c.oid)",
    )
    return [name for (name,) in found]


class PartitionMachine(RuleBasedStateMachine):
    settings: ClassVar[Settings]
    pipeline: ClassVar[Pipeline]
    stream: ClassVar[redis.Redis]
    # What the histories did, over all of them: the test fails if none dropped a day or deleted row by row.
    seen: ClassVar[dict[str, int]] = {"dropped days": 0, "rows dropped or deleted": 0, "retries stored once": 0}

    def __init__(self) -> None:
        super().__init__()
        dsn = self.settings.postgres.dsn
        empty_tables(dsn)
        self.stream.delete(StreamKeys(self.settings.redis.namespace).stream)
        self.now = datetime.now(UTC)
        with psycopg.connect(dsn, autocommit=True) as conn:  # days an earlier history dropped come back
            partitions.ensure_days_ahead(conn, self.now)
        self.pushed: list[events_pb2.GenerationEvent] = []  # not yet transferred
        self.candidates: dict[str, set[datetime]] = {}  # stored id -> the timestamps its row may carry
        self.sent: list[events_pb2.GenerationEvent] = []

    def _push(self, events: list[events_pb2.GenerationEvent]) -> None:
        push(self.stream, self.settings.redis.namespace, events)
        self.pushed += events
        self.sent += events

    @initialize(days=st.lists(st.integers(-2, 9), min_size=2, max_size=5))
    def some_history(self, days: list[int]) -> None:
        """Every history starts with events on a few days, stored, and one of them sent again."""
        for day in days:
            self.record(day, 600, 3)
        self._push(self.sent[:1])
        self.transfer()

    @rule(day=st.integers(-2, 9), minutes=st.integers(0, 24 * 60 - 1), count=st.integers(1, 8))
    def record(self, day: int, minutes: int, count: int) -> None:
        """Events on a day around the (virtual) today: past days, today, days ahead with or without a
        partition yet (beyond a week ahead they land in the default partition)."""
        midnight = self.now.replace(hour=0, minute=0, second=0, microsecond=0)
        when = midnight + timedelta(days=day, minutes=minutes)
        user = USERS[minutes % len(USERS)]
        self._push([make_event(user_id=user, timestamp=when + timedelta(seconds=i)) for i in range(count)])

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data(), shift_s=st.integers(-86_400, 86_400))
    def retry(self, data: st.DataObject, shift_s: int) -> None:
        """A retry of an event already sent, with another timestamp (the server assigns one per attempt
        to events sent without): stored once all the same, unless retention removed the first."""
        original = data.draw(st.sampled_from(self.sent))
        again = events_pb2.GenerationEvent()
        again.CopyFrom(original)
        moved = original.timestamp.ToDatetime(tzinfo=UTC) + timedelta(seconds=shift_s)
        again.timestamp.CopyFrom(timestamp(moved))
        self._push([again])

    @rule()
    def transfer(self) -> None:
        report = self.pipeline.run_transfer()
        self.seen["retries stored once"] += report.duplicates
        batch: dict[str, set[datetime]] = {}
        for event in self.pushed:
            batch.setdefault(event.event_id, set()).add(event.timestamp.ToDatetime(tzinfo=UTC))
        for event_id, moments in batch.items():
            self.candidates.setdefault(event_id, moments)  # an id already stored stays as it was
        self.pushed = []

    @rule(days=st.integers(1, 3))
    def days_pass(self, days: int) -> None:
        """Time moves on and retention runs: rows before the cutoff go, whole weeks by dropping them."""
        self.now += timedelta(days=days)
        cutoff = self.now - timedelta(days=RETENTION_DAYS)
        before = stored(self.settings.postgres.dsn)
        report = prune(self.pipeline.pool, self.settings.retention, now=self.now)
        self.seen["dropped days"] += len(report.dropped_partitions)
        self.seen["rows dropped or deleted"] += report.deleted
        for event_id, moment in before.items():
            if moment < cutoff:
                del self.candidates[event_id]
        assert report.deleted == len(before) - len(self.candidates)
        with psycopg.connect(self.settings.postgres.dsn) as conn:
            left = partitions.partitions(conn)
        assert not {p.name for p in left} & set(report.dropped_partitions)
        assert partitions_without_kind_statistics(self.settings.postgres.dsn) == []
        assert all(p.is_default or p.end is None or p.end > cutoff for p in left), "a day past retention stayed"
        midnight = self.now.replace(hour=0, minute=0, second=0, microsecond=0)
        # Each day ahead has a partition, unless the default partition holds events of its week already.
        weeks_in_default = {partitions.week_start(moment) for moment in self._default_rows()}
        for offset in range(partitions.DAYS_AHEAD + 1):
            day = midnight + timedelta(days=offset)
            in_default = partitions.week_start(day) in weeks_in_default
            assert any(p.covers(day) for p in left) or in_default, f"no partition for {day.date()}"

    def _default_rows(self) -> list[datetime]:
        found = rows(self.settings.postgres.dsn, "SELECT timestamp FROM generation_events_default")
        return [moment for (moment,) in found]

    @invariant()
    def each_event_once_and_the_books_agree(self) -> None:
        found = stored(self.settings.postgres.dsn)
        assert set(found) == set(self.candidates)
        for event_id, moment in found.items():
            assert moment in self.candidates[event_id]
        assert_bookkeeping_agrees(self.settings.postgres.dsn)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_partitions_under_any_history(settings: Settings, stream_client: redis.Redis) -> None:
    settings = replace(settings, retention=RetentionSettings(days=RETENTION_DAYS, batch_rows=5))
    pipeline = Pipeline.of(settings)
    try:
        PartitionMachine.settings = settings
        PartitionMachine.pipeline = pipeline
        PartitionMachine.stream = stream_client
        run_state_machine_as_test(
            PartitionMachine,
            settings=hypothesis_settings(
                max_examples=15, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
            ),
        )
    finally:
        pipeline.close()
    assert all(PartitionMachine.seen.values()), PartitionMachine.seen


# -- the migration of a populated table ------------------------------------------------------------------

OLD_ROW = """
INSERT INTO generation_events (event_id, event_type, generation_id, user_id, timestamp, duration_ms, success,
                               model_checkpoint)
VALUES (%s, 'completion', 'g', %s, %s, 1200, true, 'sdxl')
"""


@pytest.fixture
def before_0016(empty_db_dsn: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A database migrated up to 0015 (the unpartitioned table), and a folder holding every migration."""
    shipped = load_migrations()
    for m in shipped:
        if m.version < 16:
            (tmp_path / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
    migrate(empty_db_dsn, folder=tmp_path)
    yield empty_db_dsn, tmp_path
    # (the database is dropped by empty_db_dsn)


def test_0016_partitions_a_populated_table_without_losing_or_doubling_a_row(
    before_0016: tuple[str, Path], settings: Settings, stream_client: redis.Redis
) -> None:
    dsn, folder = before_0016
    now = datetime.now(UTC)
    old = [(str(uuid.uuid4()), USERS[i % 4], now - timedelta(days=i % 20, minutes=i)) for i in range(300)]
    old.append((str(uuid.uuid4()), USERS[0], now + timedelta(minutes=2)))  # a few minutes ahead, as allowed
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(OLD_ROW, old)
    before = rows(dsn, "SELECT id, event_id::text, timestamp FROM generation_events ORDER BY id")

    later = [m for m in load_migrations() if m.version >= 16]  # 0016 and any after it
    for m in later:
        (folder / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
    assert migrate(dsn, folder=folder) == [m.version for m in later]

    assert rows(dsn, "SELECT id, event_id::text, timestamp FROM generation_events ORDER BY id") == before
    assert rows(dsn, "SELECT relkind FROM pg_class WHERE relname = 'generation_events'") == [("p",)]
    assert rows(dsn, "SELECT count(*) FROM generation_events_legacy") == [(len(old),)]
    assert_bookkeeping_agrees(dsn)
    assert rows(dsn, "SELECT max(latest_at) FROM generation_event_counts") == rows(
        dsn, "SELECT max(created_at) FROM generation_events"
    )
    # Every index of the old table serves the new one (attached, not rebuilt), under its old name.
    parent_indexes = {r[0] for r in rows(dsn, "SELECT indexname FROM pg_indexes WHERE tablename = 'generation_events'")}
    assert {"generation_events_timestamp_idx", "generation_events_user_timestamp_idx"} <= parent_indexes
    invalid = rows(dsn, "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid")
    assert invalid == []
    assert partitions_without_kind_statistics(dsn) == []

    # The pipeline on the migrated database: retries of old events are recognised, new ones get new ids.
    migrated = replace(settings, postgres=replace(settings.postgres, dsn=dsn))
    pipeline = Pipeline.of(migrated)
    try:
        new = [make_event(user_id=USERS[1], timestamp=now - timedelta(minutes=i)) for i in range(20)]
        retries = [make_event(event_id=event_id, user_id=user, timestamp=moment) for event_id, user, moment in old[:50]]
        push(stream_client, migrated.redis.namespace, new + retries)
        report = pipeline.run_transfer()
        assert (report.inserted, report.duplicates, report.dead_lettered) == (20, 50, 0)
    finally:
        pipeline.close()
    found = stored(dsn)
    assert len(found) == len(old) + 20
    assert_bookkeeping_agrees(dsn)
    ((lowest_new_id,),) = rows(
        dsn, "SELECT min(id) FROM generation_events WHERE event_id = ANY(%s::uuid[])", ([e.event_id for e in new],)
    )
    assert lowest_new_id > before[-1][0], "the identity did not continue after the old ids"
