"""The empty grpc.aio baseline for bench.ingest: RecordEvent that only echoes the event_id back.

Same message types, same event loop (uvloop) and server options as the service, no work at all —
or, given a Redis URL, one Redis round trip (PING on the service's own `RedisLink`) per RecordEvent:
the floor of a call whose answer means "Redis has it".

    .venv/bin/python -m bench.echo_server 127.0.0.1:50100 [redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import uvloop

from generation_analytics.service.ingest.redis_link import RedisLink
from generation_analytics.v1 import events_pb2, events_pb2_grpc


class Echo(events_pb2_grpc.EventServiceServicer):
    def __init__(self, redis_url: str | None) -> None:
        self._link = RedisLink(redis_url, timeout_s=5.0) if redis_url else None

    async def RecordEvent(
        self, request: events_pb2.RecordEventRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> events_pb2.RecordEventResponse:
        if self._link is not None:
            await self._link.execute("PING")
        return events_pb2.RecordEventResponse(event_id=request.event.event_id)

    async def RecordEvents(
        self, request: events_pb2.RecordEventsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> events_pb2.RecordEventsResponse:
        return events_pb2.RecordEventsResponse(
            accepted_count=len(request.events), event_ids=[e.event_id for e in request.events]
        )


async def main(addr: str, redis_url: str | None) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 << 20), ("grpc.so_reuseport", 0)])
    events_pb2_grpc.add_EventServiceServicer_to_server(Echo(redis_url), server)
    server.add_insecure_port(addr)
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
