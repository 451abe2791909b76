"""HTTP JSON gateway: the seed document's REST paths, answered by the same query code as gRPC.

Each path asks one question of `generation_analytics.questions`, read from the query string by the
question's field types; responses are the RPCs' messages rendered by `generation_analytics.jsonify`:
proto field names, every field present, numbers as JSON numbers, RFC 3339 times. Bad parameters answer 400 with
`{"error": {"code": "INVALID_ARGUMENT", "field": ..., "message": ...}}`; other failures use the same
exception -> status mapping as gRPC (rpc.status_for), translated to HTTP once here.

Parameters are read one way: integers are ASCII digits only (no sign, `_`, spaces or other scripts'
digits, all of which Python's int() would take); booleans are true/false, 1/0, yes/no in any case; a
parameter given twice, or given empty (`days=`), is refused naming it: omit a parameter for its default.

Every error, the router's too, has the same body: 404 `NOT_FOUND`, 405 `METHOD_NOT_ALLOWED` with an
`Allow` header. Requests larger than a proxy would pass are refused in JSON too: a request target
over `MAX_URL_BYTES` answers 414 `URI_TOO_LONG`, a header over `MAX_HEADER_BYTES` (name and value)
431 `REQUEST_HEADER_FIELDS_TOO_LARGE`. aiohttp's own parser limits are set higher (`PARSER_LIMIT_BYTES`)
so those requests reach `limit_sizes`; beyond them aiohttp answers its own plain-text 400, which is
logged as one INFO line rather than an ERROR with a traceback (`QuietParserErrors`).

`…/events.csv` is ExportEvents as CSV (generation_analytics.export's columns), streamed in chunks as
the database cursor is read, so its memory stays one batch whatever the count. Bad filters answer 400
as above, and so does a failure before the first row; a failure later can no longer change the status,
so the connection is cut instead of ending the body (the file is visibly incomplete, never silently short).

`/healthz` is liveness (200 while the process serves); `/readyz` is readiness: 200 when Redis and
Postgres both answer, else 503, with which of them is down (`health.py`). Both are open without a key.

`/` (and `/dashboard`) is the web dashboard (`webpage.py`): static files that ask this gateway's JSON
paths for every figure, with the reader's key; the files are open, the data paths are not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from generation_analytics.export import csv_text, record_row
from generation_analytics.jsonify import to_jsonable
from generation_analytics.questions import QUESTIONS, Question, UnknownValue, build, field_type
from generation_analytics.service.alerts import history, rules
from generation_analytics.service.api.auth import KeyCache, bearer, http_requirement
from generation_analytics.service.api.convert import pipeline_status_message, to_message
from generation_analytics.service.api.health import ReadinessProbe
from generation_analytics.service.api.rpc import public_error
from generation_analytics.service.api.runtime import Runtime
from generation_analytics.service.api.webpage import Dashboard
from generation_analytics.service.errors import InvalidArgument
from generation_analytics.service.metrics import CONTENT_TYPE
from generation_analytics.service.queries.service import AnalyticsQueries
from generation_analytics.service.queries.status import pipeline_status, stream_status
from generation_analytics.service.settings import TlsSettings
from generation_analytics.v1 import alerts_pb2, analytics_pb2

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
# Only these: int() would also take "7_0", "+7", " 7" and "٧" (any script's digits).
_DIGITS = re.compile(r"[0-9]+")

# What most proxies and aiohttp itself allow by default; larger requests are refused in JSON.
MAX_URL_BYTES = 8190
MAX_HEADER_BYTES = 8190  # one header's name and value together, as aiohttp counts it
# aiohttp's parser limits (request line, one header), raised so that requests up to them reach
# `limit_sizes` and get a JSON answer; beyond them aiohttp answers a plain 400 itself. Bounded: the
# parser holds a request's headers in memory (up to 128 of them) before any handler runs.
PARSER_LIMIT_BYTES = 64 * 1024


class Params:
    """A request's query string, read with types. Refused, naming the parameter: unknown names (they
    are usually typos), a name given twice (which one was meant?), an empty value (omit it instead)."""

    def __init__(self, request: web.Request, allowed: frozenset[str]) -> None:
        self._query = request.query
        unknown = sorted(set(self._query) - allowed)
        if unknown:
            raise InvalidArgument(unknown[0], f"unknown parameter (known: {', '.join(sorted(allowed)) or 'none'})")
        for name in dict.fromkeys(self._query):  # in the order given, each once
            values = self._query.getall(name)
            if len(values) > 1:
                raise InvalidArgument(name, f"given {len(values)} times; give it at most once")
            if values[0] == "":
                raise InvalidArgument(name, "must not be empty (omit it for the default)")

    def value(self, name: str, kind: type) -> Any:
        """The parameter read as `kind` (int, bool, or text; words are parsed by `questions.build`)."""
        if kind is int:
            return self.integer(name)
        if kind is bool:
            return self.boolean(name)
        return self._query.get(name)

    def integer(self, name: str) -> int | None:
        raw = self._query.get(name)
        if raw is None:
            return None
        if not _DIGITS.fullmatch(raw):
            raise InvalidArgument(name, f"must be a whole number written with the digits 0-9 (got {raw!r:.40})")
        try:
            return int(raw)
        except ValueError:  # more digits than int() converts (4300): far out of any range anyway
            raise InvalidArgument(name, f"has too many digits ({len(raw)})") from None

    def boolean(self, name: str) -> bool | None:
        raw = self._query.get(name)
        if raw is None:
            return None
        word = raw.lower() if raw.isascii() else raw  # no Unicode case mapping onto the ASCII words
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise InvalidArgument(name, f"must be true or false (also 1/0, yes/no; got {raw!r:.40})")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as a JSON body with the HTTP status matching the gRPC code of the same error."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            message = f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
            return _error(exc.status, "METHOD_NOT_ALLOWED", message, headers={"Allow": exc.headers["Allow"]})
        # The router's other refusals (404 ...): the reason phrase as the code, "Not Found" -> NOT_FOUND.
        return _error(exc.status, re.sub(r"\W+", "_", exc.reason).upper(), exc.reason)
    except Exception as exc:  # mapped; unexpected ones logged under an error id the answer carries
        code, message = public_error(exc, f"{request.method} {request.path}")
        field = exc.field if isinstance(exc, InvalidArgument) else None
        return _error(HTTP_STATUS.get(code, 500), code.name, message, field)


def _error(
    status: int, code: str, message: str, field: str | None = None, *, headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="generation-analytics"'}
    return web.json_response({"error": body}, status=status, headers=headers)


@web.middleware
async def limit_sizes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """414 / 431 in JSON for a request target or a header over the limits (before auth: no key needed)."""
    # aiohttp decoded the target with surrogateescape: encoding back gives the bytes as sent.
    url_bytes = len(request.raw_path.encode("utf-8", "surrogateescape"))
    if url_bytes > MAX_URL_BYTES:
        return _error(414, "URI_TOO_LONG", f"request target of {url_bytes} bytes; the limit is {MAX_URL_BYTES}")
    for name, value in request.raw_headers:
        if len(name) + len(value) > MAX_HEADER_BYTES:
            shown = name.decode("ascii", "replace")[:64]
            message = (
                f"header {shown!r} is {len(name) + len(value)} bytes (name and value); the limit is {MAX_HEADER_BYTES}"
            )
            return _error(431, "REQUEST_HEADER_FIELDS_TOO_LARGE", message)
    return await handler(request)


class QuietParserErrors(logging.Filter):
    """aiohttp logs a request its parser refuses (beyond PARSER_LIMIT_BYTES, malformed) as an ERROR
    with a traceback; that is the client's mistake, not ours: one INFO line instead, without the
    offending bytes (they may be a credential)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno < logging.ERROR or not isinstance(exc, BadHttpMessage):
            return True
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        what = f"a line over {exc.args[1]} bytes" if isinstance(exc, LineTooLong) else type(exc).__name__
        log.info("HTTP: refused an unreadable request from %s (%s): answered %d", peer, what, exc.code)
        return False


