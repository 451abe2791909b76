"""Conversions between the service's plain values and protobuf messages (the edge of the server).

Strict both ways: a result dataclass converts to its message only when their field names match exactly,
and a request converts to its question only through `generation_analytics.questions`; a field renamed on
one side fails loudly (and in tests/test_contract.py) instead of becoming a silent zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp

from generation_analytics.questions import Question, from_request
from generation_analytics.service.errors import InvalidArgument
from generation_analytics.service.queries.events import EventRecord
from generation_analytics.service.queries.status import JobRunStatus, PipelineStatus
from generation_analytics.v1 import events_pb2, pipeline_pb2
from generation_analytics.vocabulary import WORDS_BY_PROTO, EventType, UnknownValue, Word


def timestamp(moment: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp for `moment` (None stays None, so the field stays unset)."""
    if moment is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(moment.astimezone(UTC))
    return ts


def from_timestamp(ts: Timestamp, field: str) -> datetime:
    """The UTC datetime of a request Timestamp, refusing values datetime cannot hold."""
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(field, f"not a valid timestamp ({exc})") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EVENT_TYPE_NUMBERS = {word.value: word.to_proto() for word in EventType}


def _timestamp_fast(moment: datetime) -> Timestamp:
    """`timestamp` for an aware datetime, without FromDatetime's checks (exports build millions)."""
    delta = moment - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1_000)


def stored_event(record: EventRecord) -> events_pb2.StoredEvent:
    """A generation_events row as a StoredEvent (NULL columns leave fields unset)."""
    event = events_pb2.GenerationEvent(
        event_id=record.event_id,
        event_type=cast("events_pb2.EventType.ValueType", _EVENT_TYPE_NUMBERS[record.event_type]),
        generation_id=record.generation_id,
        user_id=record.user_id,
        timestamp=_timestamp_fast(record.timestamp),
        error_type=record.error_type or "",
        error_message=record.error_message or "",
        model_checkpoint=record.model_checkpoint or "",
        generation_type=record.generation_type or "",
        attributes=record.attributes,
    )
    for name in _OPTIONAL_EVENT_FIELDS:
        value = getattr(record, name)
        if value is not None:
            setattr(event, name, value)
    if record.image_width is not None or record.image_height is not None:
        event.image_dimensions.width = record.image_width or 0
        event.image_dimensions.height = record.image_height or 0
    return events_pb2.StoredEvent(id=record.id, created_at=_timestamp_fast(record.created_at), event=event)


_OPTIONAL_EVENT_FIELDS = (
    "duration_ms", "success", "queue_length", "queue_wait_time_ms", "generation_time_ms", "batch_size", "prompt_tokens",
)  # fmt: skip
_SPECIAL: dict[str, Callable[[Any], Message]] = {"generation_analytics.v1.StoredEvent": stored_event}

M = TypeVar("M", bound=Message)
Q = TypeVar("Q", bound=Question)


class UnmatchedField(TypeError):
    """A result dataclass and a message that disagree on a field name (a bug, never the caller's fault)."""


def to_question(question: type[Q], request: Message) -> Q:
    """The question a request asks; an enum number the contract does not know is INVALID_ARGUMENT."""
    try:
        return from_request(question, request)
    except UnknownValue as exc:
        raise InvalidArgument(exc.field, str(exc)) from None


def unmatched(names: set[str], message_cls: type[Message] | Any) -> tuple[set[str], set[str]]:
    """(names the message lacks, message fields the names lack)."""
    message_names = set(message_cls.DESCRIPTOR.fields_by_name)
    return names - message_names, message_names - names


def to_message(obj: Any, message_cls: type[M]) -> M:
    """Build a message from a dataclass whose field names are exactly the message's (the query results).

    Raises:
        UnmatchedField: a field of one has no counterpart in the other.
    """
    plan = _PLANS.get((type(obj), message_cls))
    if plan is None:
        plan = _PLANS[(type(obj), message_cls)] = _plan(type(obj), message_cls)
    kwargs: dict[str, Any] = {}
    for name, convert, repeated in plan:
        value = getattr(obj, name)
        if value is None:
            continue
        if convert is None:
            kwargs[name] = value
        elif repeated and isinstance(value, list | tuple):
            kwargs[name] = [convert(item) for item in value]
        else:
            kwargs[name] = convert(value)
    return message_cls(**kwargs)


