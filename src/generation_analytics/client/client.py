"""`AnalyticsClient`: every RPC of the three services, with timeouts, retries and one error type."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc

from generation_analytics.client.errors import AnalyticsClientError
from generation_analytics.questions import QUESTIONS, Question, UnknownValue, build, to_request
from generation_analytics.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    analytics_pb2,
    analytics_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    pipeline_pb2,
    pipeline_pb2_grpc,
)

DEFAULT_TARGET = "127.0.0.1:50051"
# Backoff jitter from the OS, never the global `random` state (that would perturb the caller's seeded
# sequences, and tests that check it); unlike a module-level Random() it differs in forked processes.
_JITTER = random.SystemRandom()

# RPC -> client method: the contract test checks that every RPC of the descriptors is here.
RPC_METHODS = {
    "RecordEvent": "record_event",
    "RecordEvents": "record_events",
    "GetOverview": "overview",
    "GetTrends": "trends",
    "GetUserAnalytics": "user",
    "GetModelPerformance": "models",
    "GetFailureAnalysis": "failures",
    "GetPeakHours": "peak_hours",
    "ListEvents": "events",
    "ListTopUsers": "top_users",
    "CompareCheckpoints": "compare_checkpoints",
    "ListErrorGroups": "error_groups",
    "ExportEvents": "export_events",
    "GetPipelineStatus": "pipeline_status",
    "RunTransfer": "run_transfer",
    "RunAggregation": "run_aggregation",
    "CreateAlertRule": "create_alert_rule",
    "UpdateAlertRule": "update_alert_rule",
    "ListAlertRules": "alert_rules",
    "DeleteAlertRule": "delete_alert_rule",
    "TestAlertRule": "test_alert_rule",
    "ListAlertEvents": "alert_events",
}

R = TypeVar("R")


def _timestamp(moment: datetime) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromDatetime(moment.astimezone(UTC))
    return ts


def _pages(ask: Callable[..., Any], filters: dict[str, Any]) -> Iterator[Any]:
    """Every page of a paged RPC: each asked with the previous page's `next_page_token` until it is empty."""
    token = ""
    while True:
        page = ask(**filters, page_token=token)
        yield page
        token = page.next_page_token
        if not token:
            return


def assign_event_ids(events: Iterable[events_pb2.GenerationEvent]) -> None:
    """Give every event without an event_id a fresh UUID, in place.

    An UNAVAILABLE or DEADLINE_EXCEEDED does not say the event was not recorded: the reply may have
    been lost after Redis took it. The id is what lets the service store a resent event once (transfer
    inserts ON CONFLICT (event_id) DO NOTHING); an id the server chose would differ on every attempt.
    So it is chosen here, before the first attempt, and kept on the caller's message: every retry,
    ours or the caller's with the same message, carries the same id.
    """
    for event in events:
        if not event.event_id:
            event.event_id = str(uuid.uuid4())


def open_channel(
    target: str,
    *,
    tls: bool | None = None,
    ca_file: str | None = None,
    client_cert_file: str | None = None,
    client_key_file: str | None = None,
) -> grpc.Channel:
    """A channel to `target`: TLS when asked (or GA_TLS=true) or when any certificate is given, else plaintext.

    With TLS and no `ca_file`, the system's trusted roots verify the server.
    """
    options = [("grpc.max_receive_message_length", 64 << 20)]
    if tls is None:
        tls = os.environ.get("GA_TLS", "").lower() in {"1", "true", "yes", "on"}
    if not (tls or ca_file or client_cert_file):
        return grpc.insecure_channel(target, options=options)
    if bool(client_cert_file) != bool(client_key_file):
        raise ValueError("a client certificate needs its key (and the key its certificate)")

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(ca_file), private_key=read(client_key_file), certificate_chain=read(client_cert_file)
    )
    return grpc.secure_channel(target, credentials, options=options)


