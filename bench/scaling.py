"""End-to-end sustained throughput: events recorded, transferred and aggregated with freshness <= 10 s, for
one `serve` process with its pipeline inside (what `make run` starts) against two serving processes
(GA_SERVE_PROCESSES=2, scheduler off) plus two `worker` processes, on one stream shard and on two
(GA_REDIS_STREAM_SHARDS=2); with `--cluster`, also two shards on a local 3-master Redis Cluster — issue 16's
"1 vs 2".

Per layout, on a fresh database and namespace, at default pipeline settings:

1. **Saturation** (`--seconds`): writer threads record as fast as the service accepts (RecordEvents of 500
   events; payloads spliced from pre-serialized events, so writing costs the client little; one channel per
   thread, so connections spread over serving processes). Every 0.5 s GetOverview(days=1) is sampled.
   *ingest* = events acknowledged per second; *pipeline* = events counted by GetOverview per second, from
   the slope after a 5 s warm-up (what transfer + aggregation keep up with while ingest runs flat out).
2. The backlog drains; then **sustained** (`--seconds`): the writers offer `--load` (default 80%) of the
   pipeline rate measured in step 1, paced; freshness = time from an acknowledged batch to GetOverview
   counting that many events (as bench.freshness), p95 after 10 s of warm-up. Target: p95 <= 10 s.

Writers, sampler and service share this 2-core machine: the figures are what one host gives, not what
separate hosts would.

    .venv/bin/python -m bench.scaling [--seconds 30] [--threads 6] [--load 0.8] [--cluster]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc

from bench.common import (
    Figure,
    percentile,
    print_figures,
    scratch_database,
    scratch_namespace,
    service_environment,
    synthetic_event,
)
from generation_analytics.v1 import analytics_pb2, analytics_pb2_grpc, events_pb2
from tests.fix_processes import launch
from tests.fix_redis_cluster import running_redis_cluster

BATCH = 500
TARGET_FRESHNESS_S = 10.0
RECORD_EVENTS = "/generation_analytics.v1.EventService/RecordEvents"


class Payloads:
    """RecordEvents requests as bytes: pre-serialized events (without their id) behind fresh event ids.

    `event_id` is field 1 (tag 0x0a, 36 bytes); protobuf accepts fields in any order, so each event is
    `0a 24 <id>` + its other fields, and a request is those events as repeated field 1.
    """

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        users = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(5_000)]
        when = datetime.now(UTC) - timedelta(minutes=1)
        self._bodies: list[bytes] = []
        for _ in range(BATCH):
            event = synthetic_event(rng, when, users)
            event.ClearField("event_id")
            self._bodies.append(event.SerializeToString())
        self._prefix = f"{rng.getrandbits(32):08x}"
        self._next = 0
        self._lock = threading.Lock()

    def request(self) -> bytes:
        with self._lock:
            first, self._next = self._next, self._next + BATCH
        parts = []
        for i, body in enumerate(self._bodies):
            n = first + i
            event_id = f"{self._prefix}-0000-4000-8000-{n:012x}"
            event = b"\x0a\x24" + event_id.encode() + body
            parts.append(b"\x0a" + _varint(len(event)) + event)
        return b"".join(parts)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


@dataclass
class Run:
    """What one phase saw: (time acknowledged, events) per batch and (time, events counted) per sample."""

    acked: list[tuple[float, int]]
    seen: list[tuple[float, int]]
    refused: int


def counted(stub: analytics_pb2_grpc.AnalyticsServiceStub) -> int:
    o = stub.GetOverview(analytics_pb2.GetOverviewRequest(days=1), timeout=30)
    return o.total_requests + o.successful_generations + o.failed_generations + o.cancelled_generations


def run_phase(
    address: str, payloads: Payloads, *, seconds: float, threads: int, rate: float | None, counted_before: int = 0
) -> Run:
    """Writers for `seconds` (paced to `rate` events/s, or flat out) while the overview is sampled; when
    paced, sampling goes on after the writers stop until every acknowledged event is counted (so the last
    batches' freshness is measured too)."""
    acked: list[tuple[float, int]] = []
    seen: list[tuple[float, int]] = []
    refused = [0]
    lock = threading.Lock()
    stop = threading.Event()
    stop_sampling = threading.Event()
    interval = None if rate is None else BATCH * threads / rate

    def write() -> None:
        # A channel of its own (no shared subchannel): its own connection, so the kernel can send it to
        # any of the serving processes.
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            call: Callable[..., events_pb2.RecordEventsResponse] = channel.unary_unary(
                RECORD_EVENTS, request_serializer=None, response_deserializer=events_pb2.RecordEventsResponse.FromString
            )
            next_at = time.monotonic()
            while not stop.is_set():
                try:
                    reply = call(payloads.request(), timeout=30)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:  # backlog cap: back off and retry
                        raise
                    with lock:
                        refused[0] += 1
                    time.sleep(0.05)
                    continue
                with lock:
                    acked.append((time.monotonic(), reply.accepted_count))
                if interval is not None:
                    next_at += interval
                    time.sleep(max(0.0, next_at - time.monotonic()))

    def sample() -> None:
        with grpc.insecure_channel(address) as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            while not stop_sampling.is_set():
                seen.append((time.monotonic(), counted(stub) - counted_before))
                time.sleep(0.5)

    writers = [threading.Thread(target=write) for _ in range(threads)]
    sampler = threading.Thread(target=sample)
    for t in [*writers, sampler]:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in writers:
        t.join(60)
    total = sum(n for _, n in acked)
    deadline = time.monotonic() + 300
    while rate is not None and time.monotonic() < deadline and (not seen or seen[-1][1] < total):
        time.sleep(0.5)
    stop_sampling.set()
    sampler.join(60)
    acked.sort()
    return Run(acked, seen, refused[0])


def wait_drained(address: str, total: int, timeout_s: float = 300) -> float:
    started = time.monotonic()
    with grpc.insecure_channel(address) as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        while counted(stub) < total:
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"{total:,} events not all counted after {timeout_s:.0f} s")
            time.sleep(0.5)
    return time.monotonic() - started


