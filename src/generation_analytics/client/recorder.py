"""`EventRecorder`: record events from a generation service without ever waiting on the network.

`record()` only appends a tuple to an in-memory buffer (a couple of microseconds); a background
thread turns buffered events into batches (by size, or every `flush_interval_s`), gives each event
its event_id once (`build_event`, before the first attempt), and sends it with `RecordEvents`,
retrying UNAVAILABLE / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED with capped exponential backoff and
jitter — the same batch with the same ids, so an attempt whose reply was lost (the events were
recorded all the same) is stored once.
The buffer is bounded: when it is full, new events are dropped and counted (`stats.dropped`), never
blocking the caller. `close()` (also run at interpreter exit) flushes what is left.
"""

from __future__ import annotations

import atexit
import collections
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from generation_analytics.client.client import DEFAULT_TARGET, AnalyticsClient
from generation_analytics.client.errors import AnalyticsClientError
from generation_analytics.client.events import _SCALARS, build_event
from generation_analytics.v1 import events_pb2
from generation_analytics.vocabulary import EventType

log = logging.getLogger(__name__)

# Backoff jitter from the OS, never the global `random` state: the sender thread runs whenever it likes
# and must not perturb the application's seeded sequences (or tests that check them, like hypothesis).
# Unlike a module-level Random(), it also differs between processes forked from one parent.
_JITTER = random.SystemRandom()

_FIELDS = frozenset(_SCALARS) | {"image_dimensions", "attributes", "event_id"}
_EVENT_TYPES = frozenset(EventType)


@dataclass(frozen=True)
class RecorderStats:
    """Counters since the recorder started."""

    recorded: int
    delivered: int
    rejected: int
    dropped: int
    buffered: int
    failed_attempts: int


class EventRecorder:
    """Buffers events and delivers them in the background; thread-safe; a context manager.

    Args:
        target: the service's gRPC address.
        batch_size: events per RecordEvents call (a full batch is sent at once).
        flush_interval_s: longest an event waits in the buffer before a partial batch is sent.
        max_buffer: events held at most (pending delivery); beyond it new events are dropped.
        max_backoff_s: longest wait between two attempts while the service is unavailable.
        client: an `AnalyticsClient` to send with (default: one for `target`).
        api_key: an `ingest` key when the service requires keys (default: GA_API_KEY); TLS options
            (`tls`, `ca_file`, client certificate) as for `AnalyticsClient`, via `client_options`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        max_buffer: int = 100_000,
        max_backoff_s: float = 5.0,
        client: AnalyticsClient | None = None,
        api_key: str | None = None,
        **client_options: Any,
    ) -> None:
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self.max_backoff_s = max_backoff_s
        self._client = client or AnalyticsClient(target, retries=0, timeout_s=5.0, api_key=api_key, **client_options)
        self._own_client = client is None
        self._buffer: collections.deque[tuple[str, float, dict[str, Any]]] = collections.deque()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._closing = False
        self._close_deadline = float("inf")
        self._counts_lock = threading.Lock()
        self._recorded = self._delivered = self._rejected = self._dropped = self._failed_attempts = 0
        self._thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # deliver what is left when the interpreter exits

    def record(self, event_type: str, **fields: Any) -> None:
        """Queue one event; never blocks, never raises for a full buffer or an unreachable service.

        Args:
            event_type: "request", "completion" or "cancellation".
            **fields: GenerationEvent fields (user_id, generation_id, duration_ms, success, ...);
                `timestamp` defaults to now.

        Raises:
            ValueError: an unknown event type or field name (a programming error, caught early).
            RuntimeError: the recorder is closed.
        """
        if event_type not in _EVENT_TYPES or not fields.keys() <= _FIELDS | {"timestamp"}:
            build_event(event_type, **fields)  # raises the precise ValueError
        if self._closing:
            raise RuntimeError("EventRecorder is closed")
        if len(self._buffer) >= self.max_buffer:
            with self._counts_lock:
                self._dropped += 1
            return
        self._buffer.append((event_type, fields.pop("timestamp", None) or time.time(), fields))
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    @property
    def stats(self) -> RecorderStats:
        with self._counts_lock:
            return RecorderStats(
                recorded=self._recorded + len(self._buffer) + self._in_flight,
                delivered=self._delivered,
                rejected=self._rejected,
                dropped=self._dropped,
                buffered=len(self._buffer) + self._in_flight,
                failed_attempts=self._failed_attempts,
            )

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything recorded so far is delivered (or refused); False on timeout."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 1e9)
        self._wake.set()
        with self._idle:
            while self._buffer or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.05))
                self._wake.set()
        return True

    def close(self, timeout_s: float = 10.0) -> RecorderStats:
        """Deliver what is buffered (for up to `timeout_s`), then stop. Safe to call twice."""
        if not self._closing:
            self._close_deadline = time.monotonic() + timeout_s
            self._closing = True
            self._wake.set()
            self._thread.join(timeout_s + 1)
            atexit.unregister(self.close)
            if self._own_client:
                self._client.close()
            lost = len(self._buffer) + self._in_flight
            if lost:
                log.warning("EventRecorder closed with %d undelivered events", lost)
        return self.stats

    def __enter__(self) -> EventRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            while self._buffer:
                batch = self._take_batch()
                if batch:
                    self._deliver(batch)
                if self._closing and time.monotonic() > self._close_deadline:
                    return
            with self._idle:
                self._idle.notify_all()
            if self._closing:
                return

    def _take_batch(self) -> list[events_pb2.GenerationEvent]:
        batch: list[events_pb2.GenerationEvent] = []
        while self._buffer and len(batch) < self.batch_size:
            event_type, when, fields = self._buffer.popleft()
            self._in_flight += 1
            try:
                batch.append(build_event(event_type, timestamp=when, **fields))
            except (ValueError, TypeError) as exc:
                self._in_flight -= 1
                with self._counts_lock:
                    self._recorded += 1
                    self._rejected += 1
                log.warning("EventRecorder: dropping an event that cannot be encoded: %s", exc)
        return batch

    def _deliver(self, batch: list[events_pb2.GenerationEvent]) -> None:
        """Send one batch until it is accepted, refused as a whole, or the close deadline passes."""
        attempt = 0
        while True:
            try:
                reply = self._client.record_events(batch)
                self._settle(len(batch), delivered=reply.accepted_count, rejected=len(reply.rejections))
                if reply.rejections:
                    first = reply.rejections[0]
                    log.warning(
                        "EventRecorder: %d events refused (e.g. %s: %s)",
                        len(reply.rejections),
                        first.field,
                        first.reason,
                    )
                return
            except AnalyticsClientError as exc:
                with self._counts_lock:
                    self._failed_attempts += 1
                if not exc.retryable:
                    log.error("EventRecorder: batch of %d refused: %s", len(batch), exc)
                    self._settle(len(batch), delivered=0, rejected=len(batch))
                    return
                if self._closing and time.monotonic() > self._close_deadline:
                    return
                delay = min(self.max_backoff_s, 0.05 * 2**attempt) * (0.5 + _JITTER.random())
                if self._closing:
                    delay = min(delay, max(0.0, self._close_deadline - time.monotonic()))
                log.debug("EventRecorder: service unavailable (%s); retrying in %.2f s", exc.code.name, delay)
                time.sleep(delay)
                attempt += 1

    def _settle(self, size: int, *, delivered: int, rejected: int) -> None:
        with self._counts_lock:
            self._in_flight -= size
            self._recorded += size
            self._delivered += delivered
            self._rejected += rejected
