"""Evaluation ticks: every enabled rule measured once per tick cluster-wide, its state stepped, each
transition stored with its value, notifications put in the outbox (`webhooks.py` sends them).

Ticks are the multiples of `interval_s` since the epoch. A rule is claimed in its own transaction with
FOR UPDATE SKIP LOCKED while its `evaluated_tick` is older than the current tick, and leaves with it set
to the current tick: replicas evaluating at the same time share the rules, none twice, and a replica
that comes late in the tick finds nothing left to do. Time is injectable (`tick(now=...)`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from generation_analytics.service.alerts.measure import Measurement, measure
from generation_analytics.service.alerts.rules import RULE_COLUMNS, RuleSpec, rule_from_row
from generation_analytics.service.alerts.states import Outcome, Step, step
from generation_analytics.service.alerts.webhooks import Notice, enqueue
from generation_analytics.service.errors import incident
from generation_analytics.service.settings import AlertSettings, PostgresSettings, RedisSettings
from generation_analytics.service.stream import AsyncRedis, StreamKeys, connect_redis
from generation_analytics.vocabulary import AlertState

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# One transaction per rule, so a commit per rule: without waiting for its WAL flush (a ~10-20 ms fsync on a
# busy disk, most of a rule's cost). What a crash could lose is the last few commits' state, which the next
# tick recomputes from the rollups: the same transition is made again, and its notification queued again.
EVALUATOR_OPTIONS = "-c TimeZone=UTC -c jit=off -c synchronous_commit=off"


def tick_start(now: datetime, interval_s: float) -> datetime:
    """The start of the tick `now` falls in."""
    elapsed = (now - EPOCH).total_seconds()
    return EPOCH + timedelta(seconds=elapsed - elapsed % interval_s)


@dataclass(frozen=True)
class Verdict:
    """One evaluation: the measurement (None when it failed), the outcome, and why it failed."""

    measurement: Measurement | None
    outcome: Outcome
    error: str = ""

    @property
    def value(self) -> float | None:
        return self.measurement.value if self.measurement else None

    @property
    def samples(self) -> int:
        return self.measurement.samples if self.measurement else 0


async def judge(
    conn: psycopg.AsyncConnection[Any], redis_client: AsyncRedis, keys: StreamKeys, spec: RuleSpec, now: datetime
) -> Verdict:
    """Measure `spec` at `now` and compare: breaching or not, NO_DATA below min_samples, ERROR on failure."""
    try:
        async with conn.transaction():  # a savepoint: a failed read leaves the caller's transaction usable
            found = await measure(
                conn, redis_client, keys, metric=spec.metric, scope=spec.scope, scope_value=spec.scope_value,
                window_minutes=spec.window_minutes, now=now,
            )  # fmt: skip
    except Exception as exc:  # any failure to read is the rule's ERROR state, not the tick's end
        error = incident(exc)
        log.warning("alert rule %r: evaluation failed: %s", spec.name, error, exc_info=exc)
        return Verdict(None, Outcome.ERROR, error)
    if found.value is None or found.samples < spec.min_samples:
        return Verdict(found, Outcome.NO_DATA)
    breaching = spec.comparison.holds(found.value, spec.threshold)
    return Verdict(found, Outcome.BREACHING if breaching else Outcome.NOT_BREACHING)


@dataclass
class EvaluationReport:
    evaluated: int = 0
    transitions: int = 0
    notifications: int = 0

    @property
    def processed(self) -> int:
        return self.evaluated


CLAIM_RULE = f"""
SELECT {RULE_COLUMNS} FROM alert_state AS s JOIN alert_rules AS r ON r.id = s.rule_id
WHERE r.enabled AND (s.evaluated_tick IS NULL OR s.evaluated_tick < %(tick)s)
ORDER BY r.id LIMIT 1
FOR UPDATE OF s SKIP LOCKED
"""
UPDATE_STATE = """
UPDATE alert_state SET state = %(state)s, since = %(since)s, value = %(value)s, samples = %(samples)s,
       evaluated_at = %(now)s, evaluated_tick = %(tick)s, error = %(error)s,
       last_notified_at = CASE WHEN %(notify)s THEN %(now)s ELSE last_notified_at END
