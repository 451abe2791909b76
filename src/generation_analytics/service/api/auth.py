"""Who may call what: the scope each RPC and HTTP path needs, checked in one gRPC interceptor and one
aiohttp middleware against an in-memory copy of the keys.

No call waits on Postgres: keys are loaded into `KeyCache` and reloaded every `GA_AUTH_CACHE_S` seconds
(so a revoked key stops working within that delay). A key id the copy does not know yet (created since
the last reload) is looked up once, then remembered either way until the next reload, so forged ids
cannot turn into a query per call.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from typing import Any

import grpc
from psycopg_pool import AsyncConnectionPool

from generation_analytics.service.api.keys import (
    MARK_USED,
    SELECT_LIVE_KEY,
    SELECT_LIVE_KEYS,
    ApiKey,
    Scope,
    key_from_row,
    parse,
)
from generation_analytics.service.errors import PermissionDenied, Unauthenticated
from generation_analytics.service.settings import AuthSettings
from generation_analytics.v1 import alerts_pb2, analytics_pb2, events_pb2

log = logging.getLogger(__name__)


class Access(Enum):
    """What a call needs besides a scope."""

    OPEN = "open"  # no key at all (health checks)
    ANY_KEY = "any valid key"  # a key, whatever its scopes (reflection: what the API looks like)


Requirement = Scope | Access


def _methods(file: Any, service: str) -> list[str]:
    descriptor = file.DESCRIPTOR.services_by_name[service]
    return [f"/{descriptor.full_name}/{m.name}" for m in descriptor.methods]


# Every RPC of the contract and what it needs (tests/test_auth.py fails on an RPC missing here).
RPC_RULES: dict[str, Requirement] = {
    **dict.fromkeys(_methods(events_pb2, "EventService"), Scope.INGEST),
    **dict.fromkeys(_methods(analytics_pb2, "AnalyticsService"), Scope.READ),
    "/generation_analytics.v1.PipelineService/GetPipelineStatus": Scope.READ,
    "/generation_analytics.v1.PipelineService/RunTransfer": Scope.ADMIN,
    "/generation_analytics.v1.PipelineService/RunAggregation": Scope.ADMIN,
    # Alerts: rules are managed (and test-evaluated) with `admin`; what stands and what happened is `read`.
    **dict.fromkeys(_methods(alerts_pb2, "AlertService"), Scope.ADMIN),
    "/generation_analytics.v1.AlertService/ListAlertRules": Scope.READ,
    "/generation_analytics.v1.AlertService/ListAlertEvents": Scope.READ,
}
# Services outside the contract, by service name.
SERVICE_RULES: dict[str, Requirement] = {
    "grpc.health.v1.Health": Access.OPEN,
    "grpc.reflection.v1alpha.ServerReflection": Access.ANY_KEY,
    "grpc.reflection.v1.ServerReflection": Access.ANY_KEY,
}
# HTTP: health is open, and so are the dashboard's files (webpage.py: no figures in them, the page asks the
# API for every one with the reader's key); everything else (answers, status, /metrics) needs `read`.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/dashboard"})
OPEN_PREFIXES = ("/dashboard/",)


def rpc_requirement(method: str) -> Requirement:
    """What `/package.Service/Method` needs; a method no rule names needs `admin` (fail closed)."""
    rule = RPC_RULES.get(method)
    if rule is not None:
        return rule
    return SERVICE_RULES.get(method.split("/")[1] if method.count("/") == 2 else "", Scope.ADMIN)


def http_requirement(path: str) -> Requirement:
    return Access.OPEN if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) else Scope.READ


def is_loopback(addr: str) -> bool:
    """Whether a listen address ("host:port") is reachable only from this machine."""
    host = addr.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or "" / 0.0.0.0 / ::, all of which may face a network


def auth_enabled(settings: AuthSettings, listeners: Sequence[str]) -> bool:
    """Whether keys are required: `on`, `off`, or (`auto`) whenever a listener is not on loopback."""
    if settings.mode == "on":
        return True
    if settings.mode == "off":
        return False
    return not all(is_loopback(addr) for addr in listeners)


def bearer(value: str | None) -> str | None:
    """The token of an `authorization: Bearer <token>` value (scheme case-insensitive)."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class KeyCache:
    """The live keys, reloaded every `refresh_s`; `check` answers from memory."""

    def __init__(self, pool: AsyncConnectionPool, *, refresh_s: float) -> None:
        self._pool = pool
        self._refresh_s = refresh_s
        self._keys: dict[str, ApiKey] = {}
        self._unknown: dict[str, float] = {}  # ids looked up and not found, with when
        self._used: set[str] = set()
        self._loaded = False

    async def reload(self) -> None:
        """Load every live key; record which keys were used since the last reload (last_used_at)."""
        used, self._used = self._used, set()
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(SELECT_LIVE_KEYS)).fetchall()
            if used:
                await conn.execute(MARK_USED, (sorted(used),))
        self._keys = {row[0]: key_from_row(row) for row in rows}
        self._unknown.clear()
        self._loaded = True

    async def run(self) -> None:
        """Reload forever (a task of the server); a failed reload keeps the previous copy."""
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.reload()
            except Exception as exc:  # Postgres may be down: keep serving from the last copy
                log.warning("could not reload API keys (keeping the previous copy): %s", exc)

    async def check(self, token: str | None, need: Requirement) -> ApiKey | None:
        """The key a call presents, if it may make a call that needs `need`.

        Raises:
            Unauthenticated: no key, or not a valid live key.
            PermissionDenied: a valid key without the scope.
        """
        if need is Access.OPEN:
            return None
        parsed = parse(token) if token else None
        if parsed is None:
            raise Unauthenticated("missing or malformed API key (send `authorization: Bearer ga_…`)")
        key_id, secret = parsed
        key = self._keys.get(key_id) or await self._lookup(key_id)
        if key is None or not key.matches(secret):
            raise Unauthenticated("API key not valid (unknown, wrong or revoked)")
        self._used.add(key.id)
        if isinstance(need, Scope) and need not in key.scopes:
            raise PermissionDenied(f"this key lacks the '{need}' scope")
        return key

    async def _lookup(self, key_id: str) -> ApiKey | None:
        """One query for an id created since the last reload; misses are remembered until the next."""
        seen = self._unknown.get(key_id)
        if seen is not None and time.monotonic() - seen < self._refresh_s:
            return None
        async with self._pool.connection() as conn:
            row = await (await conn.execute(SELECT_LIVE_KEY, (key_id,))).fetchone()
        if row is None:
            self._unknown[key_id] = time.monotonic()
            return None
        key = key_from_row(row)
        self._keys[key_id] = key
        return key


Refusal = tuple[grpc.StatusCode, str]
STATUS = {Unauthenticated: grpc.StatusCode.UNAUTHENTICATED, PermissionDenied: grpc.StatusCode.PERMISSION_DENIED}


def _refusing(handler: Any, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind as `handler` that answers every call with `code`."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    kinds: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)  # fmt: skip


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Checks every gRPC call's key against the rule of its method."""

    def __init__(self, keys: KeyCache) -> None:
        self._keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        need = rpc_requirement(handler_call_details.method)
        if need is not Access.OPEN:
            metadata = dict(handler_call_details.invocation_metadata or ())
            try:
                token = metadata.get("authorization")
                await self._keys.check(bearer(token if isinstance(token, str) else None), need)
            except (Unauthenticated, PermissionDenied) as exc:
                handler = await continuation(handler_call_details)
                return handler if handler is None else _refusing(handler, STATUS[type(exc)], str(exc))
        return await continuation(handler_call_details)


__all__ = [
    "Access",
    "AuthInterceptor",
    "KeyCache",
    "Requirement",
    "auth_enabled",
    "bearer",
    "http_requirement",
    "is_loopback",
    "rpc_requirement",
]
