"""The questions AnalyticsService answers, as typed requests: one dataclass per RPC.

Every front end builds them once — the gRPC servicer from request messages (`from_request`), the HTTP
gateway from query strings and the CLI from its arguments (`build`, from text), the client from keyword
arguments (`to_request` for the wire) — and the service answers them. Field names are the request
messages' field names (the contract test holds them equal), so adding a filter is one field in the
proto, one here, and its SQL.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from generation_analytics.v1 import analytics_pb2
from generation_analytics.vocabulary import EventType, Interval, Order, UnknownValue, UserOrder, Word


@dataclass(frozen=True, kw_only=True)
class Question:
    """Common to every question: the window, `days` days back from the current hour (None: the default)."""

    RPC: ClassVar[str]
    DEFAULT_DAYS: ClassVar[int]

    days: int | None = None


@dataclass(frozen=True, kw_only=True)
class OverviewQuestion(Question):
    RPC = "GetOverview"
    DEFAULT_DAYS = 7

    compare_previous: bool = False  # also answer the previous equal window, and what changed


@dataclass(frozen=True, kw_only=True)
class TrendsQuestion(Question):
    RPC = "GetTrends"
    DEFAULT_DAYS = 7

    interval: Interval = Interval.HOURLY
    time_zone: str = ""  # IANA name of the zone daily buckets are cut in ("": UTC)


@dataclass(frozen=True, kw_only=True)
class UserQuestion(Question):
    RPC = "GetUserAnalytics"
    DEFAULT_DAYS = 30

    user_id: str
    limit: int | None = None  # longest breakdown list (LIST_LIMIT)


@dataclass(frozen=True, kw_only=True)
class ModelsQuestion(Question):
    RPC = "GetModelPerformance"
    DEFAULT_DAYS = 30

    limit: int | None = None
    compare_previous: bool = False


@dataclass(frozen=True, kw_only=True)
class FailuresQuestion(Question):
    RPC = "GetFailureAnalysis"
    DEFAULT_DAYS = 7

    limit: int | None = None
    time_zone: str = ""
    compare_previous: bool = False


@dataclass(frozen=True, kw_only=True)
class PeakHoursQuestion(Question):
    RPC = "GetPeakHours"
    DEFAULT_DAYS = 30

    time_zone: str = ""


@dataclass(frozen=True, kw_only=True)
class EventFilters(Question):
    """The filters of raw events ("" / None: any), shared by ListEvents and ExportEvents."""

    DEFAULT_DAYS = 7

    user_id: str = ""
    model_checkpoint: str = ""
    event_type: EventType | None = None
    success: bool | None = None
    error_type: str = ""
    min_duration_ms: int | None = None


@dataclass(frozen=True, kw_only=True)
class EventsQuestion(EventFilters):
    """ListEvents: the filters, the order, and paging."""

    RPC = "ListEvents"

    order: Order = Order.NEWEST
    page_size: int | None = None
    page_token: str = ""


@dataclass(frozen=True, kw_only=True)
class ExportQuestion(EventFilters):
    """ExportEvents: every event ListEvents lists for the same filters, newest first, streamed."""

    RPC = "ExportEvents"

    # An export is ListEvents' newest-first order over every page: the events ListEvents would list.
    order: ClassVar[Order] = Order.NEWEST
    page_token: ClassVar[str] = ""


@dataclass(frozen=True, kw_only=True)
class TopUsersQuestion(Question):
    RPC = "ListTopUsers"
    DEFAULT_DAYS = 30

    limit: int | None = None
    order: UserOrder = UserOrder.REQUESTS


@dataclass(frozen=True, kw_only=True)
class CheckpointsQuestion(Question):
    """CompareCheckpoints: checkpoint b against checkpoint a (the baseline), over one window."""

    RPC = "CompareCheckpoints"
    DEFAULT_DAYS = 7

    model_checkpoint_a: str
    model_checkpoint_b: str


@dataclass(frozen=True, kw_only=True)
class ErrorGroupsQuestion(Question):
    """ListErrorGroups: failed completions by error group, most failures first, filtered and paged."""

    RPC = "ListErrorGroups"
    DEFAULT_DAYS = 7

    model_checkpoint: str = ""
    error_type: str = ""
    page_size: int | None = None
    page_token: str = ""


QUESTIONS: dict[str, type[Question]] = {
    cls.RPC: cls
    for cls in (
        OverviewQuestion,
        TrendsQuestion,
        UserQuestion,
        ModelsQuestion,
        FailuresQuestion,
        PeakHoursQuestion,
        EventsQuestion,
        TopUsersQuestion,
        CheckpointsQuestion,
        ErrorGroupsQuestion,
        ExportQuestion,
    )
}
_SERVICE = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"]

Q = TypeVar("Q", bound=Question)


def request_class(question: type[Question]) -> type[Message]:
    """The request message of the question's RPC."""
    return GetMessageClass(_SERVICE.methods_by_name[question.RPC].input_type)