WHERE rule_id = %(rule_id)s
"""
INSERT_EVENT = """
INSERT INTO alert_events (rule_id, at, from_state, to_state, value, threshold, samples, message)
VALUES (%(rule_id)s, %(now)s, %(from_state)s, %(to_state)s, %(value)s, %(threshold)s, %(samples)s, %(message)s)
RETURNING id
"""


def next_step(
    state: AlertState,
    since: datetime,
    last_notified_at: datetime | None,
    *,
    spec: RuleSpec,
    verdict: Verdict,
    now: datetime,
) -> Step:
    """`states.step` with a rule's periods, after `verdict`."""
    return step(
        state, since, verdict.outcome, now=now, pending_for=timedelta(seconds=spec.pending_for_s),
        repeat_interval=timedelta(seconds=spec.repeat_interval_s), last_notified_at=last_notified_at,
    )  # fmt: skip


class AlertEvaluator:
    """Evaluates the due rules of a tick; `run` is the scheduled job's body."""

    def __init__(
        self,
        *,
        postgres: PostgresSettings,
        redis_settings: RedisSettings,
        settings: AlertSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._postgres = postgres
        self._redis = redis_settings
        self._keys = StreamKeys.of(redis_settings)
        self.settings = settings
        self._clock = clock

    def run(self) -> EvaluationReport:
        return asyncio.run(self.tick())

    async def tick(self, now: datetime | None = None) -> EvaluationReport:
        """Evaluate every rule not yet evaluated in the tick of `now` (default: the clock's)."""
        now = now or self._clock()
        tick = tick_start(now, self.settings.interval_s)
        report = EvaluationReport()
        redis_client = connect_redis(
            self._redis.url, timeout_s=self._redis.socket_timeout_s, cluster=self._redis.cluster
        )
        try:
            async with await psycopg.AsyncConnection.connect(
                self._postgres.dsn, connect_timeout=int(self._postgres.connect_timeout_s),
                options=EVALUATOR_OPTIONS, autocommit=True,
            ) as conn:  # fmt: skip
                while await self._evaluate_one(conn, redis_client, now, tick, report):
                    pass
        finally:
            await redis_client.aclose()
        return report

    async def _evaluate_one(
        self,
        conn: psycopg.AsyncConnection[Any],
        redis_client: AsyncRedis,
        now: datetime,
        tick: datetime,
        report: EvaluationReport,
    ) -> bool:
        async with conn.transaction():
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(CLAIM_RULE, {"tick": tick})
                row = await cur.fetchone()
            if row is None:
                return False
            rule = rule_from_row(row)
            verdict = await judge(conn, redis_client, self._keys, rule.spec, now)
            moved = next_step(
                rule.state, rule.state_since, rule.last_notified_at, spec=rule.spec, verdict=verdict, now=now
            )
            await conn.execute(
                UPDATE_STATE,
                {
                    "rule_id": rule.id, "state": moved.state.value, "since": moved.since, "value": verdict.value,
                    "samples": verdict.samples, "now": now, "tick": tick, "error": verdict.error,
                    "notify": moved.notify,
                },
            )  # fmt: skip
            report.evaluated += 1
            if not moved.changed(rule.state) and not moved.notify:
                return True
            message = verdict.error or ("still firing" if moved.repeat else "")
            event = await (
                await conn.execute(
                    INSERT_EVENT,
                    {
                        "rule_id": rule.id, "now": now, "from_state": rule.state.value, "to_state": moved.state.value,
                        "value": verdict.value, "threshold": rule.spec.threshold, "samples": verdict.samples,
                        "message": message,
                    },
                )
            ).fetchone()  # fmt: skip
            assert event is not None
            report.transitions += moved.changed(rule.state)
            if moved.notify:
                notice = Notice(
                    rule_id=rule.id, spec=rule.spec, event_id=int(event[0]), at=now, from_state=rule.state,
                    to_state=moved.state, value=verdict.value, samples=verdict.samples, message=message,
                    repeat=moved.repeat,
                )  # fmt: skip
                report.notifications += await enqueue(conn, notice)
            log.info("alert rule %r: %s -> %s (value %s, %d samples)", rule.spec.name, rule.state.value,
                     moved.state.value, verdict.value, verdict.samples)  # fmt: skip
        return True
