"""Alerts on real servers: rules fed known events cross their thresholds at injected times, states move
as a plain-Python model says they should, two evaluators never double-fire, and webhooks reach a real
local receiver with signatures that `standardwebhooks` verifies."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import grpc
import psycopg
import pytest
import redis
import requests
from aiohttp import web
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from generation_analytics.client import AnalyticsClient, AnalyticsClientError, alert_rule_spec
from generation_analytics.service.alerts.evaluator import AlertEvaluator, EvaluationReport
from generation_analytics.service.alerts.measure import quarter_floor
from generation_analytics.service.alerts.rules import RuleSpec, Target, create_rule, new_secret, validate
from generation_analytics.service.alerts.states import Outcome, step
from generation_analytics.service.alerts.webhooks import WebhookSender
from generation_analytics.service.fingerprints import fingerprint
from generation_analytics.service.hours import hour_floor
from generation_analytics.service.pipeline.worker import Pipeline
from generation_analytics.service.settings import AlertSettings, RedisSettings, Settings
from generation_analytics.service.stream import StreamKeys
from generation_analytics.vocabulary import AlertMetric, AlertScope, AlertState, Comparison, WebhookFormat
from tests.factories import make_event
from tests.fix_pipeline import push
from tests.fix_server import LiveServer
from tests.fix_services import empty_tables

# Known times: a whole hour a day ago (within retention, never in the future).
BASE = hour_floor(datetime.now(UTC) - timedelta(days=1))
QUARTER = timedelta(minutes=15)
ALERTS = AlertSettings(interval_s=60, retry_base_s=10, retry_max_s=60, max_attempts=3, webhook_timeout_s=2)
DEAD_URL = "http://127.0.0.1:9/hook"  # the discard port: nothing listens, the connection is refused


def completions(start: datetime, total: int, failed: int, *, checkpoint: str = "sdxl") -> list[Any]:
    """`total` completions spread over the quarter hour from `start`, the first `failed` of them failed."""
    return [
        make_event(
            "completion",
            timestamp=start + timedelta(seconds=5 + i * 800 // max(total, 1)),
            success=i >= failed,
            error_type="OutOfMemory" if i < failed else "",
            model_checkpoint=checkpoint,
            duration_ms=1000 + i,
        )
        for i in range(total)
    ]


def load(pipeline: Pipeline, stream: redis.Redis, namespace: str, events: list[Any]) -> None:
    push(stream, namespace, events)
    pipeline.run_transfer()
    assert pipeline.run_aggregation().remaining_dirty_hours == 0


def evaluator(settings: Settings, **changes: Any) -> AlertEvaluator:
    return AlertEvaluator(postgres=settings.postgres, redis_settings=changes.get("redis", settings.redis),
                          settings=ALERTS)  # fmt: skip


def tick(settings: Settings, now: datetime, **changes: Any) -> EvaluationReport:
    return asyncio.run(evaluator(settings, **changes).tick(now=now))


def add_rule(settings: Settings, spec: RuleSpec) -> int:
    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(settings.postgres.dsn, autocommit=True) as conn:
            return (await create_rule(conn, validate(spec))).id

    return asyncio.run(go())


def state_of(settings: Settings, rule_id: int) -> tuple[AlertState, float | None, int]:
    with psycopg.connect(settings.postgres.dsn) as conn:
        row = conn.execute("SELECT state, value, samples FROM alert_state WHERE rule_id = %s", (rule_id,)).fetchone()
    assert row is not None
    return AlertState(row[0]), row[1], row[2]


def transitions(settings: Settings, rule_id: int | None = None) -> list[tuple[str, str, float | None]]:
    with psycopg.connect(settings.postgres.dsn) as conn:
        rows = conn.execute(
            "SELECT from_state, to_state, value FROM alert_events WHERE %(r)s::bigint IS NULL OR rule_id = %(r)s "
            "ORDER BY id",
            {"r": rule_id},
        ).fetchall()
    return [(a, b, v) for a, b, v in rows]


def failure_rate(events: list[Any], now: datetime, window: timedelta) -> tuple[float | None, int]:
    """The failure rate (%) of the quarters overlapping (now - window, now], recomputed from raw events."""
    start, end = quarter_floor(now - window), quarter_floor(now) + QUARTER
    chosen = [e for e in events if start <= e.timestamp.ToDatetime(tzinfo=UTC) < end]
    failed = sum(1 for e in chosen if not e.success)
    return (100 * failed / len(chosen) if chosen else None), len(chosen)


T0 = datetime(2026, 1, 1, tzinfo=UTC)
MIN = timedelta(minutes=1)


@pytest.mark.parametrize(
    "case",
    [
        # state, since (min), outcome, now (min), last notified (min), (next state, since, notify, repeat)
        ("ok", 0, Outcome.BREACHING, 10, None, ("pending", 10, False, False)),
        ("pending", 10, Outcome.BREACHING, 14, None, ("pending", 10, False, False)),
        ("pending", 10, Outcome.BREACHING, 15, None, ("firing", 15, True, False)),  # pending_for reached
        ("pending", 10, Outcome.NOT_BREACHING, 12, None, ("ok", 12, False, False)),  # flapping: never notified
        ("firing", 15, Outcome.BREACHING, 40, 15, ("firing", 15, False, False)),  # before repeat_interval
        ("firing", 15, Outcome.BREACHING, 45, 15, ("firing", 15, True, True)),  # a reminder
        ("firing", 15, Outcome.NOT_BREACHING, 50, 45, ("resolved", 50, True, False)),
        ("resolved", 50, Outcome.NOT_BREACHING, 51, 50, ("ok", 51, False, False)),
        ("resolved", 50, Outcome.BREACHING, 51, 50, ("pending", 51, False, False)),
        ("firing", 15, Outcome.NO_DATA, 50, 45, ("no_data", 50, False, False)),  # recorded, not notified
        ("no_data", 50, Outcome.NO_DATA, 60, 45, ("no_data", 50, False, False)),
        ("no_data", 50, Outcome.NOT_BREACHING, 60, 45, ("ok", 60, False, False)),
        ("ok", 0, Outcome.ERROR, 5, None, ("error", 5, True, False)),
        ("error", 5, Outcome.ERROR, 6, 5, ("error", 5, False, False)),
        ("error", 5, Outcome.BREACHING, 7, 5, ("pending", 7, False, False)),
    ],
)
def test_each_step_of_the_state_machine(case: tuple[Any, ...]) -> None:
    state, since, outcome, now, notified, expected = case
    moved = step(
        AlertState(state), T0 + since * MIN, outcome, now=T0 + now * MIN, pending_for=5 * MIN,
        repeat_interval=30 * MIN, last_notified_at=None if notified is None else T0 + notified * MIN,
    )  # fmt: skip
    next_state, next_since, notify, repeat = expected
    assert (moved.state, moved.since, moved.notify, moved.repeat) == (
        AlertState(next_state), T0 + next_since * MIN, notify, repeat,
    )  # fmt: skip


def test_without_a_pending_period_a_breach_fires_at_once_and_repeats_only_when_asked() -> None:
    fired = step(AlertState.OK, T0, Outcome.BREACHING, now=T0 + MIN, pending_for=timedelta(0),
                 repeat_interval=timedelta(0), last_notified_at=None)  # fmt: skip
    assert (fired.state, fired.notify) == (AlertState.FIRING, True)
    still = step(AlertState.FIRING, T0 + MIN, Outcome.BREACHING, now=T0 + 600 * MIN, pending_for=timedelta(0),
                 repeat_interval=timedelta(0), last_notified_at=T0 + MIN)  # fmt: skip
    assert (still.state, still.notify) == (AlertState.FIRING, False)


FAILURE_RULE = RuleSpec(
    name="sdxl failing", metric=AlertMetric.FAILURE_RATE_PCT, comparison=Comparison.GT, threshold=10,
    window_minutes=15, min_samples=50, pending_for_s=300,
)  # fmt: skip


def test_a_rule_walks_ok_pending_firing_resolved_ok_at_known_times(
    settings: Settings, pipeline: Pipeline, stream_client: redis.Redis
) -> None:
    events = [
        *completions(BASE, 100, 2),
        *completions(BASE + QUARTER, 100, 30),
        *completions(BASE + 2 * QUARTER, 100, 40),
        *completions(BASE + 3 * QUARTER, 100, 0),
    ]
    load(pipeline, stream_client, settings.redis.namespace, events)
    rule_id = add_rule(settings, FAILURE_RULE)
    walk = [
        (BASE + timedelta(minutes=14), AlertState.OK),  # 2 % of the first quarter
        (BASE + timedelta(minutes=29), AlertState.PENDING),  # 16 %: breaching, pending for 5 min
        (BASE + timedelta(minutes=32), AlertState.PENDING),  # still within the pending period
        (BASE + timedelta(minutes=34), AlertState.FIRING),  # 5 min after it began: fires
        (BASE + timedelta(minutes=50), AlertState.FIRING),  # 20 % (quarters 3 and 4)
        (BASE + timedelta(minutes=60), AlertState.RESOLVED),  # 0 % (quarter 4 and the empty fifth)
        (BASE + timedelta(minutes=61), AlertState.OK),
    ]
    for now, expected in walk:
        tick(settings, now)
        state, value, samples = state_of(settings, rule_id)
        want_value, want_samples = failure_rate(events, now, timedelta(minutes=15))
        assert (state, samples) == (expected, want_samples), now
        assert value == pytest.approx(want_value)
    assert [(a, b) for a, b, _ in transitions(settings, rule_id)] == [
        ("ok", "pending"), ("pending", "firing"), ("firing", "resolved"), ("resolved", "ok"),
    ]  # fmt: skip
    # Each transition carries the value that caused it.
    assert [v for _, _, v in transitions(settings, rule_id)] == pytest.approx([16.0, 35.0, 0.0, 0.0])
    # Notified: firing and resolved, one delivery each per target (none here: no targets).
    tick(settings, BASE + timedelta(hours=3))  # nothing in the window at all
    assert state_of(settings, rule_id)[0] is AlertState.NO_DATA


def test_the_sample_guard_holds_back_a_rate_over_a_handful_of_requests(
    settings: Settings, pipeline: Pipeline, stream_client: redis.Redis
) -> None:
    load(pipeline, stream_client, settings.redis.namespace, completions(BASE, 2, 1))  # 50 % of 2
    guarded = add_rule(settings, replace(FAILURE_RULE, pending_for_s=0))
    unguarded = add_rule(settings, replace(FAILURE_RULE, name="no guard", min_samples=0, pending_for_s=0))
    tick(settings, BASE + timedelta(minutes=5))
    assert state_of(settings, guarded) == (AlertState.NO_DATA, 50.0, 2)
    assert state_of(settings, unguarded) == (AlertState.FIRING, 50.0, 2)


def test_checkpoint_and_error_type_scopes_read_their_own_rollups(
    settings: Settings, pipeline: Pipeline, stream_client: redis.Redis
) -> None:
    events = [*completions(BASE, 40, 20, checkpoint="flux"), *completions(BASE, 60, 3, checkpoint="sdxl")]
    load(pipeline, stream_client, settings.redis.namespace, events)
    flux = add_rule(settings, replace(FAILURE_RULE, name="flux", scope=AlertScope.CHECKPOINT, scope_value="flux",
                                      min_samples=10, pending_for_s=0))  # fmt: skip
    sdxl = add_rule(settings, replace(FAILURE_RULE, name="sdxl", scope=AlertScope.CHECKPOINT, scope_value="sdxl",
                                      min_samples=10, pending_for_s=0))  # fmt: skip
    oom = add_rule(settings, replace(FAILURE_RULE, name="oom", metric=AlertMetric.FAILURES, comparison=Comparison.GE,
                                     threshold=23, scope=AlertScope.ERROR_TYPE, scope_value="OutOfMemory",
                                     min_samples=0, pending_for_s=0))  # fmt: skip
    tick(settings, BASE + timedelta(minutes=20))
    assert state_of(settings, flux) == (AlertState.FIRING, 50.0, 40)
    assert state_of(settings, sdxl) == (AlertState.OK, 5.0, 60)
    assert state_of(settings, oom) == (AlertState.FIRING, 23.0, 100)


def test_an_error_group_scope_counts_the_failures_of_its_fingerprint(
    settings: Settings, pipeline: Pipeline, stream_client: redis.Redis
) -> None:
    """Messages that differ only in their numbers are one group; a group's rule sees only its failures,
    against every completion of the window (as the rate of an error type is)."""
    oom = [f"CUDA out of memory: tried to allocate {i} MiB on device {i % 2}" for i in range(1, 31)]
    events = [
        *(make_event("completion", timestamp=BASE + timedelta(minutes=1, seconds=i), success=False,
                     error_type="OutOfMemory", error_message=m, duration_ms=900) for i, m in enumerate(oom)),
        *(make_event("completion", timestamp=BASE + timedelta(minutes=2, seconds=i), success=False,
                     error_type="OutOfMemory", error_message=f"driver reset after {i}s", duration_ms=900)
          for i in range(10)),
        *completions(BASE + timedelta(minutes=3), 60, 0),
    ]  # fmt: skip
    load(pipeline, stream_client, settings.redis.namespace, events)
    group = fingerprint("OutOfMemory", oom[0])
    assert {fingerprint("OutOfMemory", m) for m in oom} == {group}
    count = add_rule(settings, replace(FAILURE_RULE, name="oom group", metric=AlertMetric.FAILURES,
                                       comparison=Comparison.GE, threshold=30, scope=AlertScope.ERROR_GROUP,
                                       scope_value=group, min_samples=0, pending_for_s=0))  # fmt: skip
    share = add_rule(settings, replace(FAILURE_RULE, name="oom group rate", scope=AlertScope.ERROR_GROUP,
                                       scope_value=group, threshold=40, min_samples=50, pending_for_s=0))  # fmt: skip
    other = add_rule(settings, replace(FAILURE_RULE, name="other group", metric=AlertMetric.FAILURES,
                                       comparison=Comparison.GE, threshold=1, scope=AlertScope.ERROR_GROUP,
                                       scope_value="0123456789abcdef", min_samples=0, pending_for_s=0))  # fmt: skip
    tick(settings, BASE + timedelta(minutes=20))
    assert state_of(settings, count) == (AlertState.FIRING, 30.0, 100)
    assert state_of(settings, share) == (AlertState.OK, 30.0, 100)  # 30 of 100 completions: not over 40 %
    assert state_of(settings, other) == (AlertState.OK, 0.0, 100)


def test_a_failing_evaluation_is_the_rule_s_error_state_and_others_go_on(
    settings: Settings, pipeline: Pipeline, stream_client: redis.Redis
) -> None:
    load(pipeline, stream_client, settings.redis.namespace, completions(BASE, 60, 30))
    stream_rule = add_rule(settings, replace(FAILURE_RULE, name="dead letters", metric=AlertMetric.DEAD_LETTERS,
                                             comparison=Comparison.GT, threshold=0, min_samples=0))  # fmt: skip
    rate_rule = add_rule(settings, replace(FAILURE_RULE, pending_for_s=0))
    gone = RedisSettings(url="redis://127.0.0.1:9/0", namespace=settings.redis.namespace, socket_timeout_s=0.5)
    report = tick(settings, BASE + timedelta(minutes=5), redis=gone)
    assert report.evaluated == 2
    assert state_of(settings, stream_rule)[0] is AlertState.ERROR
    assert state_of(settings, rate_rule)[0] is AlertState.FIRING
    with psycopg.connect(settings.postgres.dsn) as conn:
        row = conn.execute("SELECT error FROM alert_state WHERE rule_id = %s", (stream_rule,)).fetchone()
    assert row is not None and "ConnectionError" in row[0]
    # With Redis back, the rule reads the dead-letter stream again: empty, so OK.
    tick(settings, BASE + timedelta(minutes=6))
    assert state_of(settings, stream_rule) == (AlertState.OK, 0.0, 1)


def test_two_evaluators_at_once_evaluate_each_rule_once_per_tick(
    settings: Settings, pipeline: Pipeline, stream_client: redis.Redis
) -> None:
    load(pipeline, stream_client, settings.redis.namespace, completions(BASE, 60, 30))
    rules = [add_rule(settings, replace(FAILURE_RULE, name=f"rule {i}", pending_for_s=0,
                                        targets=(Target(DEAD_URL),))) for i in range(24)]  # fmt: skip
    now = BASE + timedelta(minutes=5)
    reports: list[EvaluationReport] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        reports.append(tick(settings, now))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(r.evaluated for r in reports) == len(rules)
    assert len(transitions(settings)) == len(rules)  # each ok -> firing once
    with psycopg.connect(settings.postgres.dsn) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM alert_deliveries").fetchone()
    assert row == (len(rules), len(rules))
    # Later in the same tick: nothing left; in the next tick every rule again (and still firing: no event).
    assert tick(settings, now + timedelta(seconds=30)).evaluated == 0
    assert tick(settings, now + timedelta(seconds=60)).evaluated == len(rules)
    assert len(transitions(settings)) == len(rules)


def test_retention_removes_alert_transitions_as_old_as_the_raw_events(
    settings: Settings, pipeline: Pipeline, stream_client: redis.Redis
) -> None:
    load(pipeline, stream_client, settings.redis.namespace, completions(BASE, 60, 30))
    rule_id = add_rule(settings, replace(FAILURE_RULE, pending_for_s=0, targets=(Target(DEAD_URL),)))
    tick(settings, BASE - timedelta(days=settings.retention.days + 1))  # nothing then: ok -> no_data
    tick(settings, BASE + timedelta(minutes=5))  # no_data -> firing, notified
    assert [b for _, b, _ in transitions(settings, rule_id)] == ["no_data", "firing"]
    pipeline.prune()
    assert [b for _, b, _ in transitions(settings, rule_id)] == ["firing"]
    with psycopg.connect(settings.postgres.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM alert_deliveries").fetchone() == (1,)


@dataclass
class Receiver:
    """A local webhook receiver: answers `statuses` in turn (then 200) and keeps what it got."""

    statuses: list[int] = field(default_factory=list)
    got: list[tuple[dict[str, str], str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.text()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


async def serve_receivers(receivers: dict[str, Receiver]) -> tuple[web.AppRunner, int]:
    app = web.Application()
    for path, receiver in receivers.items():
        app.router.add_post(path, receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    return runner, server.sockets[0].getsockname()[1]


def attempts(settings: Settings) -> dict[str, tuple[str, int, list[int | None]]]:
    """url -> (status, attempts, status codes of the attempts in order)."""
    with psycopg.connect(settings.postgres.dsn) as conn:
        rows = conn.execute(
            "SELECT d.url, d.status, d.attempts, array_agg(a.status_code ORDER BY a.id) FROM alert_deliveries AS d "
            "JOIN alert_delivery_attempts AS a ON a.delivery_id = d.id GROUP BY d.id"
        ).fetchall()
    return {url: (status, count, codes) for url, status, count, codes in rows}


def test_webhooks_are_signed_retried_and_a_dead_target_stops_no_other(
    settings: Settings, pipeline: Pipeline, stream_client: redis.Redis
) -> None:
    load(pipeline, stream_client, settings.redis.namespace, completions(BASE, 60, 30))
    live, flaky, slack = Receiver(), Receiver(statuses=[500]), Receiver()
    secret = new_secret()

    async def scenario() -> None:
        runner, port = await serve_receivers({"/live": live, "/flaky": flaky, "/slack": slack})
        try:
            url = f"http://127.0.0.1:{port}"
            targets = (Target(DEAD_URL, secret), Target(f"{url}/live", secret), Target(f"{url}/flaky", secret),
                       Target(f"{url}/slack", secret, WebhookFormat.SLACK))  # fmt: skip
            spec = replace(FAILURE_RULE, pending_for_s=0, targets=targets, labels={"team": "gpu"})
            await asyncio.to_thread(add_rule, settings, spec)
            now = BASE + timedelta(minutes=5)
            report = await evaluator(settings).tick(now=now)
            assert report.notifications == 4
            sender = WebhookSender(postgres=settings.postgres, settings=ALERTS)
            first = await sender.run_once(now)
            assert (first.attempted, first.delivered, first.retrying) == (4, 2, 2)
            assert (await sender.run_once(now + timedelta(seconds=5))).attempted == 0  # backing off: 10 s
            second = await sender.run_once(now + timedelta(seconds=10))
            assert (second.attempted, second.delivered, second.retrying) == (2, 1, 1)
            third = await sender.run_once(now + timedelta(seconds=30))  # 10 s, then 20 s
            assert (third.attempted, third.failed) == (1, 1)  # the dead target gives up after 3 attempts
            base = f"http://127.0.0.1:{port}"
            assert attempts(settings) == {
                DEAD_URL: ("failed", 3, [None, None, None]),
                f"{base}/live": ("delivered", 1, [200]),
                f"{base}/flaky": ("delivered", 2, [500, 200]),
                f"{base}/slack": ("delivered", 1, [200]),
            }
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
    verifier = Webhook(secret)
    (headers, body), = live.got  # fmt: skip
    payload = verifier.verify(body, headers)
    assert payload["type"] == "alert.firing"
    assert payload["data"]["state"] == "firing" and payload["data"]["value"] == 50.0
    assert payload["data"]["labels"] == {"team": "gpu"} and payload["data"]["samples"] == 60
    # A retry carries the same id and body, newly signed.
    (first_try, first_body), (retry, retry_body) = flaky.got
    assert first_try["webhook-id"] == retry["webhook-id"] and first_body == retry_body
    verifier.verify(retry_body, retry)
    (slack_headers, slack_body), = slack.got  # fmt: skip
    assert set(verifier.verify(slack_body, slack_headers)) == {"text"}
    assert "FIRING" in json.loads(slack_body)["text"]
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


# ---------------------------------------------------------------- the state machine against a model


@dataclass
class Model:
    """What a rule's state must be, from the history of what each evaluation found (written apart from
    states.py: by the start of the current run of breaching evaluations, not by a stored `since`)."""

    pending_for: timedelta
    repeat_interval: timedelta
    state: AlertState = AlertState.OK
    run_start: datetime | None = None
    last_notified: datetime | None = None
    changes: int = 0
    notifications: int = 0

    def observe(self, now: datetime, value: float | None, samples: int, min_samples: int, threshold: float) -> None:
        before = self.state
        notify = False
        if value is None or samples < min_samples:
            self.state, self.run_start = AlertState.NO_DATA, None
        elif value > threshold:
            self.run_start = self.run_start or now
            if before is AlertState.FIRING:
                late = self.last_notified is not None and now - self.last_notified >= self.repeat_interval
                notify = self.repeat_interval > timedelta(0) and late
            elif now - self.run_start >= self.pending_for:
                self.state = AlertState.FIRING
            else:
                self.state = AlertState.PENDING
        else:
            self.run_start = None
            self.state = AlertState.RESOLVED if before is AlertState.FIRING else AlertState.OK
        if self.state is not before:
            self.changes += 1
            notify = self.state in (AlertState.FIRING, AlertState.RESOLVED)
        elif notify:
            self.changes += 1  # a reminder is stored as an event too
        if notify:
            self.notifications += 1
            self.last_notified = now


class AlertMachine(RuleBasedStateMachine):
    """Quarter hour after quarter hour, traffic arrives (of a chosen size and failure share) and the rule
    is evaluated at chosen minutes; after each step, the stored state, events and outbox equal the
    model's, fed with the failure rate recomputed from the raw events."""

    settings: ClassVar[Settings]
    pipeline: ClassVar[Pipeline]
    stream: ClassVar[redis.Redis]

    def __init__(self) -> None:
        super().__init__()
        empty_tables(self.settings.postgres.dsn)
        self.stream.delete(StreamKeys(self.settings.redis.namespace).stream)
        self.quarter = BASE
        self.now = BASE
        self.events: list[Any] = []
        self.rule_id = 0
        self.model = Model(timedelta(0), timedelta(0))

    @initialize(pending_quarters=st.integers(0, 2), repeat_minutes=st.sampled_from([0, 10, 30]))
    def define(self, pending_quarters: int, repeat_minutes: int) -> None:
        spec = replace(FAILURE_RULE, min_samples=20, pending_for_s=pending_quarters * 15 * 60,
                       repeat_interval_s=repeat_minutes * 60, targets=(Target(DEAD_URL),))  # fmt: skip
        self.rule_id = add_rule(self.settings, spec)
        self.model = Model(timedelta(seconds=spec.pending_for_s), timedelta(seconds=spec.repeat_interval_s))

    @rule(
        total=st.sampled_from([0, 10, 30, 60]),
        share=st.sampled_from([0.0, 0.05, 0.2, 0.5, 1.0]),
        minutes=st.lists(st.integers(0, 14), min_size=1, max_size=3, unique=True),
    )
    def quarter_hour(self, total: int, share: float, minutes: list[int]) -> None:
        batch = completions(self.quarter, total, round(total * share))
        if batch:
            self.events.extend(batch)
            load(self.pipeline, self.stream, self.settings.redis.namespace, batch)
        for minute in sorted(minutes):
            self.now = max(self.quarter + timedelta(minutes=minute), self.now + timedelta(minutes=1))
            tick(self.settings, self.now)
            value, samples = failure_rate(self.events, self.now, timedelta(minutes=15))
            self.model.observe(self.now, value, samples, 20, 10)
            self.check()
        self.quarter += QUARTER

    def check(self) -> None:
        assert state_of(self.settings, self.rule_id)[0] is self.model.state
        assert len(transitions(self.settings, self.rule_id)) == self.model.changes
        with psycopg.connect(self.settings.postgres.dsn) as conn:
            row = conn.execute("SELECT count(*) FROM alert_deliveries").fetchone()
        assert row is not None and row[0] == self.model.notifications


