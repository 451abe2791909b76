"""A real gRPC server on a real port, run on its own event loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import grpc
import pytest

from generation_analytics.service.api.gateway import Gateway, start_gateway
from generation_analytics.service.api.runtime import Runtime
from generation_analytics.service.api.server import GrpcServer, start_grpc
from generation_analytics.service.settings import Settings
from generation_analytics.v1 import analytics_pb2_grpc, events_pb2_grpc, pipeline_pb2_grpc

T = TypeVar("T")


class LiveServer:
    """The service in a thread: `address` to dial, stubs over a real channel, and its runtime."""

    def __init__(self, settings: Settings, *, http_addr: str = "127.0.0.1:0") -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="live-server", daemon=True)
        self._thread.start()
        self.runtime: Runtime = self.call(Runtime.open(settings, run_migrations=False))
        self._grpc: GrpcServer = self.call(start_grpc(self.runtime, listen_addr="127.0.0.1:0"))
        self.address = f"127.0.0.1:{self._grpc.port}"
        self._gateway: Gateway = self.call(start_gateway(self.runtime, http_addr))
        self.http = f"http://127.0.0.1:{self._gateway.port}"
        self.channel = grpc.insecure_channel(self.address)
        self.events = events_pb2_grpc.EventServiceStub(self.channel)
        self.analytics = analytics_pb2_grpc.AnalyticsServiceStub(self.channel)
        self.pipeline = pipeline_pb2_grpc.PipelineServiceStub(self.channel)

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        """Run `coro` on the server's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout_s)

    def close(self) -> None:
        self.channel.close()
        self.call(self._gateway.stop())
        self.call(self._grpc.stop(0))
        self.call(self.runtime.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    server = LiveServer(settings)
    try:
        yield server
    finally:
        server.close()
