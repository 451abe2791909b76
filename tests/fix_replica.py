"""A Postgres primary with a streaming replica of its own, started from the machine's PostgreSQL binaries
(`initdb`, `pg_basebackup -R`, `pg_ctl`) on loopback ports, and removed afterwards.

Skipped, saying why, where those binaries (or, as root, a `postgres` user to run them) are missing.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from generation_analytics.service.embedded import free_port

NEEDED = ("initdb", "pg_ctl", "pg_basebackup")


def postgres_bindir() -> Path | None:
    """Where initdb, pg_ctl and pg_basebackup are: GA_TEST_PG_BINDIR, pg_config's, Debian's, pgserver's."""
    candidates = [os.environ.get("GA_TEST_PG_BINDIR", "")]
    if pg_config := shutil.which("pg_config"):
        candidates.append(
            subprocess.run([pg_config, "--bindir"], check=False, capture_output=True, text=True).stdout.strip()
        )
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    # pgserver's own build, found without importing it (its import has side effects).
    if (spec := importlib.util.find_spec("pgserver")) and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "pginstall" / "bin"))
    for candidate in filter(None, candidates):
        if all((Path(candidate) / name).is_file() for name in NEEDED):
            return Path(candidate)
    return None


@dataclass
class LocalPostgres:
    """One Postgres cluster in `data`, listening on 127.0.0.1:`port`, run by `user` (None: this user)."""

    bindir: Path
    data: Path
    port: int
    user: str | None

    def run(self, program: str, *args: str) -> None:
        subprocess.run([str(self.bindir / program), *args], check=True, capture_output=True, user=self.user)

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", f"{self.data}.log", "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"


@dataclass
class ReplicatedPostgres:
    primary: LocalPostgres
    replica: LocalPostgres

    def wait_for_replay(self, timeout_s: float = 30.0) -> None:
        """Until the replica has replayed everything the primary has written so far."""
        with psycopg.connect(self.primary.dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        assert row is not None
        deadline = time.monotonic() + timeout_s
        with psycopg.connect(self.replica.dsn(), autocommit=True) as conn:
            while True:
                done = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)).fetchone()
                if done and done[0]:
                    return
                assert time.monotonic() < deadline, "the replica did not catch up"
                time.sleep(0.05)


def _runner() -> str | None:
    """Postgres refuses to run as root: as root, the `postgres` user runs it (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and no `postgres` user to run initdb/pg_ctl as")
    return "postgres"


def _configure_primary(data: Path, port: int, sockets: Path) -> None:
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(
            f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sockets}'\n"
            "wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\nhot_standby_feedback = on\n"
            "fsync = off\nshared_buffers = 32MB\nmax_connections = 40\n"
        )


@pytest.fixture
def replicated_postgres() -> Iterator[ReplicatedPostgres]:
    """A primary (wal_level=replica) and a hot standby streaming from it, both trust-auth on loopback."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(f"no PostgreSQL binaries ({', '.join(NEEDED)}) found for a streaming replica")
    user = _runner()
    # Under /tmp itself, not pytest's root-only tmp_path: the `postgres` user must reach it.
    root = Path(tempfile.mkdtemp(prefix="ga-replica-"))
    if user is not None:
        account = pwd.getpwnam(user)
        os.chown(root, account.pw_uid, account.pw_gid)
    primary = LocalPostgres(bindir, root / "primary", free_port(), user)
    replica = LocalPostgres(bindir, root / "replica", free_port(), user)
    started: list[LocalPostgres] = []
    try:
        primary.run("initdb", "-D", str(primary.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        _configure_primary(primary.data, primary.port, root)
        primary.start()
        started.append(primary)
        primary.run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
            "-D", str(replica.data), "-R", "-X", "stream", "-c", "fast", "--no-sync",
        )  # fmt: skip
        with open(replica.data / "postgresql.auto.conf", "a") as conf:
            conf.write(f"port = {replica.port}\n")
        replica.start()
        started.append(replica)
        yield ReplicatedPostgres(primary, replica)
    finally:
        for cluster in reversed(started):
            with contextlib.suppress(subprocess.CalledProcessError):  # already stopped by the test
                cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