@pytest.mark.timeout(600)
def test_states_follow_the_model_under_any_history(
    settings: Settings, pipeline: Pipeline, stream_client: redis.Redis
) -> None:
    AlertMachine.settings = settings
    AlertMachine.pipeline = pipeline
    AlertMachine.stream = stream_client
    run_state_machine_as_test(
        AlertMachine,
        settings=hypothesis_settings(
            max_examples=12, stateful_step_count=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )


# ---------------------------------------------------------------- the API, CLI and gateway


def settle_in_a_quarter() -> datetime:
    """Now, at least a minute before the next quarter hour: TestAlertRule reads the real clock, and the
    previous quarter's events must stay in its window for the length of the test (a wait, never a bound)."""
    now = datetime.now(UTC)
    if quarter_floor(now) + QUARTER - now < timedelta(minutes=1):
        time.sleep((quarter_floor(now) + QUARTER - now).total_seconds() + 0.5)
        now = datetime.now(UTC)
    return now


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[AnalyticsClient]:
    with AnalyticsClient(live_server.address, retries=0) as made:
        yield made


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "rule.name"),
        ({"metric": "dead_letters", "scope": "checkpoint", "scope_value": "x"}, "rule.metric"),
        ({"scope": "checkpoint"}, "rule.scope_value"),
        ({"window_minutes": 20}, "rule.window_minutes"),
        ({"window_minutes": 0}, "rule.window_minutes"),
        ({"metric": "dead_letters", "window_minutes": 0}, "rule.window_minutes"),
        (
            {"metric": "failures", "comparison": "gt", "scope": "error_type", "scope_value": "x" * 200},
            "rule.scope_value",
        ),
        ({"metric": "failures", "scope": "error_group", "scope_value": "OutOfMemory"}, "rule.scope_value"),
        ({"metric": "p95_duration_ms", "scope": "error_group", "scope_value": "0123456789abcdef"}, "rule.metric"),
        ({"webhooks": [("http://example.com/x", "standard", "whsec_" + "A" * 40 + "!")]}, "rule.targets[0].secret"),
        ({"threshold": float("nan")}, "rule.threshold"),
        ({"min_samples": -1}, "rule.min_samples"),
        ({"pending_for_s": -5}, "rule.pending_for_s"),
        ({"webhooks": ["ftp://example.com/x"]}, "rule.targets[0].url"),
        ({"webhooks": [("http://example.com/x", "standard", "whsec_short")]}, "rule.targets[0].secret"),
        ({"webhooks": [("http://example.com/x", "standard", "secret")]}, "rule.targets[0].secret"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(client: AnalyticsClient, changes: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {"name": "r", "metric": "failure_rate_pct", "comparison": "gt", "threshold": 10.0}
    values |= changes
    with pytest.raises(AnalyticsClientError) as caught:
        client.create_alert_rule(alert_rule_spec(**values))
    assert (caught.value.code, caught.value.field) == (grpc.StatusCode.INVALID_ARGUMENT, field)


def test_rules_are_managed_tested_and_read_over_grpc_and_http(
    live_server: LiveServer, client: AnalyticsClient, pipeline: Pipeline, stream_client: redis.Redis
) -> None:
    settings = live_server.settings
    now = settle_in_a_quarter()
    load(pipeline, stream_client, settings.redis.namespace, completions(quarter_floor(now) - QUARTER, 80, 40))
    spec = alert_rule_spec("half failing", "failure_rate_pct", "gt", 10, min_samples=50,
                           webhooks=["http://127.0.0.1:9/a", ("http://127.0.0.1:9/b", "slack")])  # fmt: skip
    created = client.create_alert_rule(spec)
    secrets = [t.secret for t in created.spec.targets]
    assert all(s.startswith("whsec_") and len(s) > 40 for s in secrets)
    with pytest.raises(AnalyticsClientError) as caught:
        client.create_alert_rule(spec)
    assert caught.value.field == "rule.name"
    (listed,) = client.alert_rules()
    assert listed.id == created.id and listed.state == 1  # OK
    assert [t.secret for t in listed.spec.targets] == [f"whsec_…{s[-4:]}" for s in secrets]
    trial = client.test_alert_rule(created.id)
    assert trial.breaching and trial.value == 50.0 and trial.samples == 80 and trial.state == 3  # FIRING
    assert client.alert_events().events == []  # a test stores nothing
    # An update without secrets keeps them; the state stays.
    spec.threshold = 60
    updated = client.update_alert_rule(created.id, spec)
    assert [t.secret for t in updated.spec.targets] == secrets
    assert not client.test_alert_rule(created.id).breaching
    tick(settings, quarter_floor(now))
    assert client.alert_events().events == []  # 50 % is not > 60 %: no transition
    spec.threshold = 10
    client.update_alert_rule(created.id, spec)
    tick(settings, quarter_floor(now) + timedelta(minutes=1))
    (event,) = client.alert_events(created.id).events
    assert (event.rule_name, event.from_state, event.to_state, event.value) == ("half failing", 1, 3, 50.0)
    reply = requests.get(f"{live_server.http}/api/v1/analytics/generation/alerts/events", timeout=10).json()
    assert [(e["from_state"], e["to_state"], e["value"]) for e in reply["events"]] == [("ok", "firing", 50.0)]
    rules = requests.get(f"{live_server.http}/api/v1/analytics/generation/alerts/rules", timeout=10).json()["rules"]
    assert rules[0]["state"] == "firing" and rules[0]["spec"]["targets"][1]["format"] == "slack"
    assert "whsec_…" in rules[0]["spec"]["targets"][0]["secret"]
    client.delete_alert_rule(created.id)
    assert client.alert_rules() == []
    with pytest.raises(AnalyticsClientError) as caught:
        client.delete_alert_rule(created.id)
    assert caught.value.code is grpc.StatusCode.NOT_FOUND


def test_alert_events_come_a_page_at_a_time(
    live_server: LiveServer, client: AnalyticsClient, pipeline: Pipeline, stream_client: redis.Redis
) -> None:
    settings = live_server.settings
    failing = [completions(BASE + k * QUARTER, 60, 30) for k in (0, 4, 8)]
    load(pipeline, stream_client, settings.redis.namespace, [e for batch in failing for e in batch])
    rule_id = add_rule(settings, replace(FAILURE_RULE, pending_for_s=0, min_samples=0))
    for k in range(10):  # a 15-minute window overlaps quarters k - 1 and k: firing, firing, no data, no data, ...
        tick(settings, BASE + k * QUARTER + timedelta(minutes=1))
    every = transitions(settings, rule_id)
    assert len(every) == 5
    seen: list[int] = []
    token = ""
    while True:
        page = client.alert_events(rule_id, page_size=2, page_token=token)
        assert len(page.events) <= 2
        seen.extend(e.id for e in page.events)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(every) == len(set(seen)) and seen == sorted(seen, reverse=True)
    with pytest.raises(AnalyticsClientError) as caught:
        client.alert_events(page_token="not-a-token")
    assert caught.value.field == "page_token"


def test_the_cli_creates_lists_tests_and_deletes_rules(
    live_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from generation_analytics.cli import main

    target = ["--target", live_server.address]
    assert main(["alerts", "create", *target, "--name", "slow", "--metric", "p95_duration_ms", "--comparison", "gt",
                 "--threshold", "5000", "--webhook", "http://127.0.0.1:9/x", "--label", "team=gpu"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "slow" in out and "whsec_" in out
    assert main(["alerts", "list", *target, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["spec"]["labels"] == {"team": "gpu"} and listed["state"] == "ok"
    assert main(["alerts", "test", *target, str(listed["id"])]) == 0
    assert "no_data" in capsys.readouterr().out  # no completions at all
    assert main(["alerts", "events", *target]) == 0
    assert main(["alerts", "delete", *target, str(listed["id"])]) == 0
    assert main(["alerts", "delete", *target, str(listed["id"])]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


class ThreadReceiver:
    """A local webhook receiver in a thread (for tests whose service runs on its own): keeps every body."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        receiver = Receiver(got=self.got)
        self._runner, port = asyncio.run_coroutine_threadsafe(serve_receivers({"/hook": receiver}), self._loop).result(
            10
        )
        self.url = f"http://127.0.0.1:{port}/hook"

    def types(self) -> list[str]:
        return [json.loads(body)["type"] for _, body in list(self.got)]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def wait_for(condition: Any, timeout_s: float = 60) -> None:
    """Poll until `condition()` holds (a generous bound for a shared machine, not a measured one)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_scheduler_fires_and_resolves_a_rule_on_live_traffic(settings: Settings) -> None:
    """The acceptance scenario: failures injected on a checkpoint fire its rule on a local receiver within
    an evaluation, and more healthy traffic resolves it; all through the running service's own schedule."""
    scheduled = replace(
        settings,
        schedule=replace(settings.schedule, enabled=True, transfer_interval_s=0.3, aggregation_interval_s=0.3),
        alerts=AlertSettings(interval_s=1, delivery_interval_s=0.3),
    )
    receiver = ThreadReceiver()
    server = LiveServer(scheduled)
    try:
        with AnalyticsClient(server.address) as client:
            spec = alert_rule_spec("sdxl failing", "failure_rate_pct", "gt", 10, scope="checkpoint",
                                   scope_value="sdxl", min_samples=50, webhooks=[receiver.url])  # fmt: skip
            created = client.create_alert_rule(spec)
            now = datetime.now(UTC)
            client.record_events(completions(now - timedelta(seconds=900), 60, 30))
            wait_for(lambda: "alert.firing" in receiver.types())
            client.record_events(completions(now - timedelta(seconds=900), 600, 0))
            wait_for(lambda: "alert.resolved" in receiver.types())
            (headers, body) = receiver.got[0]
            secret = created.spec.targets[0].secret
            assert Webhook(secret).verify(body, headers)["data"]["rule_id"] == created.id
            assert receiver.types()[:2] == ["alert.firing", "alert.resolved"]
    finally:
        server.close()
        receiver.close()
