"""Ingest: what recording costs, each figure beside its baseline measured in the same run.

* RecordEvent unary latency (p50/p99, sequential calls) against an empty grpc.aio echo server
  (bench.echo_server), against the same echo making one Redis round trip (PING) per call — the floor
  of any RecordEvent, whose OK means Redis holds the event — and against the same service with API
  keys required (GA_AUTH=on, an ingest key on every call) — interleaved rounds, so all see the same machine.
* RecordEvents throughput at batch sizes 100/500/1000 (4 client threads) against raw redis-py
  pipelined XADD of the same payloads (4 threads) — the ceiling of "events into Redis" from Python.
* EventRecorder.record() cost to the caller, p50/p99 over 200,000 calls.

The service runs as its own process with its pipeline off (GA_SCHEDULER_ENABLED=false): this
measures the front end; transfer is measured by bench.transfer_throughput. A second service with its
pipeline on (transfer and aggregation in the same process, as `serve` runs by default) is measured in
the same rounds. Targets (docs/design.md §6, issue 17): RecordEvents ≥ 50,000 events/s; RecordEvent
p50 within 1.25x of the echo; with keys ≤ 1.1x without (§8); record() p99 ≤ 20 µs.
bench.ingest_profile shows where RecordEvent's time goes.

    .venv/bin/python -m bench.ingest
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import psycopg
import redis

from bench.common import (
    REDIS_URL,
    Figure,
    percentile,
    print_figures,
    scratch_database,
    scratch_namespace,
    start_service,
    synthetic_event,
)
from generation_analytics.client import EventRecorder
from generation_analytics.service.api.keys import Scope, create_key
from generation_analytics.service.embedded import free_port
from generation_analytics.service.stream import EVENT_FIELD, StreamKeys
from generation_analytics.v1 import events_pb2, events_pb2_grpc


def events(n: int, seed: int) -> list[events_pb2.GenerationEvent]:
    rng = random.Random(seed)
    users = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(200)]
    return [synthetic_event(rng, datetime.now(UTC), users) for _ in range(n)]


def start_echo(*redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    """The empty echo; with a Redis URL, the echo plus one Redis round trip per call."""
    addr = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "bench.echo_server", addr, *redis_url]
    process = subprocess.Popen(command, cwd=Path(__file__).parents[1])
    grpc.channel_ready_future(grpc.insecure_channel(addr)).result(timeout=30)
    return process, addr


Target = tuple[str, tuple[tuple[str, str], ...]]  # address, metadata of every call


def unary_latency(targets: dict[str, Target], *, rounds: int, calls: int) -> dict[str, list[float]]:
    """Sequential RecordEvent latencies (µs) per target, in interleaved rounds."""
    sample = events(calls, 1)
    stubs = {name: (events_pb2_grpc.EventServiceStub(grpc.insecure_channel(addr)), metadata)
             for name, (addr, metadata) in targets.items()}  # fmt: skip
    timings: dict[str, list[float]] = {name: [] for name in targets}
    for stub, metadata in stubs.values():  # warm-up
        for event in sample[:200]:
            stub.RecordEvent(events_pb2.RecordEventRequest(event=event), metadata=metadata)
    for _ in range(rounds):
        for name, (stub, metadata) in stubs.items():
            for event in sample:
                request = events_pb2.RecordEventRequest(event=event)
                started = time.perf_counter()
                stub.RecordEvent(request, metadata=metadata)
                timings[name].append((time.perf_counter() - started) * 1e6)
    return timings


def threads_rate(threads: int, seconds: float, send: Callable[[int], Callable[[int], int]]) -> float:
    """Events per second that `threads` threads reach for `seconds`.

    `send(thread)` prepares a thread's sender (its own channel or connection); the sender takes a
    call number and returns how many events that call delivered.
    """
    sent = [0] * threads
    stop = time.monotonic() + seconds

    def work(index: int) -> None:
        sender = send(index)
        call = index
        while time.monotonic() < stop:
            sent[index] += sender(call)
            call += 1

    started = time.monotonic()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(sent) / (time.monotonic() - started)


def record_events_throughput(addr: str, batch_size: int, *, seconds: float, threads: int) -> float:
    requests = [events_pb2.RecordEventsRequest(events=events(batch_size, 100 + i)) for i in range(8)]

    def sender(_: int) -> Callable[[int], int]:
        channel = grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", 64 << 20)])
        stub = events_pb2_grpc.EventServiceStub(channel)
        return lambda call: stub.RecordEvents(requests[call % len(requests)]).accepted_count

    return threads_rate(threads, seconds, sender)


def raw_xadd_throughput(namespace: str, batch_size: int, *, seconds: float, threads: int) -> float:
    payloads = [[e.SerializeToString() for e in events(batch_size, 200 + i)] for i in range(8)]
    stream = StreamKeys(namespace).stream + ":raw"

    def sender(_: int) -> Callable[[int], int]:
        client = redis.Redis.from_url(REDIS_URL)

        def send(call: int) -> int:
            pipe = client.pipeline(transaction=False)
            for payload in payloads[call % len(payloads)]:
                pipe.xadd(stream, {EVENT_FIELD: payload})
            pipe.execute()
            return batch_size

        return send

    rate = threads_rate(threads, seconds, sender)
    redis.Redis.from_url(REDIS_URL).delete(stream)
    return rate


def recorder_cost(addr: str, calls: int) -> list[float]:
    user = str(uuid.uuid4())
    timings = []
    with EventRecorder(addr, max_buffer=calls + 1) as recorder:
        for i in range(calls):
            started = time.perf_counter_ns()
            recorder.record("completion", user_id=user, generation_id="g", success=True, duration_ms=i)
            timings.append((time.perf_counter_ns() - started) / 1000)
        recorder.flush(60)
    return timings


def measure(*, seconds: float = 5.0, threads: int = 4) -> list[Figure]:
    figures: list[Figure] = []
    with scratch_database() as dsn, scratch_namespace() as namespace, scratch_namespace() as piped_namespace:
        with psycopg.connect(dsn) as conn:
            _, token = create_key(conn, name="bench", scopes=frozenset({Scope.INGEST}))
        service, service_addr = start_service(dsn, namespace=namespace, GA_SCHEDULER_ENABLED="false")
        keyed, keyed_addr = start_service(dsn, namespace=namespace, GA_SCHEDULER_ENABLED="false", GA_AUTH="on")
        piped, piped_addr = start_service(dsn, namespace=piped_namespace)
        echo, echo_addr = start_echo()
        pinging, pinging_addr = start_echo(REDIS_URL)
        try:
            timings = unary_latency(
                {
                    "service": (service_addr, ()),
                    "keyed": (keyed_addr, (("authorization", f"Bearer {token}"),)),
                    "piped": (piped_addr, ()),
                    "echo": (echo_addr, ()),
                    "echo+redis": (pinging_addr, ()),
                },
                rounds=5,
                calls=400,
            )
            p50, p99 = percentile(timings["service"], 0.5), percentile(timings["service"], 0.99)
            k50, k99 = percentile(timings["keyed"], 0.5), percentile(timings["keyed"], 0.99)
            o50 = percentile(timings["piped"], 0.5)
            e50, e99 = percentile(timings["echo"], 0.5), percentile(timings["echo"], 0.99)
            figures.append(Figure("RecordEvent p50 / p99", f"{p50:.0f} / {p99:.0f} µs"))
            figures.append(Figure("empty grpc.aio echo p50 / p99", f"{e50:.0f} / {e99:.0f} µs"))
            figures.append(Figure("RecordEvent / echo, p50", f"{p50 / e50:.2f}x", "<= 1.25x", p50 / e50 <= 1.25))
            r50 = percentile(timings["echo+redis"], 0.5)
            figures.append(Figure("echo + one Redis PING, p50 (the floor)", f"{r50:.0f} µs ({r50 / e50:.2f}x echo)"))
            figures.append(Figure("RecordEvent / (echo + PING), p50", f"{p50 / r50:.2f}x"))
            figures.append(
                Figure("RecordEvent / echo, p50, pipeline on", f"{o50 / e50:.2f}x ({o50:.0f} µs)", "<= 1.25x",
                       o50 / e50 <= 1.25)
            )  # fmt: skip
            figures.append(Figure("RecordEvent with API key p50 / p99", f"{k50:.0f} / {k99:.0f} µs"))
            figures.append(Figure("with API key / without, p50", f"{k50 / p50:.2f}x", "<= 1.1x", k50 / p50 <= 1.1))
            for size in (100, 500, 1000):
                rate = record_events_throughput(service_addr, size, seconds=seconds, threads=threads)
                raw = raw_xadd_throughput(namespace, size, seconds=seconds, threads=threads)
                figures.append(
                    Figure(f"RecordEvents, batches of {size}", f"{rate:,.0f} events/s", ">= 50,000", rate >= 50_000)
                )
                figures.append(
                    Figure(f"raw pipelined XADD, batches of {size}", f"{raw:,.0f} events/s ({rate / raw:.2f}x)")
                )
            costs = recorder_cost(service_addr, 200_000)
            c50, c99 = percentile(costs, 0.5), percentile(costs, 0.99)
            figures.append(
                Figure("EventRecorder.record() p50 / p99", f"{c50:.1f} / {c99:.1f} µs", "p99 <= 20 µs", c99 <= 20)
            )
        finally:
            for process in (service, keyed, piped, echo, pinging):
                process.terminate()
                process.wait(30)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    print_figures(
        "Ingest (service with its pipeline off; client in this process)",
        measure(seconds=args.seconds, threads=args.threads),
    )


if __name__ == "__main__":
    main()
