"""The gRPC server: services, health, reflection, limits, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from generation_analytics.service.api.auth import AuthInterceptor, auth_enabled, is_loopback
from generation_analytics.service.api.gateway import start_gateway
from generation_analytics.service.api.rpc import AnalyticsServicer, EventServicer, PipelineServicer, add_service
from generation_analytics.service.api.runtime import Runtime
from generation_analytics.service.embedded import start_embedded
from generation_analytics.service.settings import Settings, TlsSettings
from generation_analytics.v1 import analytics_pb2, events_pb2, pipeline_pb2

log = logging.getLogger(__name__)

# The asyncio health servicer; grpc-stubs do not know `health.aio` yet.
AsyncHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

SERVICES = {
    "EventService": events_pb2.DESCRIPTOR.services_by_name["EventService"],
    "AnalyticsService": analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"],
    "PipelineService": pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"],
}
SERVICE_NAMES = tuple(service.full_name for service in SERVICES.values())


@dataclass
class GrpcServer:
    """A started gRPC server and the port it listens on."""

    server: grpc.aio.Server
    health: Any
    port: int

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish for up to `grace_s`, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def start_grpc(runtime: Runtime, *, listen_addr: str | None = None) -> GrpcServer:
    """Build and start the gRPC server for `runtime` on `listen_addr` (default: the settings')."""
    limits = runtime.settings.limits
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
        interceptors=[AuthInterceptor(runtime.api_keys)] if runtime.api_keys else None,
    )
    metrics = runtime.metrics
    pipeline = PipelineServicer(
        runtime.pipeline, redis_client=runtime.redis, pool=runtime.pool, keys=runtime.keys, metrics=metrics
    )
    add_service(server, EventServicer(runtime.capture, metrics), SERVICES["EventService"])
    add_service(server, AnalyticsServicer(runtime.queries, metrics), SERVICES["AnalyticsService"])
    add_service(server, pipeline, SERVICES["PipelineService"])

    health_servicer = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    addr = listen_addr or runtime.settings.server.listen_addr
    tls = runtime.settings.tls
    port = server.add_secure_port(addr, server_credentials(tls)) if tls.enabled else server.add_insecure_port(addr)
    if port == 0:
        raise RuntimeError(f"cannot listen on {addr}")
    await server.start()
    log.info("gRPC listening on %s (port %d, %s)", addr, port, describe_tls(tls))
    return GrpcServer(server=server, health=health_servicer, port=port)


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """TLS for gRPC from the PEM files; with a client CA, clients must present a certificate it signed."""
    pair = (Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())
    ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def describe_tls(tls: TlsSettings) -> str:
    if not tls.enabled:
        return "plaintext"
    return "TLS, client certificates required (mTLS)" if tls.client_ca_file else "TLS"


def check_exposure(settings: Settings, *, auth: bool) -> None:
    """Refuse to serve a network without keys unless that is what the operator asked for."""
    exposed = [addr for addr in Runtime.listeners(settings) if not is_loopback(addr)]
    if auth:
        log.info("auth: on (API keys required; health open; reflection needs any valid key)")
    elif exposed and not settings.auth.allow_unauthenticated:
        raise SystemExit(
            f"refusing to serve {', '.join(exposed)} without API keys (GA_AUTH=off): anyone who can reach it "
            "could read every user's analytics. Use GA_AUTH=on (or auto), or set GA_ALLOW_UNAUTHENTICATED=true "
            "if this network is trusted."
        )
    elif exposed:
        log.warning("auth: OFF on %s (GA_ALLOW_UNAUTHENTICATED=true): anyone who can reach it may call anything",
                    ", ".join(exposed))  # fmt: skip
    else:
        log.info("auth: off (loopback only; GA_AUTH=on to require API keys here too)")


async def serve(settings: Settings) -> None:
    """Run the whole service until SIGTERM/SIGINT: embedded servers if needed, migrations, gRPC."""
    check_exposure(settings, auth=auth_enabled(settings.auth, Runtime.listeners(settings)))
    loop = asyncio.get_running_loop()
    settings, embedded = await asyncio.to_thread(start_embedded, settings)
    try:
        runtime = await Runtime.open(settings)
        try:
            grpc_server = await start_grpc(runtime)
            http_addr = settings.server.http_addr
            gateway = await start_gateway(runtime, http_addr) if http_addr.lower() != "off" else None
            stop = asyncio.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            log.info("serving; SIGTERM or Ctrl-C stops")
            await stop.wait()
            log.info("shutting down (grace %.1f s)", settings.server.shutdown_grace_s)
            if gateway:
                await gateway.stop()
            await grpc_server.stop(settings.server.shutdown_grace_s)
        finally:
            await runtime.close()
    finally:
        await asyncio.to_thread(embedded.stop)
