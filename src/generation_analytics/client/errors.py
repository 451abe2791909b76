"""The client's one exception type, mapped once from grpc.RpcError."""

from __future__ import annotations

from typing import Any

import grpc

FIELD_METADATA_KEY = "ga-field"  # set by the server on INVALID_ARGUMENT (see service/rpc.py)

RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)


class AnalyticsClientError(Exception):
    """A call to the service failed.

    Attributes:
        code: the gRPC status code.
        field: the request field the server refused (INVALID_ARGUMENT only), else "".
        details: the server's message.
    """

    def __init__(self, code: grpc.StatusCode, details: str, field: str = "") -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.field = field

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later (the service or a dependency was unavailable)."""
        return self.code in RETRYABLE

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> AnalyticsClientError:
        call: Any = error  # grpc's errors are also grpc.Call objects
        code = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
        details = (call.details() if hasattr(call, "details") else None) or str(error)
        metadata = dict(call.trailing_metadata() or ()) if hasattr(call, "trailing_metadata") else {}
        return cls(code, details, str(metadata.get(FIELD_METADATA_KEY, "")))
