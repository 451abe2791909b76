"""The contract's words, defined once: event types, trend intervals, event and user orders.

Each is a StrEnum whose values are the names users see (the seed's JSON and SQL: "request", "hourly",
"slowest"); each maps one-to-one onto a protobuf enum of the contract (EVENT_TYPE_REQUEST, ...), and
`from_proto` / `to_proto` are the only translation between the two. The service, the client, the CLI
and the HTTP gateway all speak these, so adding a word is one edit here and one in the proto.
"""

from __future__ import annotations

import functools
from enum import StrEnum
from typing import Any, TypeVar

from google.protobuf.descriptor import EnumDescriptor

from generation_analytics.v1 import alerts_pb2, analytics_pb2, events_pb2


class UnknownValue(ValueError):
    """A value that is not a word of the vocabulary (`field` names where it came from)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


class Word(StrEnum):
    """A vocabulary enum, tied to the protobuf enum whose values are PREFIX + NAME (0 = unspecified)."""

    @classmethod
    def proto(cls) -> EnumDescriptor:
        return PROTO_ENUMS[cls]

    @classmethod
    def from_proto(cls: type[W], number: int, *, field: str = "") -> W:
        """The word for a protobuf enum number (not 0: the caller decides what unspecified means)."""
        words: dict[int, W] = _words_by_number(cls)
        word = words.get(number)
        if word is None:
            raise UnknownValue(field or cls.__name__, f"unknown value {number}")
        return word

    def to_proto(self) -> int:
        descriptor = type(self).proto()
        return descriptor.values_by_name[_prefix(descriptor) + self.value.upper()].number

    @classmethod
    def parse(cls: type[W], text: str, *, field: str = "") -> W:
        """The word a user typed (case-insensitive), or UnknownValue listing the words."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise UnknownValue(field or cls.__name__, f"must be one of {choices} (got {text!r})") from None


W = TypeVar("W", bound=Word)


class EventType(Word):
    """What a GenerationEvent reports."""

    REQUEST = "request"
    COMPLETION = "completion"
    CANCELLATION = "cancellation"


class Interval(Word):
    """The bucket size of trends."""

    HOURLY = "hourly"
    DAILY = "daily"


class Order(Word):
    """The order of ListEvents: newest first, or slowest completions first."""

    NEWEST = "newest"
    SLOWEST = "slowest"


class UserOrder(Word):
    """The order of ListTopUsers: most requests, or most GPU time first."""

    REQUESTS = "requests"
    GPU_TIME = "gpu_time"


class AlertMetric(Word):
    """What an alert rule measures over its window (alerts.proto documents each)."""

    FAILURE_RATE_PCT = "failure_rate_pct"
    SUCCESS_RATE_PCT = "success_rate_pct"
    P95_DURATION_MS = "p95_duration_ms"
    P99_DURATION_MS = "p99_duration_ms"
    REQUEST_VOLUME = "request_volume"
    CANCELLATION_RATE_PCT = "cancellation_rate_pct"
    AVG_QUEUE_LENGTH = "avg_queue_length"
    FAILURES = "failures"
    DEAD_LETTERS = "dead_letters"
    PIPELINE_LAG_S = "pipeline_lag_s"


class AlertScope(Word):
    """Which events an alert rule looks at."""

    EVERYTHING = "everything"
    CHECKPOINT = "checkpoint"
    ERROR_TYPE = "error_type"
    ERROR_GROUP = "error_group"


class Comparison(Word):
    """How a rule compares its value with its threshold: breaching when true."""

    GT = "gt"
    GE = "ge"
    LT = "lt"
    LE = "le"

    def holds(self, value: float, threshold: float) -> bool:
        return {"gt": value > threshold, "ge": value >= threshold, "lt": value < threshold,
                "le": value <= threshold}[self.value]  # fmt: skip


class AlertState(Word):
    """Where an alert rule stands."""

    OK = "ok"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"
    NO_DATA = "no_data"
    ERROR = "error"


class WebhookFormat(Word):
    """The body posted to a webhook target."""

    STANDARD = "standard"
    SLACK = "slack"


PROTO_ENUMS: dict[type[Word], EnumDescriptor] = {
    EventType: events_pb2.EventType.DESCRIPTOR,
    Interval: analytics_pb2.Interval.DESCRIPTOR,
    Order: analytics_pb2.EventOrder.DESCRIPTOR,
    UserOrder: analytics_pb2.UserOrder.DESCRIPTOR,
    AlertMetric: alerts_pb2.AlertMetric.DESCRIPTOR,
    AlertScope: alerts_pb2.AlertScope.DESCRIPTOR,
    Comparison: alerts_pb2.Comparison.DESCRIPTOR,
    AlertState: alerts_pb2.AlertState.DESCRIPTOR,
    WebhookFormat: alerts_pb2.WebhookFormat.DESCRIPTOR,
}
WORDS_BY_PROTO: dict[str, type[Word]] = {descriptor.full_name: cls for cls, descriptor in PROTO_ENUMS.items()}


@functools.cache
def _words_by_number(cls: type[W]) -> dict[int, W]:
    """Every word of `cls` by its protobuf number, 0 left out (transfer looks one up per event: a dict,
    not a walk through the descriptor)."""
    prefix = _prefix(cls.proto())
    words = {word.value: word for word in cls}
    names = ((v.number, v.name.removeprefix(prefix).lower()) for v in cls.proto().values if v.number != 0)
    return {number: words[name] for number, name in names if name in words}


def _prefix(descriptor: EnumDescriptor) -> str:
    """EVENT_TYPE_ for EventType: the name of value 0 without its UNSPECIFIED."""
    return descriptor.values[0].name.removesuffix("UNSPECIFIED")


def label(descriptor: Any, number: int) -> str:
    """The word of a protobuf enum number ("" for unspecified); numbers the enum does not know, as text."""
    value = descriptor.values_by_number.get(number)
    if value is None:
        return str(number)
    return "" if number == 0 else value.name.removeprefix(_prefix(descriptor)).lower()
