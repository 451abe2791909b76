"""The contract: every RPC in the service descriptors has a server method (and, later, a client method)."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import ServiceDescriptor

from generation_analytics.service import rpc
from generation_analytics.v1 import analytics_pb2, events_pb2, pipeline_pb2

SERVICES: list[tuple[ServiceDescriptor, type]] = [
    (events_pb2.DESCRIPTOR.services_by_name["EventService"], rpc.EventServicer),
    (analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"], rpc.AnalyticsServicer),
    (pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"], rpc.PipelineServicer),
]


@pytest.mark.parametrize(("service", "servicer"), SERVICES, ids=[s.name for s, _ in SERVICES])
def test_every_rpc_has_a_server_method(service: ServiceDescriptor, servicer: type) -> None:
    missing = [m.name for m in service.methods if m.name not in vars(servicer)]
    assert missing == [], f"{servicer.__name__} leaves {missing} to the generated UNIMPLEMENTED stub"


def test_every_rpc_has_a_client_method() -> None:
    from generation_analytics.client.client import RPC_METHODS, AnalyticsClient

    rpcs = [m.name for service, _ in SERVICES for m in service.methods]
    assert sorted(RPC_METHODS) == sorted(rpcs)
    missing = [name for name in RPC_METHODS.values() if not callable(getattr(AnalyticsClient, name, None))]
    assert missing == []
