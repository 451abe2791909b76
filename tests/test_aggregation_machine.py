"""Stateful property test of aggregation: any events, any order, any number of aggregators at once.

Rules record events at any time within retention (hour, day and month edges, days apart, far-late,
a few minutes ahead, duplicates), transfer, aggregate (everything dirty, or a range), and run three
aggregators at once (two other processes and this one). After every step: no aggregation run failed,
and — whenever no hour waits — every rollup table and every answer read from them equals a recompute
from the raw rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import psycopg
import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from generation_analytics.service.hours import hour_floor
from generation_analytics.service.pipeline.aggregate import AggregationReport
from generation_analytics.service.pipeline.worker import Pipeline
from generation_analytics.service.settings import Settings
from generation_analytics.service.stream import StreamKeys
from generation_analytics.v1 import events_pb2
from tests.factories import make_event
from tests.fix_pipeline import AggregatorProcess, push
from tests.fix_services import empty_tables
from tests.rollup_check import assert_queries_match_raw, assert_rollups_match_raw

pytestmark = pytest.mark.slow

USERS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(6)]
MODELS = ["", "sdxl-1.0", "flux-dev"]
ERRORS = ["", "OutOfMemory", "Timeout"]
# Aggregation keeps (never recomputes) hours older than retention; stay well inside it.
OLDEST_DAYS = 88
EDGES = (
    timedelta(0),
    timedelta(microseconds=1),
    timedelta(minutes=59, seconds=59, microseconds=999_999),
    timedelta(hours=23),
    timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999),
)


def month_start(moment: datetime, months_back: int) -> datetime:
    year, month = moment.year, moment.month - months_back
    while month < 1:
        year, month = year - 1, month + 12
    return datetime(year, month, 1, tzinfo=UTC)


@st.composite
def moments(draw: st.DrawFn) -> datetime:
    """A time within retention, biased to the edges where rollups split: hours, days, months, now."""
    now = datetime.now(UTC)
    kind = draw(st.sampled_from(["recent", "day edge", "month edge", "far", "ahead"]))
    if kind == "recent":
        moment = now - timedelta(seconds=draw(st.integers(0, 30 * 3600)))
    elif kind == "day edge":
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        moment = midnight - timedelta(days=draw(st.integers(0, OLDEST_DAYS))) + draw(st.sampled_from(EDGES))
    elif kind == "month edge":
        start = month_start(now, draw(st.integers(0, 2)))
        moment = start + draw(st.sampled_from([-EDGES[1], -timedelta(hours=1), *EDGES[:3]]))
    elif kind == "far":
        moment = now - timedelta(days=draw(st.integers(45, OLDEST_DAYS)), seconds=draw(st.integers(0, 86_399)))
    else:  # a client whose clock is a few minutes ahead
        moment = now + timedelta(seconds=draw(st.integers(0, 240)))
    oldest = now - timedelta(days=OLDEST_DAYS)
    return min(max(moment, oldest), now + timedelta(minutes=4))


@st.composite
def raw_events(draw: st.DrawFn) -> events_pb2.GenerationEvent:
    kind = draw(st.sampled_from(["request", "completion", "completion", "cancellation"]))
    fields: dict[str, Any] = {
        "user_id": draw(st.sampled_from(USERS)),
        "timestamp": draw(moments()),
        "model_checkpoint": draw(st.sampled_from(MODELS)),
    }
    if kind == "request" and draw(st.booleans()):
        fields["queue_length"] = draw(st.integers(0, 50))
    if kind == "completion":
        fields["success"] = draw(st.booleans())
        fields["duration_ms"] = draw(st.integers(0, 600_000))
        if not fields["success"]:
            fields["error_type"] = draw(st.sampled_from(ERRORS))
            fields["error_message"] = draw(st.sampled_from(["", "boom", "CUDA OOM"]))
    return make_event(kind, **fields)


Command = str | tuple[datetime, datetime]


@st.composite
def commands(draw: st.DrawFn) -> Command:
    """An aggregation request: everything dirty, or a range of hours (a repair)."""
    if draw(st.booleans()):
        return "all"
    start = hour_floor(draw(moments()))
    return (start, start + timedelta(hours=draw(st.integers(0, 72))))


class AggregationMachine(RuleBasedStateMachine):
    # Set by the test for its run: the database, stream and aggregators every example shares.
    settings: ClassVar[Settings]
    pipeline: ClassVar[Pipeline]
    stream: ClassVar[redis.Redis]
    others: ClassVar[list[AggregatorProcess]]

    def __init__(self) -> None:
        super().__init__()
        empty_tables(self.settings.postgres.dsn)
        self.stream.delete(StreamKeys(self.settings.redis.namespace).stream)
        self.recorded: list[events_pb2.GenerationEvent] = []
        self.changed = False

    @rule(events=st.lists(raw_events(), min_size=1, max_size=20))
    def record(self, events: list[events_pb2.GenerationEvent]) -> None:
        push(self.stream, self.settings.redis.namespace, events)
        self.recorded.extend(events)

    @precondition(lambda self: bool(self.recorded))
    @rule(data=st.data())
    def record_again(self, data: st.DataObject) -> None:
        """A client retrying events already accepted: stored once."""
        again = data.draw(st.lists(st.sampled_from(self.recorded), min_size=1, max_size=5))
        push(self.stream, self.settings.redis.namespace, again)

    @rule()
    def transfer(self) -> None:
        self.pipeline.run_transfer()
        self.changed = True

    @rule()
    def aggregate(self) -> None:
        self._check(self.pipeline.run_aggregation())

    @rule(command=commands())
    def aggregate_range(self, command: Command) -> None:
        if isinstance(command, tuple):
            self._check(self.pipeline.run_aggregation(*command))

    @rule(first=commands(), second=commands(), third=commands())
    def aggregate_at_once(self, first: Command, second: Command, third: Command) -> None:
        """Two other processes (as `worker`s would) and this one, started together."""
        self.others[0].start(first)
        self.others[1].start(second)
        mine = third if isinstance(third, tuple) else (None, None)
        self._check(self.pipeline.run_aggregation(*mine))
        for other in self.others:
            self._check(other.result())

    def _check(self, report: AggregationReport) -> None:
        assert report.failed_hours == 0, "an aggregation run failed: see the log for the error"
        self.changed = True

    @invariant()
    def rollups_equal_raw(self) -> None:
        if not self.changed:
            return
        with psycopg.connect(self.settings.postgres.dsn) as conn:
            row = conn.execute("SELECT count(*) FROM generation_dirty_hours").fetchone()
        if row and row[0] == 0:  # otherwise some rollups rightly lag: they wait for aggregation
            assert_rollups_match_raw(self.settings.postgres.dsn)
            assert_queries_match_raw(self.settings.postgres.dsn)
            self.changed = False


@pytest.fixture
def aggregators(settings: Settings) -> Iterator[list[AggregatorProcess]]:
    processes = [AggregatorProcess(settings.postgres.dsn, settings.aggregation) for _ in range(2)]
    yield processes
    for process in processes:
        process.close()


@pytest.mark.timeout(900)  # a failure is shrunk by re-running whole histories
def test_aggregation_under_any_history(
    settings: Settings, stream_client: redis.Redis, aggregators: list[AggregatorProcess]
) -> None:
    # Small batches so that one run takes several transactions, as on a large backlog.
    settings = replace(settings, aggregation=replace(settings.aggregation, batch_hours=4))
    pipeline = Pipeline.of(settings)
    try:
        AggregationMachine.settings = settings
        AggregationMachine.pipeline = pipeline
        AggregationMachine.stream = stream_client
        AggregationMachine.others = aggregators
        run_state_machine_as_test(
            AggregationMachine,
            settings=hypothesis_settings(
                max_examples=12,
                stateful_step_count=16,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        pipeline.close()