# The logger the gateway's aiohttp server reports connection-level errors to (instead of "aiohttp.server").
server_log = logging.getLogger(f"{__name__}.server")
server_log.addFilter(QuietParserErrors())


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
    "/models/compare": "CompareCheckpoints",
    "/errors/groups": "ListErrorGroups",
    "/events.csv": "ExportEvents",
}
_ANALYTICS = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"]


def asking(queries: AnalyticsQueries, path: str, question: type[Question]) -> Handler:
    """The handler of a path: query string (and path) -> question -> answer -> JSON."""
    in_path = frozenset(re.findall(r"{(\w+)}", path))
    in_query = frozenset(f.name for f in dataclasses.fields(question)) - in_path
    method = _ANALYTICS.methods_by_name[question.RPC]
    response_cls = GetMessageClass(method.output_type)

    async def handler(request: web.Request) -> web.StreamResponse:
        params = Params(request, in_query)
        values = {name: params.value(name, field_type(question, name)) for name in in_query}
        try:
            asked = build(question, **values, **request.match_info)
        except UnknownValue as exc:
            raise InvalidArgument(exc.field, str(exc)) from None
        answer = await queries.answer(asked)
        if method.server_streaming:
            return await stream_csv(request, answer)
        return _reply(to_message(answer, response_cls))

    return handler


