"""The gRPC server: services, health, reflection, limits, and graceful shutdown on SIGTERM.

`serve` checks before starting anything that every listener can bind (a taken port is one line on
stderr and exit status 1, not a half-started service), then logs which Postgres and Redis it uses
(host, port, database; never a password), and keeps the gRPC health of each service in step with
Redis and Postgres (`health.py`).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import psycopg
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from psycopg.conninfo import conninfo_to_dict

from generation_analytics.service.api.alert_rpc import AlertServicer
from generation_analytics.service.api.auth import AuthInterceptor, auth_enabled, is_loopback
from generation_analytics.service.api.gateway import start_gateway
from generation_analytics.service.api.health import HealthMonitor
from generation_analytics.service.api.rpc import AnalyticsServicer, EventServicer, PipelineServicer, add_service
from generation_analytics.service.api.runtime import Runtime
from generation_analytics.service.embedded import start_embedded
from generation_analytics.service.settings import Settings, TlsSettings
from generation_analytics.v1 import alerts_pb2, analytics_pb2, events_pb2, pipeline_pb2

log = logging.getLogger(__name__)

# The asyncio health servicer; grpc-stubs do not know `health.aio` yet.
AsyncHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

SERVICES = {
    "EventService": events_pb2.DESCRIPTOR.services_by_name["EventService"],
    "AnalyticsService": analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"],
    "PipelineService": pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"],
    "AlertService": alerts_pb2.DESCRIPTOR.services_by_name["AlertService"],
}
SERVICE_NAMES = tuple(service.full_name for service in SERVICES.values())


@dataclass
class GrpcServer:
    """A started gRPC server, the port it listens on, and the monitor keeping its health current."""

    server: grpc.aio.Server
    health: Any
    port: int
    monitor: HealthMonitor | None = None

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish for up to `grace_s`, then stop."""
        if self.monitor:
            await self.monitor.stop()  # first: it must not set SERVING again during the grace period
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def start_grpc(runtime: Runtime, *, listen_addr: str | None = None, shared_port: bool = False) -> GrpcServer:
    """Build and start the gRPC server for `runtime` on `listen_addr` (default: the settings'). Its port
    is shared (SO_REUSEPORT) only with `shared_port`: otherwise a second server on it fails to start."""
    limits = runtime.settings.limits
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            ("grpc.so_reuseport", 1 if shared_port else 0),
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
    alerts = AlertServicer(pool=runtime.pool, redis_client=runtime.redis, keys=runtime.keys, metrics=metrics)
    add_service(server, alerts, SERVICES["AlertService"])

    health_servicer = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    monitor = HealthMonitor(runtime, health_servicer)
    await monitor.update()  # the first statuses are what Redis and Postgres say now, not a guess
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
    monitor.start()
    log.info("gRPC listening on %s (port %d, %s)", addr, port, describe_tls(tls))
    return GrpcServer(server=server, health=health_servicer, port=port, monitor=monitor)


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


def listen_error(addr: str) -> str | None:
    """Why `addr` ("host:port") cannot be listened on right now, or None if it can (port 0 always can).

    Bind-tests every address the host resolves to, with SO_REUSEADDR as the servers use it, so a port
    left in TIME_WAIT by a previous run passes and only a socket bound or listening there fails.
    """
    host, _, port_text = addr.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        return "not a host:port address"
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r} ({exc.strerror})"
    failures: list[str] = []
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return "address already in use"
                failures.append(os.strerror(exc.errno).lower() if exc.errno else str(exc))
    # A name with an address family this host lacks (localhost's ::1 without IPv6) is still served
    # on the others, as gRPC does; only an address none of whose forms can be bound is refused.
    return failures[0] if failures and len(failures) == len(infos) else None


def check_listeners(settings: Settings) -> None:
    """Refuse to start (one line, exit status 1) when a listener's address is taken or not ours."""
    for addr in Runtime.listeners(settings):
        reason = listen_error(addr)
        if reason:
            raise SystemExit(f"error: cannot listen on {addr}: {reason}")


def describe_postgres(dsn: str) -> str:
    """`host:port/database` of a DSN (URL or key=value): for the log, so never the user or password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:  # the connection attempt will say what is wrong
        return "(unparseable DSN)"
    host = params.get("host") or params.get("hostaddr") or "(libpq default host)"
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or '(default database)'}"


def describe_redis(url: str) -> str:
    """`host:port/db` of a Redis URL (`unix:` URLs: the socket path and db): never the password."""
    parts = urlsplit(url)
    db = parse_qs(parts.query).get("db", [""])[0]
    if parts.scheme == "unix":
        return f"unix:{parts.path} db {db or 0}"
    try:
        port = parts.port or 6379
    except ValueError:
        return "(unparseable URL)"
    prefix = "" if parts.scheme == "redis" else f"{parts.scheme}://"
    return f"{prefix}{parts.hostname or 'localhost'}:{port}/{parts.path.strip('/') or db or 0}"


def use_uvloop() -> None:
    """uvloop's event loop for the asyncio.run calls that follow, when it is installed."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


async def serve(settings: Settings) -> None:
    """Run the whole service until SIGTERM/SIGINT: embedded servers if needed, migrations, gRPC; with
    `GA_SERVE_PROCESSES` > 1, that many serving processes sharing the ports (`processes.py`)."""
    check_listeners(settings)  # before anything starts: nothing to undo when a port is taken
    check_exposure(settings, auth=auth_enabled(settings.auth, Runtime.listeners(settings)))
    if settings.server.processes > 1:
        check_fixed_ports(settings)
    settings, embedded = await asyncio.to_thread(start_embedded, settings)
    origin = {True: "embedded", False: "external"}
    log.info("postgres: %s (%s)", describe_postgres(settings.postgres.dsn), origin[embedded.postgres is not None])
    log.info("redis: %s (%s)", describe_redis(settings.redis.url), origin[embedded.redis is not None])
    try:
        if settings.server.processes > 1:
            from generation_analytics.service.api.processes import serve_processes

            await serve_processes(settings)
        else:
            await serve_here(settings)
    finally:
        await asyncio.to_thread(embedded.stop)


async def serve_here(settings: Settings, *, shared_ports: bool = False) -> None:
    """Serve in this process until SIGTERM/SIGINT (`shared_ports`: one of several processes on the ports)."""
    loop = asyncio.get_running_loop()
    runtime = await Runtime.open(settings)
    try:
        grpc_server = await start_grpc(runtime, shared_port=shared_ports)
        http_addr = settings.server.http_addr
        gateway = None
        if http_addr.lower() != "off":
            gateway = await start_gateway(runtime, http_addr, shared_port=shared_ports)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        # Everything made while starting (modules, pools, servers) lives as long as the process: out of the
        # GC's sight, so its full collections only walk what calls make, not the whole started service.
        gc.freeze()
        log.info("serving; SIGTERM or Ctrl-C stops")
        await stop.wait()
        log.info("shutting down (grace %.1f s)", settings.server.shutdown_grace_s)
        if gateway:
            await gateway.stop()
        await grpc_server.stop(settings.server.shutdown_grace_s)
    finally:
        await runtime.close()


def check_fixed_ports(settings: Settings) -> None:
    """Processes can share a port only if it is known before they start: port 0 would give each its own."""
    for addr in Runtime.listeners(settings):
        if addr.rpartition(":")[2] == "0":
            raise SystemExit(f"error: GA_SERVE_PROCESSES > 1 needs fixed ports, not {addr}")
