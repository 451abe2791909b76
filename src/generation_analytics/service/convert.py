"""Conversions between the service's plain values and protobuf messages (the edge of the server)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from generation_analytics.service.errors import InvalidArgument


def timestamp(moment: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp for `moment` (None stays None, so the field stays unset)."""
    if moment is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(moment.astimezone(UTC))
    return ts


def from_timestamp(ts: Timestamp, field: str) -> datetime:
    """The UTC datetime of a request Timestamp, refusing values datetime cannot hold."""
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(field, f"not a valid timestamp ({exc})") from None