async def stream_csv(request: web.Request, batches: AsyncGenerator[Any, None]) -> web.StreamResponse:
    """Batches of database rows (`.events`) as one chunked CSV body, a batch in memory at a time."""
    async with contextlib.aclosing(batches):
        first = await anext(batches, None)  # a failure to start still answers a JSON status
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": 'attachment; filename="events.csv"',
            }
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            await response.write(csv_text([], header=True).encode())
            batch = first
            while batch is not None:
                await response.write(csv_text(record_row(row) for row in batch.events).encode())
                batch = await anext(batches, None)
        except ConnectionError:  # the client went away: stop reading (aclosing closes the cursor)
            log.info("%s: the client closed the connection during the export", request.path)
            return response
        except Exception as exc:
            public_error(exc, f"{request.method} {request.path}")  # logged, with an error id
            if request.transport is not None:
                request.transport.close()  # cut: an incomplete chunked body, not a short file that looks whole
            return response
        await response.write_eof()
    return response


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
        """Liveness: the process serves HTTP. Whether it can answer questions is /readyz."""
        return web.json_response({"status": "SERVING"})

    async def alert_rules(request: web.Request) -> web.Response:
        """ListAlertRules (secrets masked)."""
        Params(request, frozenset())
        async with runtime.pool.connection() as conn:
            found = await rules.list_rules(conn)
        return _reply(
            alerts_pb2.ListAlertRulesResponse(rules=[to_message(rules.masked(r), alerts_pb2.AlertRule) for r in found])
        )

    async def alert_events(request: web.Request) -> web.Response:
        """ListAlertEvents: ?rule_id=&page_size=&page_token=."""
        params = Params(request, frozenset({"rule_id", "page_size", "page_token"}))
        async with runtime.pool.connection() as conn:
            page = await history.list_events(
                conn, rule_id=params.integer("rule_id") or None, page_size=params.integer("page_size"),
                page_token=params.value("page_token", str) or "",
            )  # fmt: skip
        return _reply(to_message(page, alerts_pb2.ListAlertEventsResponse))

    readiness = ReadinessProbe(runtime)

    async def ready(request: web.Request) -> web.Response:
        found = await readiness.check()
        return web.json_response(found.as_json(), status=200 if found.ready else 503)

    middlewares = [json_errors, limit_sizes, *([require_keys(runtime.api_keys)] if runtime.api_keys else [])]
    app = web.Application(middlewares=middlewares)
    app.add_routes(
        [
            *Dashboard(auth_required=runtime.api_keys is not None).routes(),
            *(web.get(PREFIX + path, asking(runtime.queries, path, QUESTIONS[rpc])) for path, rpc in ROUTES.items()),
            web.get(f"{PREFIX}/pipeline/status", status),
            web.get(f"{PREFIX}/alerts/rules", alert_rules),
            web.get(f"{PREFIX}/alerts/events", alert_events),
            web.get("/metrics", metrics),
            web.get("/healthz", health),
            web.get("/readyz", ready),
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


async def start_gateway(runtime: Runtime, addr: str, *, shared_port: bool = False) -> Gateway:
    """Serve the gateway on `addr` ("host:port"; port 0 picks a free one); `shared_port`: SO_REUSEPORT."""
    host, _, port = addr.rpartition(":")
    runner = web.AppRunner(
        build_app(runtime),
        access_log=None,
        logger=server_log,
        max_line_size=PARSER_LIMIT_BYTES,
        max_field_size=PARSER_LIMIT_BYTES,
    )
    await runner.setup()
    tls = runtime.settings.tls
    site = web.TCPSite(
        runner,
        host or "127.0.0.1",
        int(port),
        ssl_context=ssl_context(tls) if tls.enabled else None,
        reuse_port=shared_port or None,
    )
    await site.start()
    server: Any = site._server  # aiohttp exposes the bound sockets only here
    bound = server.sockets[0].getsockname()[1] if server and server.sockets else int(port)
    scheme = "https" if tls.enabled else "http"
    log.info("HTTP gateway listening on %s://%s:%d%s", scheme, host or "127.0.0.1", bound, PREFIX)
    log.info("dashboard: %s://%s:%d/", scheme, host or "127.0.0.1", bound)
    return Gateway(runner=runner, port=bound)
