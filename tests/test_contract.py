"""The contract, walked from the service descriptors: every RPC has a server and a client method, every
request matches its question and every response its result type, field for field (recursively), and
every vocabulary word maps onto the proto enum. A renamed field fails here, not as a silent zero."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from generation_analytics.questions import QUESTIONS, request_class
from generation_analytics.service.alerts.history import AlertEventPage
from generation_analytics.service.api import rpc
from generation_analytics.service.api.alert_rpc import AlertServicer, RuleTrial
from generation_analytics.service.pipeline.aggregate import AggregationReport
from generation_analytics.service.pipeline.transfer import TransferReport
from generation_analytics.service.queries.events import EventRecord
from generation_analytics.service.queries.service import ANSWERS
from generation_analytics.v1 import alerts_pb2, analytics_pb2, events_pb2, pipeline_pb2
from generation_analytics.vocabulary import PROTO_ENUMS, UnknownValue, Word

SERVICES: list[tuple[ServiceDescriptor, type]] = [
    (events_pb2.DESCRIPTOR.services_by_name["EventService"], rpc.EventServicer),
    (analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"], rpc.AnalyticsServicer),
    (pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"], rpc.PipelineServicer),
    (alerts_pb2.DESCRIPTOR.services_by_name["AlertService"], AlertServicer),
]
ANALYTICS = SERVICES[1][0]
# Results converted by a dedicated function rather than field by field (api/convert.py).
CONVERTED: dict[type, str] = {EventRecord: "generation_analytics.v1.StoredEvent"}
REPORTS = {"RunTransfer": TransferReport, "RunAggregation": AggregationReport}


@pytest.mark.parametrize(("service", "servicer"), SERVICES, ids=[s.name for s, _ in SERVICES])
def test_every_rpc_has_a_server_method(service: ServiceDescriptor, servicer: type) -> None:
    missing = [m.name for m in service.methods if not callable(getattr(servicer, m.name, None))]
    assert missing == [], f"{servicer.__name__} has no method for {missing}"


def test_every_rpc_has_a_client_method() -> None:
    from generation_analytics.client.client import RPC_METHODS, AnalyticsClient

    rpcs = [m.name for service, _ in SERVICES for m in service.methods]
    assert sorted(RPC_METHODS) == sorted(rpcs)
    missing = [name for name in RPC_METHODS.values() if not callable(getattr(AnalyticsClient, name, None))]
    assert missing == []


def test_every_analytics_rpc_is_a_question_with_an_answer() -> None:
    assert sorted(QUESTIONS) == sorted(m.name for m in ANALYTICS.methods)
    assert set(ANSWERS) == set(QUESTIONS.values())


@pytest.mark.parametrize("rpc_name", sorted(QUESTIONS))
def test_requests_match_their_questions(rpc_name: str) -> None:
    question = QUESTIONS[rpc_name]
    fields = {f.name for f in dataclasses.fields(question)}
    assert fields == set(request_class(question).DESCRIPTOR.fields_by_name)


def _unwrap(hint: Any) -> Any:
    """list[X] -> X, tuple[X, ...] -> X, X | None -> X."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = (a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        (hint,) = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    return hint


def assert_same_fields(result: type, message: Descriptor, path: str = "", seen: frozenset[str] = frozenset()) -> None:
    """The dataclass and the message have the same field names, and so do their nested types (each
    message once along a path: `previous` holds the message it is in)."""
    if CONVERTED.get(result) == message.full_name or message.full_name in seen:
        return
    names = {f.name for f in dataclasses.fields(result)}
    assert names == set(message.fields_by_name), (
        f"{path or result.__name__}: only in {result.__name__}: {sorted(names - set(message.fields_by_name))}; "
        f"only in {message.name}: {sorted(set(message.fields_by_name) - names)}"
    )
    hints = typing.get_type_hints(result)
    for field in message.fields:
        nested = field.message_type
        if nested is None or nested.full_name == "google.protobuf.Timestamp" or nested.GetOptions().map_entry:
            continue
        inner = _unwrap(hints[field.name])
        assert isinstance(inner, type) and dataclasses.is_dataclass(inner), f"{path}.{field.name}: not a result type"
        assert_same_fields(inner, nested, f"{path or result.__name__}.{field.name}", seen | {message.full_name})


@pytest.mark.parametrize("rpc_name", sorted(QUESTIONS))
def test_responses_match_their_result_types(rpc_name: str) -> None:
    _, result = ANSWERS[QUESTIONS[rpc_name]]
    assert_same_fields(result, ANALYTICS.methods_by_name[rpc_name].output_type)


@pytest.mark.parametrize("rpc_name", sorted(REPORTS))
def test_pipeline_reports_match_their_responses(rpc_name: str) -> None:
    service = SERVICES[2][0]
    assert_same_fields(REPORTS[rpc_name], service.methods_by_name[rpc_name].output_type)


def test_alert_results_match_their_messages() -> None:
    from generation_analytics.service.alerts.rules import Rule

    service = SERVICES[3][0]
    assert_same_fields(Rule, alerts_pb2.AlertRule.DESCRIPTOR)
    assert_same_fields(RuleTrial, service.methods_by_name["TestAlertRule"].output_type)
    assert_same_fields(AlertEventPage, service.methods_by_name["ListAlertEvents"].output_type)


@pytest.mark.parametrize("word", list(PROTO_ENUMS), ids=lambda w: w.__name__)
def test_every_word_maps_onto_its_proto_enum(word: type[Word]) -> None:
    proto = PROTO_ENUMS[word]
    numbers = {member.to_proto() for member in word}
    assert numbers == {v.number for v in proto.values if v.number != 0}, "a word or an enum value has no twin"
    assert all(word.from_proto(member.to_proto()) is member for member in word)
    for unknown in (0, max(numbers) + 1, -1):  # unspecified, and a number a newer producer might send
        with pytest.raises(UnknownValue, match="unknown value"):
            word.from_proto(unknown, field="event.x")


def test_a_renamed_result_field_fails_loudly() -> None:
    from generation_analytics.service.api.convert import UnmatchedField, to_message

    @dataclasses.dataclass
    class Renamed:
        lookback_days: int
        user: list[Any]  # the message calls it `users`

    with pytest.raises(UnmatchedField, match="users"):
        to_message(
            Renamed(lookback_days=1, user=[]), GetMessageClass(ANALYTICS.methods_by_name["ListTopUsers"].output_type)
        )
