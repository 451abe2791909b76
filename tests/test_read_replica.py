"""Queries from a streaming read replica (issue 16, part 4): what they answer is what the replica has
replayed, `data_as_of` says how far that is, and a dead replica sends queries to the primary and back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import requests

from generation_analytics.service.migrate import migrate
from generation_analytics.service.settings import PostgresSettings, RedisSettings, ScheduleSettings, Settings
from generation_analytics.v1 import analytics_pb2, events_pb2, pipeline_pb2
from tests.factories import make_event
from tests.fix_replica import ReplicatedPostgres
from tests.fix_server import LiveServer


@pytest.fixture
def replica_server(replicated_postgres: ReplicatedPostgres, redis_url: str, namespace: str) -> Iterator[LiveServer]:
    """The service on the pair: writes and the pipeline on the primary, queries on the replica."""
    name = f"ga_replica_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(replicated_postgres.primary.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    migrate(replicated_postgres.primary.dsn(name))
    replicated_postgres.wait_for_replay()
    settings = replace(
        Settings(),
        postgres=PostgresSettings(
            dsn=replicated_postgres.primary.dsn(name),
            read_dsn=replicated_postgres.replica.dsn(name),
            replica_retry_s=0.2,
            pool_max_size=4,
        ),
        redis=RedisSettings(url=redis_url, namespace=namespace),
        schedule=ScheduleSettings(enabled=False),
    )
    server = LiveServer(settings)
    try:
        wait_until(lambda: server.runtime.queries.reads.replica_up, "the replica was never used")
        yield server
    finally:
        server.close()


def wait_until(condition: object, message: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def record_successes(server: LiveServer, n: int) -> None:
    """`n` successful generations an hour ago, stored and aggregated on the primary."""
    when = datetime.now(UTC) - timedelta(hours=1)
    events = [make_event("completion", timestamp=when) for _ in range(n)]
    reply = server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events))
    assert reply.accepted_count == n, reply.rejections
    server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
    assert server.pipeline.RunAggregation(pipeline_pb2.RunAggregationRequest()).remaining_dirty_hours == 0


def overview(server: LiveServer) -> analytics_pb2.GetOverviewResponse:
    return server.analytics.GetOverview(analytics_pb2.GetOverviewRequest(days=1))


def served(server: LiveServer, source: str) -> int:
    return server.runtime.queries.reads.served[source]


def test_queries_answer_what_the_replica_replayed_and_say_as_of_when(
    replica_server: LiveServer, replicated_postgres: ReplicatedPostgres
) -> None:
    record_successes(replica_server, 3)
    replicated_postgres.wait_for_replay()
    before = served(replica_server, "replica")
    assert overview(replica_server).successful_generations == 3
    assert served(replica_server, "replica") == before + 1

    with psycopg.connect(replicated_postgres.replica.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        paused_at = datetime.now(UTC)
        try:
            record_successes(replica_server, 4)
            stale = overview(replica_server)
            # The primary has 7; the replica, paused, still answers 3, and says its data is from before the
            # pause rather than "now".
            assert stale.successful_generations == 3
            assert stale.data_as_of.ToDatetime(UTC) <= paused_at
        finally:
            conn.execute("SELECT pg_wal_replay_resume()")

    replicated_postgres.wait_for_replay()
    asked_at = datetime.now(UTC)
    fresh = overview(replica_server)
    assert fresh.successful_generations == 7
    assert fresh.data_as_of.ToDatetime(UTC) >= asked_at - timedelta(seconds=1)
    assert served(replica_server, "primary") == 0


def test_a_dead_replica_sends_queries_to_the_primary_until_it_is_back(
    replica_server: LiveServer, replicated_postgres: ReplicatedPostgres
) -> None:
    record_successes(replica_server, 2)
    replicated_postgres.wait_for_replay()
    assert overview(replica_server).successful_generations == 2

    replicated_postgres.replica.stop("immediate")
    record_successes(replica_server, 5)
    # The query in flight when the replica died is rerun on the primary: no error, and the newest figure.
    assert overview(replica_server).successful_generations == 7
    assert replica_server.runtime.queries.reads.replica_up is False
    primary_answers = served(replica_server, "primary")
    assert primary_answers >= 1
    metrics = requests.get(f"{replica_server.http}/metrics", timeout=10).text
    assert "ga_read_replica_up 0.0" in metrics
    assert f'ga_queries_served_total{{source="primary"}} {float(primary_answers)}' in metrics
    # Every kind of answer keeps coming meanwhile, streamed ones too.
    top = replica_server.analytics.ListTopUsers(analytics_pb2.ListTopUsersRequest(days=1))
    assert len(top.users) == 7
    exported = list(replica_server.analytics.ExportEvents(analytics_pb2.ExportEventsRequest(days=1)))
    assert sum(len(batch.events) for batch in exported) == 7

    replicated_postgres.replica.start()
    wait_until(lambda: replica_server.runtime.queries.reads.replica_up, "queries never went back to the replica")
    replicated_postgres.wait_for_replay()
    before = served(replica_server, "replica")
    assert overview(replica_server).successful_generations == 7
    assert served(replica_server, "replica") == before + 1


def test_a_failing_query_is_not_a_failing_replica(replica_server: LiveServer) -> None:
    """Errors of the query itself (a bad statement, a canceled one) reach the caller unchanged: they are not
    rerun on the primary, and the replica stays in use."""
    reads = replica_server.runtime.queries.reads

    async def missing_table(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("SELECT * FROM no_such_table")

    async def canceled(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("SET statement_timeout = 10")
        try:
            await conn.execute("SELECT pg_sleep(1)")
        finally:
            await conn.execute("RESET statement_timeout")

    with pytest.raises(psycopg.errors.UndefinedTable):
        replica_server.call(reads.run(missing_table))
    with pytest.raises(psycopg.errors.QueryCanceled):
        replica_server.call(reads.run(canceled))
    assert reads.replica_up is True
    assert served(replica_server, "primary") == 0
