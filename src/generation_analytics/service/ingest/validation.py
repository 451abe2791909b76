"""Checks a GenerationEvent against the contract and fills in what the server assigns.

Capture runs it on every incoming event; transfer runs it again (without the clock checks) on every
entry it decodes, so a bad entry that reached the stream some other way is dead-lettered, not stored.
Works on the protobuf message directly: the stream's wire format *is* the GenerationEvent encoding,
so converting to a dataclass and back on the hot path would only cost time.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from generation_analytics.service.settings import LimitSettings
from generation_analytics.v1 import events_pb2
from generation_analytics.vocabulary import EventType

KNOWN_EVENT_TYPES = frozenset(t.to_proto() for t in EventType)
_SHORT_STRINGS = ("generation_id", "error_type", "model_checkpoint", "generation_type")
_NON_NEGATIVE: tuple[Any, ...] = (
    "duration_ms",
    "queue_length",
    "queue_wait_time_ms",
    "generation_time_ms",
    "batch_size",
    "prompt_tokens",
)
_MAX_INT32 = 2**31 - 1

Problem = tuple[str, str]
"""(field, reason) of the first rule an event breaks."""


# Most ids arrive in canonical form already; recognising them by regex is ~10x cheaper than uuid.UUID.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_uuid(text: str) -> str | None:
    """The canonical lower-case form of a UUID string, or None when `text` is not a UUID."""
    if _CANONICAL_UUID.fullmatch(text):
        return text
    if len(text) > 45:  # also bounds the work uuid.UUID does on hostile input
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def _check_text(value: str, limit: int) -> str | None:
    if len(value) > limit:
        return f"longer than {limit} characters"
    if "\x00" in value:
        return "contains a NUL character"
    return None


def check_event(event: events_pb2.GenerationEvent, limits: LimitSettings) -> Problem | None:
    """The first contract rule `event` breaks, ignoring the clock; None when it keeps them all.

    Also rewrites `event_id` and `user_id` to their canonical UUID form, so the same id always
    deduplicates the same way.
    """
    if event.event_type not in KNOWN_EVENT_TYPES:
        return "event_type", "must be request, completion or cancellation"
    if event.event_id:
        event_id = canonical_uuid(event.event_id)
        if event_id is None:
            return "event_id", "must be a UUID (or empty to let the server assign one)"
        if event_id != event.event_id:
            event.event_id = event_id
    user_id = canonical_uuid(event.user_id) if event.user_id else None
    if user_id is None:
        return "user_id", "must be a UUID"
    if user_id != event.user_id:
        event.user_id = user_id
    if not event.generation_id:
        return "generation_id", "is required"
    limit = limits.max_string_chars
    for name in _SHORT_STRINGS:
        value = getattr(event, name)
        if value and (reason := _check_text(value, limit)):  # most are empty or short: no call for those
            return name, reason
    if event.error_message and (reason := _check_text(event.error_message, limits.max_error_message_chars)):
        return "error_message", reason
    for name in _NON_NEGATIVE:
        if event.HasField(name) and getattr(event, name) < 0:
            return name, "must not be negative"
    if event.HasField("duration_ms") and event.duration_ms > limits.max_duration_ms:
        return "duration_ms", f"must be at most {limits.max_duration_ms}"
    if event.HasField("batch_size") and event.batch_size > limits.max_batch_size:
        return "batch_size", f"must be at most {limits.max_batch_size}"
    if event.event_type == events_pb2.EVENT_TYPE_COMPLETION and not event.HasField("success"):
        return "success", "is required on completion events"
    if event.HasField("image_dimensions"):
        dims = event.image_dimensions
        if dims.width < 0 or dims.height < 0:
            return "image_dimensions", "must not be negative"
    if event.attributes:
        if len(event.attributes) > limits.max_attributes:
            return "attributes", f"more than {limits.max_attributes} entries"
        for key, value in event.attributes.items():
            reason = _check_text(key, limits.max_attribute_key_chars) or _check_text(
                value, limits.max_attribute_value_chars
            )
            if reason:
                return "attributes", f"entry {key[:64]!r}: {reason}"
    return None


def check_stored_event(event: events_pb2.GenerationEvent) -> Problem | None:
    """The cheap subset transfer re-checks before storing an entry (capture already ran `check_event`).

    Only what the rollups' meaning depends on and Postgres would not refuse by itself; anything else a
    foreign writer got wrong (negative counts, NUL characters, ...) is refused by the table's
    constraints and dead-lettered by transfer's bisection.
    """
    if event.event_type not in KNOWN_EVENT_TYPES:
        return "event_type", "must be request, completion or cancellation"
    if not _CANONICAL_UUID.fullmatch(event.event_id):
        return "event_id", "must be a canonical UUID"
    if not _CANONICAL_UUID.fullmatch(event.user_id):
        return "user_id", "must be a canonical UUID"
    if not event.generation_id:
        return "generation_id", "is required"
    if not event.HasField("timestamp"):
        return "timestamp", "is required"
    if event.event_type == events_pb2.EVENT_TYPE_COMPLETION and not event.HasField("success"):
        return "success", "is required on completion events"
    return None


def check_new_event(
    event: events_pb2.GenerationEvent,
    limits: LimitSettings,
    *,
    now_s: float,
    oldest_s: float,
) -> Problem | None:
    """`check_event` plus the rules that depend on the time it arrives; assigns event_id and timestamp.

    Args:
        event: the event as received; modified in place.
        limits: the limits to enforce.
        now_s: the receive time (Unix seconds); also the timestamp given to events without one.
        oldest_s: the oldest timestamp accepted (older events would fall outside raw-event retention).
    """
    problem = check_event(event, limits)
    if problem:
        return problem
    if event.HasField("timestamp"):
        ts = event.timestamp
        if not 0 <= ts.nanos < 1_000_000_000:
            return "timestamp", "nanos out of range"
        if ts.seconds > now_s + limits.max_future_skew_s:
            return "timestamp", f"more than {limits.max_future_skew_s} s in the future"
        if ts.seconds < oldest_s:
            return "timestamp", "older than the raw-event retention period"
    else:
        seconds = int(now_s)
        event.timestamp.seconds = seconds
        event.timestamp.nanos = int((now_s - seconds) * 1e9)
    if not event.event_id:
        event.event_id = str(uuid.uuid4())
    return None
