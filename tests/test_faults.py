"""Fault suite: exactly-once under SIGKILLed workers, a Postgres restart, and several replicas, on a single
Redis and on a Redis Cluster with a sharded stream.

Jepsen-style set check: writers record events with known ids while transfer workers are killed at
random moments and Postgres is restarted; afterwards every acknowledged event_id is stored exactly
once and the rollups equal a recompute from the raw events. Run alone with `make fault-suite`.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import psycopg
import pytest

from generation_analytics.client import AnalyticsClient, AnalyticsClientError
from generation_analytics.service.embedded import EmbeddedPostgres
from generation_analytics.service.migrate import migrate
from generation_analytics.service.settings import PostgresSettings, Settings
from generation_analytics.v1 import events_pb2
from tests.factories import make_event
from tests.fix_processes import CLI, free_port, service_env
from tests.fix_redis_cluster import LocalRedisCluster, on_cluster
from tests.fix_server import LiveServer
from tests.rollup_check import assert_queries_match_raw, assert_rollups_match_raw

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.fixture(params=["redis", "redis-cluster"])
def settings(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Settings]:
    """Each fault test twice: on a single Redis, and on a Redis Cluster of three masters (with replicas)
    with the stream in three shards, one per master."""
    if request.param == "redis":
        yield settings
        return
    cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
    yield on_cluster(settings, cluster)
    assert cluster.delete_namespace(settings.redis.namespace) > 0, "the test never used the cluster"


def random_events(rng: random.Random, n: int) -> list[events_pb2.GenerationEvent]:
    now = datetime.now(UTC)
    users = [str(uuid.UUID(int=i + 1, version=4)) for i in range(20)]
    events = []
    for _ in range(n):
        kind = rng.choice(["request", "completion", "completion", "cancellation"])
        fields: dict[str, object] = {
            "user_id": rng.choice(users),
            "timestamp": now - timedelta(minutes=rng.randint(1, 6 * 60)),
            "model_checkpoint": rng.choice(["sdxl-1.0", "flux-dev", ""]),
        }
        if kind == "completion":
            fields.update(success=rng.random() > 0.1, duration_ms=rng.randint(100, 20_000))
            if not fields["success"]:
                fields["error_type"] = rng.choice(["OutOfMemory", "Timeout"])
        events.append(make_event(kind, **fields))
    return events


class Writers:
    """Threads recording batches and keeping the ids the service acknowledged (some batches twice)."""

    def __init__(self, target: str, *, threads: int, batches: int, batch_size: int) -> None:
        self.acked: set[str] = set()
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._write, args=(target, seed, batches, batch_size)) for seed in range(threads)
        ]

    def _write(self, target: str, seed: int, batches: int, batch_size: int) -> None:
        rng = random.Random(seed)
        try:
            with AnalyticsClient(target, retries=10, backoff_s=0.1) as client:
                for _ in range(batches):
                    batch = random_events(rng, batch_size)
                    for _ in range(2 if rng.random() < 0.2 else 1):  # a client retrying an OK batch
                        reply = client.record_events(batch)
                        assert reply.accepted_count == len(batch), reply.rejections
                        with self._lock:
                            self.acked.update(e.event_id for e in batch)
                    time.sleep(rng.uniform(0.1, 0.25))  # keep writing while workers die
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(300)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)


def stored(dsn: str) -> tuple[set[str], int]:
    with psycopg.connect(dsn) as conn:
        ids = {r[0] for r in conn.execute("SELECT event_id::text FROM generation_events").fetchall()}
        total = conn.execute("SELECT count(*) FROM generation_events").fetchone()
    return ids, int(total[0]) if total else 0


def drained(target: str) -> bool:
    try:
        with AnalyticsClient(target, timeout_s=5, retries=0) as client:
            status = client.pipeline_status()
    except AnalyticsClientError:
        return False
    return status.pending_entries == 0 and status.undelivered_entries == 0 and status.dirty_hours == 0


def wait_until_drained(target: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if drained(target):
            return
        time.sleep(0.5)
    raise AssertionError("the pipeline did not drain in time")


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    migrate(server.dsn)
    yield server
    server.stop()


def test_every_acknowledged_event_is_stored_once_despite_kills_and_a_postgres_restart(
    settings: Settings, private_postgres: EmbeddedPostgres
) -> None:
    settings = replace(settings, postgres=PostgresSettings(dsn=private_postgres.dsn, pool_max_size=4))
    front = LiveServer(settings)  # records only: the workers below do all the pipeline work
    workers: list[subprocess.Popen[bytes]] = []
    kills = 0
    try:
        spawn = lambda: subprocess.Popen([CLI, "worker"], env=service_env(settings))  # noqa: E731
        workers = [spawn(), spawn()]
        writers = Writers(front.address, threads=3, batches=40, batch_size=200)
        writers.start()
        rng = random.Random(1)
        restarted_postgres = False
        started = time.monotonic()
        while writers.running:
            time.sleep(rng.uniform(0.3, 1.2))
            victim = rng.randrange(len(workers))
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait()
            workers[victim] = spawn()
            kills += 1
            if not restarted_postgres and time.monotonic() - started > 2:
                private_postgres.stop()
                time.sleep(1)
                private_postgres.start()
                restarted_postgres = True
        writers.join()
        assert writers.errors == []
        assert restarted_postgres and kills >= 3
        wait_until_drained(front.address, timeout_s=180)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)
        front.close()

    ids, total = stored(private_postgres.dsn)
    assert ids == writers.acked, f"lost {len(writers.acked - ids)}, unexpected {len(ids - writers.acked)}"
    assert total == len(ids), "an event was stored twice"
    assert_rollups_match_raw(private_postgres.dsn)


def test_three_replicas_store_each_event_once_and_agree(settings: Settings) -> None:
    ports = [free_port() for _ in range(3)]
    replicas = [
        subprocess.Popen(
            [CLI, "serve"], env=service_env(settings, GA_LISTEN_ADDR=f"127.0.0.1:{port}", GA_HTTP_ADDR="off")
        )
        for port in ports
    ]
    targets = [f"127.0.0.1:{port}" for port in ports]
    try:
        for target in targets:
            grpc.channel_ready_future(grpc.insecure_channel(target)).result(timeout=60)
        rng = random.Random(3)
        acked: set[str] = set()
        clients = [AnalyticsClient(target, retries=5) for target in targets]
        for i in range(30):
            batch = random_events(rng, 300)
            clients[i % 3].record_events(batch)
            if i % 4 == 0:
                clients[(i + 1) % 3].record_events(batch)  # the same events through another replica
            acked.update(e.event_id for e in batch)
        for client in clients:
            client.close()
        wait_until_drained(targets[0], timeout_s=120)
    finally:
        for replica in replicas:
            replica.terminate()
        for replica in replicas:
            assert replica.wait(30) == 0, "a replica did not shut down cleanly on SIGTERM"

    ids, total = stored(settings.postgres.dsn)
    assert ids == acked and total == len(acked)
    assert_rollups_match_raw(settings.postgres.dsn)


LATE_DAYS = [0, 0, 1, 3, 8, 30, 59, 89]


def test_two_workers_and_a_server_aggregating_scattered_late_events_agree_with_raw(settings: Settings) -> None:
    """Late events days and months apart, recorded while two `worker`s and a server aggregate at once
    (short batches, so they interleave): nothing fails, nothing stays dirty, every rollup equals raw."""
    port = free_port()
    env = service_env(settings, GA_LISTEN_ADDR=f"127.0.0.1:{port}", GA_HTTP_ADDR="off")
    processes = [subprocess.Popen([CLI, "serve"], env=env)]
    processes += [subprocess.Popen([CLI, "worker"], env=service_env(settings)) for _ in range(2)]
    target = f"127.0.0.1:{port}"
    rng = random.Random(8)
    now = datetime.now(UTC)
    users = [str(uuid.UUID(int=i + 1, version=4)) for i in range(12)]
    try:
        grpc.channel_ready_future(grpc.insecure_channel(target)).result(timeout=60)
        with AnalyticsClient(target, retries=5) as client:
            for _ in range(15):
                batch = [
                    make_event(
                        rng.choice(["request", "completion", "cancellation"]),
                        user_id=rng.choice(users),
                        timestamp=now
                        - timedelta(days=rng.choice([0, 0, 1, 3, 8, 30, 59, 89]), hours=rng.random() * 23),
                        model_checkpoint=rng.choice(["sdxl-1.0", "flux-dev"]),
                    )
                    for _ in range(40)
                ]
                assert client.record_events(batch).accepted_count == len(batch)
                time.sleep(0.3)
        wait_until_drained(target, timeout_s=120)
        with AnalyticsClient(target) as client:
            status = client.pipeline_status()
        assert (status.dirty_hours, status.failing_hours_count) == (0, 0)
        assert not status.last_aggregation.error
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
    assert_rollups_match_raw(settings.postgres.dsn)
    assert_queries_match_raw(settings.postgres.dsn)


def test_a_running_worker_stops_on_sigterm(settings: Settings) -> None:
    """A worker running its pipeline exits in order within seconds of SIGTERM (one once went on transferring
    and aggregating 30 s after SIGTERM in the test above; see run_worker)."""
    env = service_env(settings) | {"GA_LOG_LEVEL": "INFO"}  # its "running" line
    with subprocess.Popen([CLI, "worker"], env=env, stderr=subprocess.PIPE, text=True) as worker:
        try:
            assert worker.stderr is not None
            deadline = time.monotonic() + 60
            while "pipeline worker running" not in worker.stderr.readline():
                assert time.monotonic() < deadline and worker.poll() is None, "the worker did not start"
            time.sleep(1)  # its jobs under way
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(20) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
