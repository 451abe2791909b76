"""HTTP JSON gateway: the seed document's REST paths, answered by the same query code as gRPC.

Each path asks one question of `generation_analytics.questions`, read from the query string by the
question's field types; responses are the RPCs' messages rendered by `generation_analytics.jsonify`:
proto field names, every field present, numbers as JSON numbers, RFC 3339 times. Bad parameters answer 400 with
`{"error": {"code": "INVALID_ARGUMENT", "field": ..., "message": ...}}`; other failures use the same
exception -> status mapping as gRPC (rpc.status_for), translated to HTTP once here.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from generation_analytics.jsonify import to_jsonable
from generation_analytics.questions import QUESTIONS, Question, UnknownValue, build, field_type
from generation_analytics.service.api.auth import KeyCache, bearer, http_requirement
from generation_analytics.service.api.convert import pipeline_status_message, to_message
from generation_analytics.service.api.rpc import status_for
from generation_analytics.service.api.runtime import Runtime
from generation_analytics.service.errors import InvalidArgument
from generation_analytics.service.metrics import CONTENT_TYPE
from generation_analytics.service.queries.service import AnalyticsQueries
from generation_analytics.service.queries.status import pipeline_status, stream_status
from generation_analytics.service.settings import TlsSettings
from generation_analytics.v1 import analytics_pb2

log = logging.getLogger(__name__)

PREFIX = "/api/v1/analytics/generation"
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


class Params:
    """A request's query string, read with types; unknown names are refused (they are usually typos)."""

    def __init__(self, request: web.Request, allowed: frozenset[str]) -> None:
        self._query = request.query
        unknown = sorted(set(self._query) - allowed)
        if unknown:
            raise InvalidArgument(unknown[0], f"unknown parameter (known: {', '.join(sorted(allowed)) or 'none'})")

    def value(self, name: str, kind: type) -> Any:
        """The parameter read as `kind` (int, bool, or text; words are parsed by `questions.build`)."""
        if kind is int:
            return self.integer(name)
        if kind is bool:
            return self.boolean(name)
        return self._query.get(name)

    def integer(self, name: str) -> int | None:
        raw = self._query.get(name)
        if raw is None or raw == "":
            return None
        try:
            return int(raw)
        except ValueError:
            raise InvalidArgument(name, f"must be an integer (got {raw!r})") from None

    def boolean(self, name: str) -> bool | None:
        raw = self._query.get(name, "").lower()
        if raw == "":
            return None
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise InvalidArgument(name, f"must be true or false (got {raw!r})")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as a JSON body with the HTTP status matching the gRPC code of the same error."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, "NOT_FOUND" if exc.status == 404 else exc.reason, exc.reason)
    except Exception as exc:  # mapped, and logged when unexpected
        code = status_for(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("%s %s failed", request.method, request.path)
            return _error(500, code.name, "internal error")
        field = exc.field if isinstance(exc, InvalidArgument) else None
        return _error(HTTP_STATUS.get(code, 500), code.name, str(exc), field)


def _error(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    headers = {"WWW-Authenticate": 'Bearer realm="generation-analytics"'} if status == 401 else None
    return web.json_response({"error": body}, status=status, headers=headers)


def require_keys(keys: KeyCache) -> Any:
    """The HTTP twin of the gRPC interceptor: `Authorization: Bearer ga_…`, scope per path (auth.py)."""

    @web.middleware
    async def check_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        await keys.check(bearer(request.headers.get("Authorization")), http_requirement(request.path))
        return await handler(request)

    return check_key


def _reply(message: Message) -> web.Response:
    return web.json_response(to_jsonable(message))


# Path (under PREFIX) -> the RPC whose question it asks; path parameters fill the fields they name.
ROUTES: dict[str, str] = {
    "/overview": "GetOverview",
    "/trends": "GetTrends",
    "/users": "ListTopUsers",
    "/users/{user_id}": "GetUserAnalytics",
    "/models": "GetModelPerformance",
    "/failures": "GetFailureAnalysis",
    "/peak-hours": "GetPeakHours",
    "/events": "ListEvents",
}
_ANALYTICS = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"]


def asking(queries: AnalyticsQueries, path: str, question: type[Question]) -> Handler:
    """The handler of a path: query string (and path) -> question -> answer -> JSON."""
    in_path = frozenset(re.findall(r"{(\w+)}", path))
    in_query = frozenset(f.name for f in dataclasses.fields(question)) - in_path
    response_cls = GetMessageClass(_ANALYTICS.methods_by_name[question.RPC].output_type)

    async def handler(request: web.Request) -> web.Response:
        params = Params(request, in_query)
        values = {name: params.value(name, field_type(question, name)) for name in in_query}
        try:
            asked = build(question, **values, **request.match_info)
        except UnknownValue as exc:
            raise InvalidArgument(exc.field, str(exc)) from None
        return _reply(to_message(await queries.answer(asked), response_cls))

    return handler


def build_app(runtime: Runtime) -> web.Application:
    async def status(request: web.Request) -> web.Response:
        Params(request, frozenset())
        return _reply(pipeline_status_message(await pipeline_status(runtime.redis, runtime.pool, runtime.keys)))

    async def metrics(request: web.Request) -> web.Response:
        try:
            stream = await stream_status(runtime.redis, runtime.keys)
        except Exception as exc:  # a scrape must still answer while Redis is down
            log.warning("metrics: cannot read the stream: %s", exc)
            stream = None
        body = runtime.metrics.render(stream, time.time())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "SERVING"})

    middlewares = [json_errors, *([require_keys(runtime.api_keys)] if runtime.api_keys else [])]
    app = web.Application(middlewares=middlewares)
    app.add_routes(
        [
            *(web.get(PREFIX + path, asking(runtime.queries, path, QUESTIONS[rpc])) for path, rpc in ROUTES.items()),
            web.get(f"{PREFIX}/pipeline/status", status),
            web.get("/metrics", metrics),
            web.get("/healthz", health),
        ]
    )
    return app


def ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """TLS for the gateway from the same files as gRPC's; with a client CA, client certificates required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(tls.client_ca_file)
    return context


@dataclass
class Gateway:
    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_gateway(runtime: Runtime, addr: str) -> Gateway:
    """Serve the gateway on `addr` ("host:port"; port 0 picks a free one)."""
    host, _, port = addr.rpartition(":")
    runner = web.AppRunner(build_app(runtime), access_log=None)
    await runner.setup()
    tls = runtime.settings.tls
    site = web.TCPSite(runner, host or "127.0.0.1", int(port), ssl_context=ssl_context(tls) if tls.enabled else None)
    await site.start()
    server: Any = site._server  # aiohttp exposes the bound sockets only here
    bound = server.sockets[0].getsockname()[1] if server and server.sockets else int(port)
    scheme = "https" if tls.enabled else "http"
    log.info("HTTP gateway listening on %s://%s:%d%s", scheme, host or "127.0.0.1", bound, PREFIX)
    return Gateway(runner=runner, port=bound)
