"""AlertService: rule management and alert history over gRPC, converted at this edge to the plain values
of `service/alerts` (errors mapped by `rpc.grpc_errors`, as every other servicer's)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from generation_analytics.service.alerts import history, rules
from generation_analytics.service.alerts.evaluator import judge, next_step
from generation_analytics.service.alerts.rules import RuleSpec, Target
from generation_analytics.service.alerts.states import Outcome
from generation_analytics.service.api.convert import to_message
from generation_analytics.service.api.rpc import Context, grpc_errors
from generation_analytics.service.errors import InvalidArgument
from generation_analytics.service.metrics import ServiceMetrics
from generation_analytics.service.stream import AsyncRedis, StreamKeys
from generation_analytics.v1 import alerts_pb2, alerts_pb2_grpc
from generation_analytics.vocabulary import (
    AlertMetric,
    AlertScope,
    AlertState,
    Comparison,
    UnknownValue,
    WebhookFormat,
    Word,
)


def _word(cls: type[Word], number: int, field: str, default: Word | None = None) -> Any:
    if number == 0:
        if default is None:
            raise InvalidArgument(field, "is required")
        return default
    try:
        return cls.from_proto(number, field=field)
    except UnknownValue as exc:
        raise InvalidArgument(field, str(exc)) from None


def spec_from_message(message: alerts_pb2.AlertRuleSpec, prefix: str = "rule.") -> RuleSpec:
    """A rule definition from its message (not yet validated: see `rules.validate`)."""
    return RuleSpec(
        name=message.name,
        metric=_word(AlertMetric, message.metric, f"{prefix}metric"),
        comparison=_word(Comparison, message.comparison, f"{prefix}comparison"),
        threshold=message.threshold,
        window_minutes=message.window_minutes,
        scope=_word(AlertScope, message.scope, f"{prefix}scope", AlertScope.EVERYTHING),
        scope_value=message.scope_value,
        min_samples=message.min_samples,
        pending_for_s=message.pending_for_s,
        repeat_interval_s=message.repeat_interval_s,
        labels=dict(message.labels),
        targets=tuple(
            Target(
                t.url, t.secret, _word(WebhookFormat, t.format, f"{prefix}targets[{i}].format", WebhookFormat.STANDARD)
            )
            for i, t in enumerate(message.targets)
        ),
        enabled=message.enabled,
    )


def _spec(request: Any) -> RuleSpec:
    if not request.HasField("rule"):
        raise InvalidArgument("rule", "is required")
    return spec_from_message(request.rule)


@dataclass(frozen=True)
class RuleTrial:
    """What TestAlertRule answers (fields as TestAlertRuleResponse's)."""

    value: float | None
    samples: int
    breaching: bool
    state: AlertState
    error: str
    window_start: datetime | None
    window_end: datetime | None


class AlertServicer(alerts_pb2_grpc.AlertServiceServicer):
    """AlertService on the read path's pool; evaluation itself runs in the pipeline's scheduler."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        redis_client: AsyncRedis,
        keys: StreamKeys,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._pool = pool
        self._redis = redis_client
        self._keys = keys
        self.metrics = metrics

    @grpc_errors
    async def CreateAlertRule(
        self, request: alerts_pb2.CreateAlertRuleRequest, context: Context
    ) -> alerts_pb2.CreateAlertRuleResponse:
        spec = rules.validate(_spec(request))
        async with self._pool.connection() as conn:
            rule = await rules.create_rule(conn, spec)
        # The only answer that shows the secrets in full: the caller configures its receivers with them.
        return alerts_pb2.CreateAlertRuleResponse(rule=to_message(rule, alerts_pb2.AlertRule))

    @grpc_errors
    async def UpdateAlertRule(
        self, request: alerts_pb2.UpdateAlertRuleRequest, context: Context
    ) -> alerts_pb2.UpdateAlertRuleResponse:
        spec = _spec(request)
        async with self._pool.connection() as conn:
            rule = await rules.update_rule(conn, request.id, spec)
        return alerts_pb2.UpdateAlertRuleResponse(rule=to_message(rule, alerts_pb2.AlertRule))

    @grpc_errors
    async def ListAlertRules(
        self, request: alerts_pb2.ListAlertRulesRequest, context: Context
    ) -> alerts_pb2.ListAlertRulesResponse:
        async with self._pool.connection() as conn:
            found = await rules.list_rules(conn)
        return alerts_pb2.ListAlertRulesResponse(
            rules=[to_message(rules.masked(rule), alerts_pb2.AlertRule) for rule in found]
        )

    @grpc_errors
    async def DeleteAlertRule(
        self, request: alerts_pb2.DeleteAlertRuleRequest, context: Context
    ) -> alerts_pb2.DeleteAlertRuleResponse:
        async with self._pool.connection() as conn:
            await rules.delete_rule(conn, request.id)
        return alerts_pb2.DeleteAlertRuleResponse()

    @grpc_errors
    async def TestAlertRule(
        self, request: alerts_pb2.TestAlertRuleRequest, context: Context
    ) -> alerts_pb2.TestAlertRuleResponse:
        now = datetime.now(UTC)
        async with self._pool.connection() as conn:
            if request.id:
                rule = await rules.get_rule(conn, request.id)
                spec, state, since, notified = rule.spec, rule.state, rule.state_since, rule.last_notified_at
            else:
                spec, state, since, notified = rules.validate(_spec(request)), AlertState.OK, now, None
            verdict = await judge(conn, self._redis, self._keys, spec, now)
        moved = next_step(state, since, notified, spec=spec, verdict=verdict, now=now)
        found = verdict.measurement
        result = RuleTrial(
            value=verdict.value,
            samples=verdict.samples,
            breaching=verdict.outcome is Outcome.BREACHING,
            state=moved.state,
            error=verdict.error,
            window_start=found.window_start if found else None,
            window_end=found.window_end if found else None,
        )
        return to_message(result, alerts_pb2.TestAlertRuleResponse)

    @grpc_errors
    async def ListAlertEvents(
        self, request: alerts_pb2.ListAlertEventsRequest, context: Context
    ) -> alerts_pb2.ListAlertEventsResponse:
        async with self._pool.connection() as conn:
            page = await history.list_events(
                conn, rule_id=request.rule_id or None, page_size=request.page_size or None,
                page_token=request.page_token,
            )  # fmt: skip
        return to_message(page, alerts_pb2.ListAlertEventsResponse)
