"""The service's exceptions; `rpc.py` maps each one to a gRPC status code, and `gateway.py` to HTTP."""

from __future__ import annotations

import secrets


class AnalyticsError(Exception):
    """Root of every error the service raises on purpose."""


class InvalidArgument(AnalyticsError):
    """A request field holds a value the contract does not allow."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(AnalyticsError):
    """The thing asked for does not exist."""


class Unavailable(AnalyticsError):
    """A dependency (Redis or Postgres) cannot be reached; the caller may retry."""


class ResourceExhausted(AnalyticsError):
    """The service refuses more work for now (e.g. the stream backlog is full); retry later."""


class Unauthenticated(AnalyticsError):
    """No API key, or one that is not valid (unknown, malformed or revoked)."""


class PermissionDenied(AnalyticsError):
    """A valid API key without the scope the call needs (the message names it)."""


def incident(exc: BaseException) -> str:
    """What status reports say of an unexpected failure: its kind and an error id the log has with the
    details (never database or Redis text, which can hold host names, SQL, or key values). Log the id."""
    return f"{type(exc).__name__} (error id {secrets.token_hex(4)}; details in the service log)"