class AnalyticsClient:
    """A blocking client for Generation Analytics.

    Every call has a deadline (`timeout_s`) and is retried on UNAVAILABLE / RESOURCE_EXHAUSTED /
    DEADLINE_EXCEEDED with exponential backoff and jitter: all calls are safe to retry (queries read;
    events carry client-chosen event_ids, set before the first attempt when missing, so a retried
    record is stored once).

    Security (when the service requires it): `api_key` is sent as `authorization: Bearer …` on every
    call; TLS is used when `tls` is true or a CA or client certificate is given (mTLS). Each defaults
    to the environment a user would set: GA_API_KEY, GA_CA_FILE, GA_CLIENT_CERT / GA_CLIENT_KEY, GA_TLS.

    Raises:
        AnalyticsClientError: from every method, with the status code and (for bad input) the field.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        channel: grpc.Channel | None = None,
        api_key: str | None = None,
        tls: bool | None = None,
        ca_file: str | None = None,
        client_cert_file: str | None = None,
        client_key_file: str | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        key = api_key if api_key is not None else os.environ.get("GA_API_KEY", "")
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {key}"),) if key else ()
        self._own_channel = channel is None
        self._channel = channel or open_channel(
            target,
            tls=tls,
            ca_file=ca_file if ca_file is not None else os.environ.get("GA_CA_FILE") or None,
            client_cert_file=client_cert_file or os.environ.get("GA_CLIENT_CERT") or None,
            client_key_file=client_key_file or os.environ.get("GA_CLIENT_KEY") or None,
        )
        self._events = events_pb2_grpc.EventServiceStub(self._channel)
        self._analytics = analytics_pb2_grpc.AnalyticsServiceStub(self._channel)
        self._pipeline = pipeline_pb2_grpc.PipelineServiceStub(self._channel)
        self._alerts = alerts_pb2_grpc.AlertServiceStub(self._channel)

    def close(self) -> None:
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> AnalyticsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., R], request: Any, *, timeout_s: float | None = None) -> R:
        attempt = 0
        while True:
            try:
                return method(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)
            except grpc.RpcError as exc:
                error = AnalyticsClientError.from_rpc_error(exc)
                if not error.retryable or attempt >= self.retries:
                    raise error from None
                time.sleep(self.backoff_s * 2**attempt * (0.5 + _JITTER.random()))
                attempt += 1

    # EventService

    def record_event(self, event: events_pb2.GenerationEvent) -> str:
        """Record one event (build it with `build_event`); returns its event_id.

        An event without an event_id gets one before the first attempt, set on `event` itself (see
        `assign_event_ids`): sending the same message again, after an error, stores it once. A message
        stands for one event; for another, build a new one (or clear its event_id).
        """
        assign_event_ids((event,))
        return self._call(self._events.RecordEvent, events_pb2.RecordEventRequest(event=event)).event_id

    def record_events(self, events: Sequence[events_pb2.GenerationEvent]) -> events_pb2.RecordEventsResponse:
        """Record a batch; invalid events come back in `rejections`, the valid ones are kept.

        Events without an event_id get one first, in place, as in `record_event`.
        """
        assign_event_ids(events)
        return self._call(self._events.RecordEvents, events_pb2.RecordEventsRequest(events=events))

    # AnalyticsService: every RPC is a question (generation_analytics.questions); `ask` asks any of them.

    def ask(self, question: Question) -> Any:
        """The response message answering `question` (e.g. `ask(questions.OverviewQuestion(days=7))`)."""
        return self._call(getattr(self._analytics, question.RPC), to_request(question))

    def _ask(self, rpc: str, **values: Any) -> Any:
        try:
            return self.ask(build(QUESTIONS[rpc], **values))
        except UnknownValue as exc:
            raise ValueError(f"{exc.field}: {exc}") from None

    def overview(self, days: int | None = None, *, compare_previous: bool = False) -> analytics_pb2.GetOverviewResponse:
        """The window's figures; with `compare_previous`, the previous equal window and the changes too."""
        return self._ask("GetOverview", days=days, compare_previous=compare_previous)  # type: ignore[no-any-return]

    def trends(
        self, days: int | None = None, interval: str = "hourly", *, time_zone: str = ""
    ) -> analytics_pb2.GetTrendsResponse:
        """Hourly or daily buckets; daily ones are the days of `time_zone` (an IANA name, default UTC)."""
        return self._ask("GetTrends", days=days, interval=interval, time_zone=time_zone)  # type: ignore[no-any-return]

    def user(self, user_id: str, days: int | None = None) -> analytics_pb2.GetUserAnalyticsResponse:
        return self._ask("GetUserAnalytics", user_id=user_id, days=days)  # type: ignore[no-any-return]

    def models(
        self, days: int | None = None, *, compare_previous: bool = False
    ) -> analytics_pb2.GetModelPerformanceResponse:
        return self._ask("GetModelPerformance", days=days, compare_previous=compare_previous)  # type: ignore[no-any-return]

    def failures(
        self, days: int | None = None, *, compare_previous: bool = False, time_zone: str = ""
    ) -> analytics_pb2.GetFailureAnalysisResponse:
        return self._ask(  # type: ignore[no-any-return]
            "GetFailureAnalysis", days=days, compare_previous=compare_previous, time_zone=time_zone
        )

    def peak_hours(self, days: int | None = None, *, time_zone: str = "") -> analytics_pb2.GetPeakHoursResponse:
        return self._ask("GetPeakHours", days=days, time_zone=time_zone)  # type: ignore[no-any-return]

    def compare_checkpoints(
        self, model_checkpoint_a: str, model_checkpoint_b: str, *, days: int | None = None
    ) -> analytics_pb2.CompareCheckpointsResponse:
        """Checkpoint b against checkpoint a (the baseline) over one window, with significance flags."""
        return self._ask(  # type: ignore[no-any-return]
            "CompareCheckpoints",
            model_checkpoint_a=model_checkpoint_a,
            model_checkpoint_b=model_checkpoint_b,
            days=days,
        )

    def events(self, **filters: Any) -> analytics_pb2.ListEventsResponse:
        """One page of raw events; pass `next_page_token` back (with the same filters) for the next.

        Filters are EventsQuestion's fields: days, user_id, model_checkpoint, event_type ("request", ...),
        success, error_type, min_duration_ms, order ("newest" or "slowest"), page_size, page_token.
        """
        return self._ask("ListEvents", **{"page_size": 50, **filters})  # type: ignore[no-any-return]

    def iter_events(self, **filters: Any) -> Iterator[events_pb2.StoredEvent]:
        """Every event matching `filters` (the arguments of `events`), page after page."""
        for page in _pages(self.events, filters):
            yield from page.events

    def error_groups(self, **filters: Any) -> analytics_pb2.ListErrorGroupsResponse:
        """One page of error groups, most failures first; pass `next_page_token` back for the next.

        Filters are ErrorGroupsQuestion's fields: days, model_checkpoint, error_type, page_size, page_token.
        """
        return self._ask("ListErrorGroups", **filters)  # type: ignore[no-any-return]

    def iter_error_groups(self, **filters: Any) -> Iterator[analytics_pb2.ErrorGroup]:
        """Every error group matching `filters` (the arguments of `error_groups`), page after page."""
        for page in _pages(self.error_groups, filters):
            yield from page.groups

    def top_users(
        self, days: int | None = None, limit: int | None = None, *, order: str = "requests"
    ) -> analytics_pb2.ListTopUsersResponse:
        """Users ranked by `order`: "requests" (the default) or "gpu_time"."""
        return self._ask("ListTopUsers", days=days, limit=limit, order=order)  # type: ignore[no-any-return]

    def export_batches(
        self, *, timeout_s: float | None = None, **filters: Any
    ) -> Iterator[analytics_pb2.ExportEventsResponse]:
        """The messages of ExportEvents (a few thousand events each); see `export_events`."""
        try:
            question = build(QUESTIONS["ExportEvents"], **filters)
        except UnknownValue as exc:
            raise ValueError(f"{exc.field}: {exc}") from None
        request: Any = to_request(question)
        call: Any = self._analytics.ExportEvents(request, timeout=timeout_s, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise AnalyticsClientError.from_rpc_error(exc) from None
        finally:
            call.cancel()  # a caller that stops early stops the server's read too (no-op once finished)

    def export_events(self, *, timeout_s: float | None = None, **filters: Any) -> Iterator[events_pb2.StoredEvent]:
        """Every event ListEvents lists for `filters` (all its pages), newest first, as one stream.

        Filters are ListEvents' (days, user_id, model_checkpoint, event_type, success, error_type,
        min_duration_ms); no deadline unless `timeout_s`. Not retried: a failure mid-way raises
        AnalyticsClientError after the events already yielded. Stopping early cancels the call.
        """
        for batch in self.export_batches(timeout_s=timeout_s, **filters):
            yield from batch.events

    # PipelineService

    def pipeline_status(self) -> pipeline_pb2.GetPipelineStatusResponse:
        return self._call(self._pipeline.GetPipelineStatus, pipeline_pb2.GetPipelineStatusRequest())

    def run_transfer(self, *, timeout_s: float = 120.0) -> pipeline_pb2.RunTransferResponse:
        return self._call(self._pipeline.RunTransfer, pipeline_pb2.RunTransferRequest(), timeout_s=timeout_s)

    def run_aggregation(
        self, start_hour: datetime | None = None, end_hour: datetime | None = None, *, timeout_s: float = 300.0
    ) -> pipeline_pb2.RunAggregationResponse:
        """Recompute dirty hours now, or (with both bounds) every hour of the range."""
        request = pipeline_pb2.RunAggregationRequest()
        if start_hour is not None:
            request.start_hour.CopyFrom(_timestamp(start_hour))
        if end_hour is not None:
            request.end_hour.CopyFrom(_timestamp(end_hour))
        return self._call(self._pipeline.RunAggregation, request, timeout_s=timeout_s)

    # AlertService (build a rule's definition with `alert_rule_spec`)

    def create_alert_rule(self, rule: alerts_pb2.AlertRuleSpec) -> alerts_pb2.AlertRule:
        """Store a rule; the answer shows generated webhook secrets in full (the only time)."""
        return self._call(self._alerts.CreateAlertRule, alerts_pb2.CreateAlertRuleRequest(rule=rule)).rule

    def update_alert_rule(self, rule_id: int, rule: alerts_pb2.AlertRuleSpec) -> alerts_pb2.AlertRule:
        return self._call(self._alerts.UpdateAlertRule, alerts_pb2.UpdateAlertRuleRequest(id=rule_id, rule=rule)).rule

    def alert_rules(self) -> list[alerts_pb2.AlertRule]:
        return list(self._call(self._alerts.ListAlertRules, alerts_pb2.ListAlertRulesRequest()).rules)

    def delete_alert_rule(self, rule_id: int) -> None:
        self._call(self._alerts.DeleteAlertRule, alerts_pb2.DeleteAlertRuleRequest(id=rule_id))

    def test_alert_rule(
        self, rule_id: int = 0, rule: alerts_pb2.AlertRuleSpec | None = None
    ) -> alerts_pb2.TestAlertRuleResponse:
        """Evaluate a stored rule (by id) or a definition now; nothing is stored or sent."""
        return self._call(self._alerts.TestAlertRule, alerts_pb2.TestAlertRuleRequest(id=rule_id, rule=rule))

    def alert_events(
        self, rule_id: int = 0, *, page_size: int = 0, page_token: str = ""
    ) -> alerts_pb2.ListAlertEventsResponse:
        """State transitions, newest first (of one rule, or of all with rule_id 0)."""
        request = alerts_pb2.ListAlertEventsRequest(rule_id=rule_id, page_size=page_size, page_token=page_token)
        return self._call(self._alerts.ListAlertEvents, request)


def alert_rule_spec(
    name: str,
    metric: str,
    comparison: str,
    threshold: float,
    *,
    window_minutes: int = 15,
    scope: str = "everything",
    scope_value: str = "",
    min_samples: int = 0,
    pending_for_s: int = 0,
    repeat_interval_s: int = 0,
    labels: dict[str, str] | None = None,
    webhooks: Sequence[str | tuple[str, str] | tuple[str, str, str]] = (),
    enabled: bool = True,
) -> alerts_pb2.AlertRuleSpec:
    """A rule definition from words (`"failure_rate_pct"`, `"gt"`, `"checkpoint"`); each webhook is a url,
    (url, format) or (url, format, secret) with format "standard" or "slack"."""
    from generation_analytics.vocabulary import AlertMetric, AlertScope, Comparison, WebhookFormat

    targets = []
    for hook in webhooks:
        url, fmt, secret = (hook, "standard", "") if isinstance(hook, str) else (*hook, "")[:3]
        targets.append(alerts_pb2.WebhookTarget(url=url, secret=secret, format=WebhookFormat.parse(fmt).to_proto()))  # type: ignore[arg-type]
    return alerts_pb2.AlertRuleSpec(
        name=name,
        metric=AlertMetric.parse(metric, field="metric").to_proto(),  # type: ignore[arg-type]
        comparison=Comparison.parse(comparison, field="comparison").to_proto(),  # type: ignore[arg-type]
        threshold=threshold,
        window_minutes=window_minutes,
        scope=AlertScope.parse(scope, field="scope").to_proto(),  # type: ignore[arg-type]
        scope_value=scope_value,
        min_samples=min_samples,
        pending_for_s=pending_for_s,
        repeat_interval_s=repeat_interval_s,
        labels=labels or {},
        targets=targets,
        enabled=enabled,
    )