def field_type(question: type[Question], name: str) -> type:
    """The type of a field without its `| None`: int, str, bool or a vocabulary Word."""
    hint = typing.get_type_hints(question)[name]
    if isinstance(hint, types.UnionType):
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
    assert isinstance(hint, type)
    return hint


def from_request(question: type[Q], message: Message) -> Q:
    """The question a request message asks: unset optional fields and unspecified enums take the
    question's defaults. Raises UnknownValue for an enum number the contract does not know."""
    descriptor: Any = message.DESCRIPTOR
    values: dict[str, Any] = {}
    for f in dataclasses.fields(question):
        proto_field = descriptor.fields_by_name[f.name]
        value = getattr(message, f.name)
        if proto_field.has_presence and not message.HasField(f.name):
            continue
        kind = field_type(question, f.name)
        if issubclass(kind, Word):
            if value == 0:
                continue
            value = kind.from_proto(value, field=f.name)
        values[f.name] = value
    return question(**values)


def to_request(question: Question) -> Message:
    """The request message for a question (the client's side of `from_request`)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(question):
        value = getattr(question, f.name)
        if value is None:
            continue
        values[f.name] = value.to_proto() if isinstance(value, Word) else value
    return request_class(type(question))(**values)


def build(question: type[Q], **given: Any) -> Q:
    """A question from loosely typed values (the CLI's and gateway's text, a client's keywords): words
    and booleans given as text are parsed; None and absent values take the defaults. Raises UnknownValue
    (naming the field) for a value it cannot read or a required field left out."""
    values: dict[str, Any] = {}
    for name, raw in given.items():
        if raw is None:
            continue
        kind = field_type(question, name)
        if issubclass(kind, Word) and not isinstance(raw, kind):
            if raw == "":
                continue
            values[name] = kind.parse(str(raw), field=name)
        elif kind is bool and isinstance(raw, str):
            values[name] = parse_bool(raw, field=name)
        else:
            values[name] = raw
    for f in dataclasses.fields(question):
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UnknownValue(f.name, "is required")
    return question(**values)


_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


def parse_bool(text: str, *, field: str) -> bool:
    """true/false (also 1/0, yes/no, any case) as the CLI and the gateway read them; UnknownValue otherwise."""
    word = text.strip().lower() if text.isascii() else text
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise UnknownValue(field, f"must be true or false (got {text!r:.40})")


__all__ = [
    "QUESTIONS",
    "CheckpointsQuestion",
    "ErrorGroupsQuestion",
    "EventFilters",
    "EventsQuestion",
    "ExportQuestion",
    "FailuresQuestion",
    "ModelsQuestion",
    "OverviewQuestion",
    "PeakHoursQuestion",
    "Question",
    "TopUsersQuestion",
    "TrendsQuestion",
    "UnknownValue",
    "UserQuestion",
    "build",
    "field_type",
    "from_request",
    "parse_bool",
    "request_class",
    "to_request",
]
