"""Builders for valid events, so each test states only what it varies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from generation_analytics.v1 import events_pb2
from generation_analytics.vocabulary import EventType


def timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when.astimezone(UTC))
    return ts


def make_event(kind: str = "completion", **fields: Any) -> events_pb2.GenerationEvent:
    """A valid event of `kind` with fresh ids; `fields` override or add fields (datetimes allowed)."""
    values: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": EventType(kind).to_proto(),
        "generation_id": f"gen-{uuid.uuid4().hex[:8]}",
        "user_id": str(uuid.uuid4()),
    }
    if kind == "completion":
        values.update(success=True, duration_ms=1500)
    values.update(fields)
    if isinstance(values.get("timestamp"), datetime):
        values["timestamp"] = timestamp(values["timestamp"])
    return events_pb2.GenerationEvent(**values)


def full_event() -> events_pb2.GenerationEvent:
    """An event with every field set, to check nothing is lost on the way.

    Its timestamp is a couple of hours ago (well within retention, never in the future, whenever the
    tests run), with minutes, seconds and microseconds all set so a round trip checks full precision.
    """
    when = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=45, second=7, microsecond=123456)
    return make_event(
        "completion",
        timestamp=when,
        duration_ms=12_345,
        success=False,
        error_type="OutOfMemory",
        error_message="CUDA out of memory — tried to allocate 2 GiB",
        model_checkpoint="sdxl-1.0",
        generation_type="txt2img",
        queue_length=7,
        queue_wait_time_ms=450,
        generation_time_ms=11_800,
        batch_size=4,
        image_dimensions=events_pb2.ImageDimensions(width=1024, height=768),
        prompt_tokens=77,
        attributes={"region": "eu-west", "priority": "high", "emoji": "🎨"},
    )
