"""The event counter (0012_event_counts.sql) against count(*): any transfers, duplicates, deletes, workers at once.

A stateful property test on real Postgres and Redis: rules record events (old and recent), record some
again (duplicates transfer skips), transfer with one worker or two at once (small batches: several
statements per run), prune old events (small batches: several DELETEs), delete rows by hand and empty
the table. After every step the counter GetPipelineStatus reads equals `count(*)`.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import psycopg
import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from generation_analytics.service.migrate import migrate, schema_dir
from generation_analytics.service.pipeline.retention import prune
from generation_analytics.service.pipeline.transfer import Transfer
from generation_analytics.service.pipeline.worker import Pipeline
from generation_analytics.service.queries.status import DATABASE_STATUS
from generation_analytics.service.settings import RetentionSettings, Settings
from generation_analytics.service.stream import StreamKeys
from generation_analytics.v1 import events_pb2
from tests.factories import make_event
from tests.fix_pipeline import push
from tests.fix_services import empty_tables

COUNTED = "SELECT coalesce(sum(events), 0) FROM generation_event_counts"
RETENTION_DAYS = 20


def counted_and_real(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        counted = conn.execute(COUNTED).fetchone()
        real = conn.execute("SELECT count(*) FROM generation_events").fetchone()
    assert counted is not None and real is not None
    return int(counted[0]), int(real[0])


@st.composite
def raw_events(draw: st.DrawFn) -> events_pb2.GenerationEvent:
    age = draw(st.sampled_from([timedelta(hours=1), timedelta(days=5), timedelta(days=30), timedelta(days=60)]))
    kind = draw(st.sampled_from(["request", "completion", "cancellation"]))
    return make_event(kind, timestamp=datetime.now(UTC) - age - timedelta(seconds=draw(st.integers(0, 3600))))


class CounterMachine(RuleBasedStateMachine):
    settings: ClassVar[Settings]
    pipeline: ClassVar[Pipeline]
    stream: ClassVar[redis.Redis]

    def __init__(self) -> None:
        super().__init__()
        empty_tables(self.settings.postgres.dsn)
        self.stream.delete(StreamKeys(self.settings.redis.namespace).stream)
        self.recorded: list[events_pb2.GenerationEvent] = []
        self.transferred = False

    def _worker(self, batch_size: int) -> Transfer:
        return Transfer(
            redis_client=self.pipeline.redis,
            pool=self.pipeline.pool,
            keys=StreamKeys(self.settings.redis.namespace),
            settings=replace(self.settings.transfer, batch_size=batch_size),
        )

    @rule(events=st.lists(raw_events(), min_size=1, max_size=40))
    def record(self, events: list[events_pb2.GenerationEvent]) -> None:
        push(self.stream, self.settings.redis.namespace, events)
        self.recorded.extend(events)

    @precondition(lambda self: bool(self.recorded))
    @rule(data=st.data())
    def record_again(self, data: st.DataObject) -> None:
        """Retries of events already accepted (stored or not yet): transfer inserts each once."""
        again = data.draw(st.lists(st.sampled_from(self.recorded), min_size=1, max_size=20))
        push(self.stream, self.settings.redis.namespace, again)

    @rule(batch_size=st.sampled_from([3, 7, 1000]))
    def transfer(self, batch_size: int) -> None:
        self._worker(batch_size).run()
        self.transferred = True

    @rule(batch_size=st.sampled_from([2, 5]))
    def transfer_at_once(self, batch_size: int) -> None:
        """Two workers (two sessions, likely two shards) draining the same stream together."""
        errors: list[BaseException] = []

        def work(worker: Transfer) -> None:
            try:
                worker.run()
            except BaseException as exc:  # asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(self._worker(batch_size),)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        self.transferred = True

    @rule(batch_rows=st.sampled_from([2, 10_000]), shift_days=st.sampled_from([-25, 0, 25]))
    def prune_old(self, batch_rows: int, shift_days: int) -> None:
        """Retention of 20 days run `shift_days` from now (none, some or all events are old), in batches."""
        prune(
            self.pipeline.pool,
            RetentionSettings(days=RETENTION_DAYS, batch_rows=batch_rows),
            now=datetime.now(UTC) + timedelta(days=shift_days),
        )

    @precondition(lambda self: self.transferred)
    @rule(share=st.sampled_from([0.0, 0.5]))
    def delete_by_hand(self, share: float) -> None:
        """An operator's DELETE (or one that matches nothing)."""
        with psycopg.connect(self.settings.postgres.dsn) as conn:
            conn.execute("DELETE FROM generation_events WHERE random() < %s", (share,))

    @rule()
    def truncate(self) -> None:
        with psycopg.connect(self.settings.postgres.dsn) as conn:
            conn.execute("TRUNCATE generation_events")

    @invariant()
    def counter_equals_count(self) -> None:
        counted, real = counted_and_real(self.settings.postgres.dsn)
        assert counted == real


@pytest.mark.timeout(600)
def test_counter_equals_count_under_any_history(settings: Settings, stream_client: redis.Redis) -> None:
    pipeline = Pipeline.of(settings)
    try:
        CounterMachine.settings = settings
        CounterMachine.pipeline = pipeline
        CounterMachine.stream = stream_client
        run_state_machine_as_test(
            CounterMachine,
            settings=hypothesis_settings(
                max_examples=15,
                stateful_step_count=15,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        pipeline.close()


def test_status_reports_the_counted_figure(settings: Settings, stream_client: redis.Redis) -> None:
    pipeline = Pipeline.of(settings)
    try:
        events = [make_event(timestamp=datetime.now(UTC) - timedelta(minutes=5)) for _ in range(25)]
        push(stream_client, settings.redis.namespace, events + events[:10])
        pipeline.run_transfer()
        with psycopg.connect(settings.postgres.dsn) as conn:
            row = conn.execute(DATABASE_STATUS).fetchone()
        assert row is not None and row[1] == 25
    finally:
        pipeline.close()


def test_migration_starts_from_the_exact_count(empty_db_dsn: str, tmp_path: Path) -> None:
    """A database with events already stored before 0012: the counter starts at their number."""
    before = tmp_path / "schema"
    before.mkdir()
    for path in schema_dir().iterdir():
        if path.suffix == ".sql" and int(path.name[:4]) < 12:
            shutil.copy(path, before / path.name)
    migrate(empty_db_dsn, folder=before)
    with psycopg.connect(empty_db_dsn) as conn:
        conn.execute(
            "INSERT INTO generation_events (event_id, event_type, generation_id, user_id, timestamp)"
            " SELECT gen_random_uuid(), 'request', 'g' || i, gen_random_uuid(), now() FROM generate_series(1, 1234) i"
        )
    assert 12 in migrate(empty_db_dsn)
    assert counted_and_real(empty_db_dsn) == (1234, 1234)
