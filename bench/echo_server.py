"""The empty grpc.aio baseline for bench.ingest: RecordEvent that only echoes the event_id back.

Same message types, same event loop (uvloop) and server options as the service, no work at all.

    .venv/bin/python -m bench.echo_server 127.0.0.1:50100
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import uvloop

from generation_analytics.v1 import events_pb2, events_pb2_grpc


class Echo(events_pb2_grpc.EventServiceServicer):
    async def RecordEvent(
        self, request: events_pb2.RecordEventRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> events_pb2.RecordEventResponse:
        return events_pb2.RecordEventResponse(event_id=request.event.event_id)

    async def RecordEvents(
        self, request: events_pb2.RecordEventsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> events_pb2.RecordEventsResponse:
        return events_pb2.RecordEventsResponse(
            accepted_count=len(request.events), event_ids=[e.event_id for e in request.events]
        )


async def main(addr: str) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 << 20), ("grpc.so_reuseport", 0)])
    events_pb2_grpc.add_EventServiceServicer_to_server(Echo(), server)
    server.add_insecure_port(addr)
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main(sys.argv[1]))