def slope(points: list[tuple[float, int]], *, skip_s: float) -> float:
    start = points[0][0] + skip_s
    kept = [(t, n) for t, n in points if t >= start]
    (t0, n0), (t1, n1) = kept[0], kept[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def freshness(run: Run, *, warmup_s: float = 10.0) -> list[float]:
    """Per acknowledged batch: seconds until the overview counted as many events as were acked by then."""
    totals, total = [], 0
    for at, n in run.acked:
        total += n
        totals.append((at, total))
    polls = [n for _, n in run.seen]
    started = totals[0][0]
    delays = []
    for at, total in totals:
        if at - started < warmup_s:
            continue
        index = bisect.bisect_left(polls, total)
        if index < len(run.seen):
            delays.append(max(0.0, run.seen[index][0] - at))
    return delays


@dataclass
class Layout:
    name: str
    serve_env: dict[str, str]
    workers: int
    on_cluster: bool = False  # on a local Redis Cluster of three masters (--cluster)


TWO_PROCESSES = {"GA_SERVE_PROCESSES": "2", "GA_SCHEDULER_ENABLED": "false"}
LAYOUTS = [
    Layout("1 process, 1 shard (serve with its pipeline)", {}, 0),
    Layout("2 serving processes + 2 workers, 1 shard", TWO_PROCESSES, 2),
    Layout("2 serving processes + 2 workers, 2 shards", {**TWO_PROCESSES, "GA_REDIS_STREAM_SHARDS": "2"}, 2),
]
CLUSTER_LAYOUT = Layout(
    "2 serving processes + 2 workers, 2 shards on a 3-master Redis Cluster",
    {**TWO_PROCESSES, "GA_REDIS_STREAM_SHARDS": "2", "GA_REDIS_CLUSTER": "true"},
    2,
    on_cluster=True,
)


@contextlib.contextmanager
def redis_for(layout: Layout) -> Iterator[dict[str, str]]:
    """Where the layout's Redis is: the benchmark's own, or a Redis Cluster started on loopback ports."""
    if not layout.on_cluster:
        yield {}
        return
    with running_redis_cluster() as cluster:
        yield {"GA_REDIS_URL": cluster.url}


def measure_layout(layout: Layout, *, seconds: float, threads: int, load: float) -> list[Figure]:
    with scratch_database() as dsn, scratch_namespace() as namespace, redis_for(layout) as redis_env:
        env, address = service_environment(dsn, namespace=namespace, **layout.serve_env, **redis_env)
        processes: list[subprocess.Popen[bytes]] = [launch("serve", env, address=address, timeout_s=60)]
        worker_env = {**env, "GA_SERVE_PROCESSES": "1"}
        processes += [launch("worker", worker_env) for _ in range(layout.workers)]
        try:
            payloads = Payloads(seed=11)
            flat_out = run_phase(address, payloads, seconds=seconds, threads=threads, rate=None)
            acked = sum(n for _, n in flat_out.acked)
            ingest = acked / seconds
            pipeline = slope(flat_out.seen, skip_s=5.0)
            drain_s = wait_drained(address, acked)
            offered = load * pipeline
            print(f"{layout.name}: ingest {ingest:,.0f}/s, pipeline {pipeline:,.0f}/s, drained in {drain_s:.1f} s")
            steady = run_phase(address, payloads, seconds=seconds, threads=threads, rate=offered, counted_before=acked)
            delays = freshness(steady)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(60)
    p95 = percentile(delays, 0.95)
    steady_rate = sum(n for _, n in steady.acked) / seconds
    return [
        Figure(
            f"{layout.name}: ingest, flat out",
            f"{ingest:,.0f} events/s ({flat_out.refused} calls refused at the backlog cap)",
        ),
        Figure(
            f"{layout.name}: pipeline, flat out",
            f"{pipeline:,.0f} events/s counted (backlog drained in {drain_s:.1f} s)",
        ),
        Figure(
            f"{layout.name}: sustained",
            f"{steady_rate:,.0f} events/s offered ({load:.0%}): "
            f"freshness p50 {percentile(delays, 0.5):.2f} s, p95 {p95:.2f} s",
            f"p95 <= {TARGET_FRESHNESS_S:.0f} s",
            p95 <= TARGET_FRESHNESS_S,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=6, help="writer threads (one channel each)")
    parser.add_argument("--load", type=float, default=0.8, help="sustained load as a share of the pipeline rate")
    parser.add_argument("--cluster", action="store_true", help="also the 2-shard layout on a local Redis Cluster")
    args = parser.parse_args()
    figures: list[Figure] = []
    for layout in [*LAYOUTS, *([CLUSTER_LAYOUT] if args.cluster else [])]:
        figures += measure_layout(layout, seconds=args.seconds, threads=args.threads, load=args.load)
    print_figures("End-to-end throughput, 1 vs 2 processes and shards", figures)


if __name__ == "__main__":
    main()
