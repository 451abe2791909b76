"""A Redis Cluster of three masters, each with a replica, started from the machine's `redis-server` and
`redis-cli --cluster create` on loopback ports (nothing on disk but the nodes' config files), stopped
afterwards. One cluster serves the whole session (`redis_cluster`; tests keep apart by namespace); a test
that kills a master gets a cluster of its own (`private_redis_cluster`).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from generation_analytics.service.settings import Settings
from generation_analytics.service.stream import StreamKeys
from tests.fix_redis_replica import RedisPair, redis_server_binary

NODE_TIMEOUT_MS = 1000  # how long a master may be silent before its replica takes over


def cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher) is free too; a node's port must be <= 55535."""
    while True:
        port = random.randint(20_000, 45_000)
        with contextlib.ExitStack() as stack:
            try:
                for candidate in (port, port + 10_000):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return port


@dataclass
class LocalRedisCluster:
    """Three masters and three replicas; `url` names the first master (any node would do)."""

    nodes: RedisPair
    cli: str
    ports: list[int] = field(default_factory=lambda: [cluster_port() for _ in range(6)])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "1",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_healthy(masters=3, replicas=3)

    def start_node(self, port: int) -> None:
        """Start (or restart: its config file remembers the cluster) the node on `port`."""
        self.nodes.start(
            f"node{port}", port, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--repl-diskless-sync-delay", "0",
        )  # fmt: skip

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster.from_url(self.url, socket_timeout=5)

    def wait_healthy(self, *, masters: int, replicas: int, timeout_s: float = 30) -> None:
        """Until every live node says the cluster is ok and sees `masters` masters with `replicas` replicas
        linked, and every replica has synced with its master."""
        deadline = time.monotonic() + timeout_s
        while not self._healthy(masters, replicas):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not settle:\n{self._describe()}")
            time.sleep(0.1)

    def _healthy(self, masters: int, replicas: int) -> bool:
        for port in self.live_ports():
            with contextlib.suppress(redis.RedisError), redis.Redis(port=port, socket_timeout=1) as node:
                if node.cluster("info")["cluster_state"] != "ok":
                    return False
                roles = [n for n in node.cluster("nodes").values() if "fail" not in n["flags"]]
                if sum("master" in n["flags"] for n in roles) != masters:
                    return False
                if sum("slave" in n["flags"] and n["connected"] for n in roles) != replicas:
                    return False
                replication = node.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False  # not synced yet: a replica that never synced cannot take over
                continue
            return False
        return True

    def _describe(self) -> str:
        with contextlib.suppress(redis.RedisError), redis.Redis(port=self.live_ports()[0], socket_timeout=1) as node:
            return str(node.execute_command("CLUSTER", "NODES"))
        return "(no node answers)"

    def live_ports(self) -> list[int]:
        return [p for p in self.ports if f"node{p}" in self.nodes.processes]

    def master_port_of(self, key: str) -> int:
        """The port of the master that owns `key`'s slot now."""
        slot = key_slot(key.encode())
        with redis.Redis(port=self.live_ports()[0], socket_timeout=2) as node:
            for start, end, master, *_ in node.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise LookupError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        process = self.nodes.processes.pop(f"node{port}")
        process.kill()
        process.wait(10)

    def delete_namespace(self, namespace: str) -> int:
        """Delete the namespace's keys from every master; returns how many there were."""
        deleted = 0
        for port in self.live_ports():
            with redis.Redis(port=port, socket_timeout=5) as node:
                if "master" not in node.execute_command("ROLE")[0].decode():
                    continue
                keys = list(node.scan_iter(match=StreamKeys(namespace).pattern, count=1000))
                for key in keys:  # one key per call: the keys of a namespace span slots
                    deleted += node.delete(key)
        return deleted


@contextlib.contextmanager
def running_redis_cluster() -> Iterator[LocalRedisCluster]:
    binary, cli = redis_server_binary(), shutil.which("redis-cli")
    if binary is None or cli is None:
        pytest.skip("a Redis Cluster needs the machine's redis-server and redis-cli binaries")
    with tempfile.TemporaryDirectory(prefix="ga-redis-cluster-") as folder:
        cluster = LocalRedisCluster(nodes=RedisPair(binary=binary, folder=Path(folder)), cli=cli)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.nodes.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    with running_redis_cluster() as cluster:
        yield cluster


@pytest.fixture
def private_redis_cluster() -> Iterator[LocalRedisCluster]:
    with running_redis_cluster() as cluster:
        yield cluster


def on_cluster(settings: Settings, cluster: LocalRedisCluster, *, shards: int = 3, **redis: object) -> Settings:
    """`settings` recording on `cluster` with `shards` stream shards (spread over its three masters)."""
    redis_settings = replace(settings.redis, url=cluster.url, cluster=True, stream_shards=shards, **redis)  # type: ignore[arg-type]
    return replace(settings, redis=redis_settings)


@pytest.fixture
def cluster_settings(settings: Settings, redis_cluster: LocalRedisCluster) -> Iterator[Settings]:
    """The test's settings on the session's cluster, three shards, in a namespace of its own."""
    yield on_cluster(settings, redis_cluster)
    assert redis_cluster.delete_namespace(settings.redis.namespace) > 0, "the test never used the cluster"
