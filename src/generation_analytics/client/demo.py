"""Synthetic but realistic traffic for `generation-analytics demo`: a history, then live events.

Users have skewed activity, checkpoints differ in speed, load follows a daily cycle, ~5% of
completions fail over a few error types and ~3% of generations are cancelled. Everything goes
through the public API (RecordEvents for the history, EventRecorder for the live part).
"""

from __future__ import annotations

import math
import random
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from generation_analytics.client.client import AnalyticsClient
from generation_analytics.client.events import build_event
from generation_analytics.client.recorder import EventRecorder
from generation_analytics.v1 import events_pb2

CHECKPOINTS = {"sdxl-1.0": 4200, "sdxl-turbo": 900, "flux-dev": 6800, "flux-schnell": 1500, "sd-1.5": 2100}
ERRORS = {
    "OutOfMemory": "CUDA out of memory: tried to allocate 2.00 GiB",
    "Timeout": "generation exceeded 120 s",
    "NSFWFilter": "output blocked by the safety filter",
    "InvalidPrompt": "prompt longer than 77 tokens after truncation",
}


class ProgressBar:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr) -> None:
        self.total, self.label, self.stream = max(total, 1), label, stream
        self.done = 0
        self._started = time.monotonic()

    def advance(self, n: int) -> None:
        self.done = min(self.total, self.done + n)
        filled = int(30 * self.done / self.total)
        rate = self.done / max(time.monotonic() - self._started, 1e-6)
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done:,}/{self.total:,} ({rate:,.0f}/s)"
        )
        self.stream.flush()

    def finish(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


class Traffic:
    """Generations of a fixed population of users."""

    def __init__(self, *, users: int = 200, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.users = [str(uuid.UUID(int=self.rng.getrandbits(128), version=4)) for _ in range(users)]
        self.weights = [1 / (rank + 1) ** 1.1 for rank in range(users)]  # a few heavy users

    def load_at(self, moment: datetime) -> float:
        """Relative load, 0.4 .. 1.6, peaking mid-afternoon UTC."""
        return 1 + 0.6 * math.sin(2 * math.pi * (moment.hour + moment.minute / 60 - 9) / 24)

    def generation(self, when: datetime) -> list[tuple[str, dict[str, Any]]]:
        """A request and its completion or cancellation, as (event_type, fields) pairs."""
        rng = self.rng
        common = {
            "user_id": rng.choices(self.users, self.weights)[0],
            "generation_id": f"gen-{rng.getrandbits(48):012x}",
            "model_checkpoint": rng.choice(list(CHECKPOINTS)),
        }
        queue = int(rng.random() * 20 * self.load_at(when))
        events: list[tuple[str, dict[str, Any]]] = [
            ("request", {**common, "timestamp": when, "queue_length": queue, "generation_type": "txt2img"})
        ]
        duration = int(rng.lognormvariate(math.log(CHECKPOINTS[common["model_checkpoint"]]), 0.4))
        finished = min(when + timedelta(milliseconds=duration), datetime.now(UTC))
        outcome = rng.random()
        if outcome < 0.03:
            events.append(("cancellation", {**common, "timestamp": finished}))
            return events
        error = rng.choice(list(ERRORS)) if outcome < 0.08 else None
        events.append(
            (
                "completion",
                {
                    **common,
                    "timestamp": finished,
                    "success": error is None,
                    "duration_ms": duration,
                    "batch_size": rng.choice((1, 1, 2, 4)),
                    "error_type": error,
                    "error_message": ERRORS[error] if error else None,
                    "image_dimensions": (1024, 1024),
                },
            )
        )
        return events

    def history(self, *, days: int, generations: int) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        """`generations` generations spread over the past `days`, following the daily cycle."""
        end = datetime.now(UTC) - timedelta(minutes=1)
        produced = 0
        while produced < generations:
            when = end - timedelta(seconds=self.rng.random() * days * 86_400)
            if self.rng.random() * 1.6 < self.load_at(when):
                produced += 1
                yield self.generation(when)


def run_demo(
    client: AnalyticsClient, *, days: int, generations: int, live_seconds: float, rate_per_s: float, users: int
) -> None:
    traffic = Traffic(users=users)
    bar = ProgressBar(generations, f"history ({days} days)")
    batch: list[events_pb2.GenerationEvent] = []
    for events in traffic.history(days=days, generations=generations):
        batch.extend(build_event(kind, **fields) for kind, fields in events)
        if len(batch) >= 2_000:
            client.record_events(batch)
            bar.advance(len(batch) // 2)
            batch = []
    if batch:
        client.record_events(batch)
        bar.advance(len(batch) // 2)
    bar.finish()
    client.run_transfer()
    client.run_aggregation()
    if live_seconds <= 0:
        return
    live = ProgressBar(int(live_seconds * rate_per_s), f"live traffic ({rate_per_s:g} generations/s)")
    with EventRecorder(client.target) as recorder:
        started = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - started) < live_seconds:
            due = int(elapsed * rate_per_s)
            for _ in range(due - sent):
                for kind, fields in traffic.generation(datetime.now(UTC)):
                    recorder.record(kind, **fields)
            live.advance(due - sent)
            sent = due
            time.sleep(0.05)
        live.finish()
