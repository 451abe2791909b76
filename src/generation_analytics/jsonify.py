"""Plain-JSON views of response messages: numbers as numbers, every field present, RFC 3339 times.

Unlike protobuf's JSON mapping (int64 as strings, zero values omitted, enum names like
INTERVAL_HOURLY), this renders what the seed document's API examples read: `data['total_requests']`
is an int, `interval` is "hourly", and a StoredEvent is one flat row like the seed's raw-row queries.
Shared by the CLI's --json and the HTTP gateway (so it lives beside both, not in either).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from generation_analytics.vocabulary import label

_TIMESTAMP = "google.protobuf.Timestamp"
_STORED_EVENT = "generation_analytics.v1.StoredEvent"
_GENERATION_EVENT = "generation_analytics.v1.GenerationEvent"


def to_jsonable(message: Message) -> dict[str, Any]:
    descriptor: Any = message.DESCRIPTOR
    if descriptor.full_name == _STORED_EVENT:
        return _stored_event(message)
    if descriptor.full_name == _GENERATION_EVENT:
        return _generation_event(message)
    return {field.name: _field(message, field) for field in descriptor.fields}


def _field(message: Message, field: Any) -> Any:
    value = getattr(message, field.name)
    if field.is_repeated:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            return dict(value)
        return [_single(field, item) for item in value]
    if field.message_type is not None and not message.HasField(field.name):
        return None
    if field.has_presence and field.message_type is None and not message.HasField(field.name):
        return None
    return _single(field, value)


def _single(field: Any, value: Any) -> Any:
    if field.message_type is not None:
        if field.message_type.full_name == _TIMESTAMP:
            return value.ToJsonString()
        return to_jsonable(value)
    if field.enum_type is not None:
        return label(field.enum_type, value)
    return value


def _generation_event(event: Any) -> dict[str, Any]:
    row = {f.name: _field(event, f) for f in event.DESCRIPTOR.fields if f.name != "image_dimensions"}
    dims = event.image_dimensions if event.HasField("image_dimensions") else None
    row["image_width"] = dims.width if dims else None
    row["image_height"] = dims.height if dims else None
    for name in ("error_type", "error_message", "model_checkpoint", "generation_type"):
        row[name] = row[name] or None  # the table's NULLs, as in the seed's raw-row queries
    return row


def _stored_event(stored: Any) -> dict[str, Any]:
    return {
        "id": stored.id,
        **_generation_event(stored.event),
        "created_at": stored.created_at.ToJsonString() if stored.HasField("created_at") else None,
    }
