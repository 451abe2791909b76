"""The stream's entry format: one field `e` holding a GenerationEvent in protobuf wire format.

Capture writes it (`capture.APPEND_EVENTS_LUA`); transfer reads it back into a row of generation_events
(`decode_entry`). Protobuf keeps it compact, lossless and evolvable: a newer producer's extra fields
are skipped, a missing optional field stays NULL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import DecodeError

from generation_analytics.service.keys import EVENT_FIELD
from generation_analytics.service.validation import check_stored_event
from generation_analytics.v1 import events_pb2

EVENT_TYPE_NAMES = {
    events_pb2.EVENT_TYPE_REQUEST: "request",
    events_pb2.EVENT_TYPE_COMPLETION: "completion",
    events_pb2.EVENT_TYPE_CANCELLATION: "cancellation",
}

# Columns of generation_events that transfer writes, in row order (id and created_at are Postgres's).
ROW_COLUMNS = (
    "event_id", "event_type", "generation_id", "user_id", "timestamp", "duration_ms", "success",
    "error_type", "error_message", "model_checkpoint", "generation_type", "queue_length",
    "queue_wait_time_ms", "generation_time_ms", "batch_size", "image_width", "image_height",
    "prompt_tokens", "attributes",
)  # fmt: skip

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Row = tuple[Any, ...]


def _optional(event: events_pb2.GenerationEvent, name: Any) -> Any:
    return getattr(event, name) if event.HasField(name) else None


def event_to_row(event: events_pb2.GenerationEvent) -> Row:
    """A generation_events row (ROW_COLUMNS order) for a validated event; "" strings become NULL."""
    ts = event.timestamp
    dims = event.image_dimensions if event.HasField("image_dimensions") else None
    return (
        event.event_id,
        EVENT_TYPE_NAMES[event.event_type],
        event.generation_id,
        event.user_id,
        _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000),
        _optional(event, "duration_ms"),
        _optional(event, "success"),
        event.error_type or None,
        event.error_message or None,
        event.model_checkpoint or None,
        event.generation_type or None,
        _optional(event, "queue_length"),
        _optional(event, "queue_wait_time_ms"),
        _optional(event, "generation_time_ms"),
        _optional(event, "batch_size"),
        dims.width if dims else None,
        dims.height if dims else None,
        _optional(event, "prompt_tokens"),
        json.dumps(dict(event.attributes), ensure_ascii=False) if event.attributes else "{}",
    )


class PoisonEntry(ValueError):
    """A stream entry that can never become a row (the message says why)."""


def decode_entry(fields: dict[bytes, bytes]) -> Row:
    """The row for a stream entry.

    Raises:
        PoisonEntry: the entry is not a GenerationEvent, or breaks the contract.
    """
    payload = fields.get(EVENT_FIELD)
    if payload is None:
        raise PoisonEntry(f"entry has no {EVENT_FIELD.decode()!r} field (fields: {sorted(fields)[:5]})")
    try:
        event = events_pb2.GenerationEvent.FromString(payload)
    except DecodeError as exc:
        raise PoisonEntry(f"not a GenerationEvent: {exc}") from None
    problem = check_stored_event(event)
    if problem:
        raise PoisonEntry(f"invalid {problem[0]}: {problem[1]}")
    try:
        return event_to_row(event)
    except (OverflowError, ValueError) as exc:
        raise PoisonEntry(f"invalid timestamp: {exc}") from None
