"""Building GenerationEvent messages from plain Python values (what producers have at hand)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from generation_analytics.v1 import events_pb2
from generation_analytics.vocabulary import EventType

_SCALARS = (
    "generation_id", "user_id", "duration_ms", "success", "error_type", "error_message", "model_checkpoint",
    "generation_type", "queue_length", "queue_wait_time_ms", "generation_time_ms", "batch_size", "prompt_tokens",
)  # fmt: skip


def build_event(
    event_type: str,
    *,
    timestamp: datetime | float | None = None,
    event_id: str | None = None,
    image_dimensions: tuple[int, int] | None = None,
    attributes: Mapping[str, str] | None = None,
    **fields: Any,
) -> events_pb2.GenerationEvent:
    """A GenerationEvent with an event_id (so retries deduplicate) and a timestamp (default: now).

    Args:
        event_type: "request", "completion" or "cancellation".
        timestamp: when it happened: an aware datetime or Unix seconds (default: now).
        event_id: a UUID string; a new one when omitted.
        image_dimensions: (width, height) in pixels.
        attributes: free-form string tags.
        **fields: the other GenerationEvent fields by name (user_id, generation_id, duration_ms, ...).

    Raises:
        ValueError: an unknown event_type or field name.
    """
    try:
        kind = EventType(event_type)
    except ValueError:
        raise ValueError(f"event_type must be one of {', '.join(EventType)}, not {event_type!r}") from None
    unknown = set(fields) - set(_SCALARS)
    if unknown:
        raise ValueError(f"unknown GenerationEvent fields: {', '.join(sorted(unknown))}")
    event = events_pb2.GenerationEvent(
        event_id=event_id or str(uuid.uuid4()),
        event_type=cast("events_pb2.EventType.ValueType", kind.to_proto()),
        **{k: v for k, v in fields.items() if v is not None},
    )
    if timestamp is None:
        timestamp = datetime.now(UTC)
    if isinstance(timestamp, datetime):
        event.timestamp.FromDatetime(timestamp.astimezone(UTC))
    else:
        seconds = int(timestamp)
        event.timestamp.seconds = seconds
        event.timestamp.nanos = round((timestamp - seconds) * 1e9) % 1_000_000_000
    if image_dimensions is not None:
        event.image_dimensions.width, event.image_dimensions.height = image_dimensions
    if attributes:
        event.attributes.update(attributes)
    return event