Plan = tuple[tuple[str, Callable[[Any], Any] | None, bool], ...]
_PLANS: dict[tuple[type, type], Plan] = {}


def _plan(result_cls: type, message_cls: type[Message]) -> Plan:
    """Per field of `result_cls`: its name, how its values become the message's (None: as they are) and
    whether it is repeated. Checked and worked out once per pair (trends build thousands of points)."""
    extra, missing = unmatched({f.name for f in dataclasses.fields(result_cls)}, message_cls)
    if extra or missing:
        raise UnmatchedField(
            f"{result_cls.__name__} -> {message_cls.DESCRIPTOR.name}: "
            f"no message field for {sorted(extra)}, no result field for {sorted(missing)}"
        )
    by_name = message_cls.DESCRIPTOR.fields_by_name
    return tuple(
        (f.name, _converter(by_name[f.name]), by_name[f.name].is_repeated) for f in dataclasses.fields(result_cls)
    )


def _converter(descriptor: Any) -> Callable[[Any], Any] | None:
    """How one value of the field is converted: enums from their words, messages from datetimes (Timestamp)
    or result dataclasses; scalars, maps and messages given as such pass unchanged."""
    if descriptor.enum_type is not None:
        words = WORDS_BY_PROTO[descriptor.enum_type.full_name]
        return lambda value: (value if isinstance(value, Word) else words(value)).to_proto()
    if descriptor.message_type is None:
        return None
    special = _SPECIAL.get(descriptor.message_type.full_name)
    nested = GetMessageClass(descriptor.message_type)

    def message(value: Any) -> Any:
        if isinstance(value, datetime):
            return _timestamp_fast(value) if value.tzinfo is not None else timestamp(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return special(value) if special else to_message(value, nested)
        return value

    return message


def _job_run(run: JobRunStatus | None) -> pipeline_pb2.JobRun:
    if run is None:
        return pipeline_pb2.JobRun()
    return pipeline_pb2.JobRun(
        started_at=timestamp(run.started_at),
        duration_s=run.duration_s,
        processed=run.processed,
        error=run.error,
        last_error_at=timestamp(run.last_error_at),
        last_error=run.last_error,
    )


def pipeline_status_message(status: PipelineStatus) -> pipeline_pb2.GetPipelineStatusResponse:
    now = status.now

    def age(moment: datetime | None) -> float:
        return max((now - moment).total_seconds(), 0.0) if moment is not None else 0.0

    return pipeline_pb2.GetPipelineStatusResponse(
        stream_length=status.stream.length,
        pending_entries=status.stream.pending,
        undelivered_entries=status.stream.undelivered,
        oldest_untransferred_age_s=age(status.stream.oldest_untransferred_at),
        dead_letter_count=status.stream.dead_letters,
        latest_event_at=timestamp(status.latest_event_at),
        seconds_since_latest_event=age(status.latest_event_at),
        total_events=status.total_events,
        latest_hourly_metric_at=timestamp(status.latest_hourly_metric_at),
        seconds_since_latest_hourly_metric=age(status.latest_hourly_metric_at),
        total_hours=status.total_hours,
        hours_with_data=[
            pipeline_pb2.DayCoverage(day=day.isoformat(), hours_with_data=count)
            for day, count in status.hours_with_data
        ],
        last_transfer=_job_run(status.jobs.get("transfer")),
        last_aggregation=_job_run(status.jobs.get("aggregation")),
        dirty_hours=status.dirty_hours,
        failing_hours=[
            pipeline_pb2.FailingHour(
                hour=timestamp(f.hour),
                failing_since=timestamp(f.failing_since),
                failures=f.failures,
                last_error=f.last_error,
                next_retry_at=timestamp(f.next_retry_at),
            )
            for f in status.failing_hours
        ],
        failing_hours_count=status.failing_hours_count,
        stream_shards=[
            pipeline_pb2.StreamShard(
                index=shard.index,
                key=shard.key,
                length=shard.length,
                pending_entries=shard.pending,
                undelivered_entries=shard.undelivered,
                oldest_untransferred_age_s=age(shard.oldest_untransferred_at),
                dead_letter_count=shard.dead_letters,
            )
            for shard in status.stream.shards
        ],
    )
