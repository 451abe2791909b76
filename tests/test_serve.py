"""`generation-analytics serve` as users run it: embedded servers, data kept across restarts, SIGTERM,
taken ports refused before anything starts, and a start-up log that names its servers but no secret."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from generation_analytics.client import AnalyticsClient, build_event
from generation_analytics.service.api.server import describe_postgres, describe_redis, listen_error
from generation_analytics.service.settings import Settings
from tests.fix_processes import CLI, free_port, launch, service_env

pytestmark = pytest.mark.slow


def start(data_dir: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    """`serve` on embedded servers: no GA_* setting but the data folder and the port."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GA_")}
    environment.update(
        GA_DATA_DIR=str(data_dir), GA_LISTEN_ADDR=f"127.0.0.1:{port}", GA_HTTP_ADDR="off", GA_LOG_LEVEL="WARNING", **env
    )
    return launch("serve", environment, address=f"127.0.0.1:{port}")


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(60)


def test_embedded_service_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    user = str(uuid.uuid4())
    process = start(tmp_path, port, GA_TRANSFER_INTERVAL_S="0.5", GA_AGGREGATION_INTERVAL_S="0.5")
    try:
        with AnalyticsClient(target) as client:
            client.record_event(build_event("request", user_id=user, generation_id="g1", timestamp=datetime.now(UTC)))
            deadline = time.monotonic() + 60
            while client.user(user).total_requests != 1:
                assert time.monotonic() < deadline, "the embedded pipeline did not deliver the event"
                time.sleep(0.2)
    finally:
        assert stop(process) == 0, "SIGTERM must shut the service down cleanly"
    assert (tmp_path / "postgres" / "PG_VERSION").exists() and (tmp_path / "redis").is_dir()

    # Second life: the pipeline is off, so this event can only survive in Redis's append-only file.
    process = start(tmp_path, port, GA_SCHEDULER_ENABLED="false")
    try:
        with AnalyticsClient(target) as client:
            assert client.user(user).total_requests == 1
            client.record_event(build_event("request", user_id=user, generation_id="g2", timestamp=datetime.now(UTC)))
            assert client.pipeline_status().stream_length == 1
    finally:
        assert stop(process) == 0

    process = start(tmp_path, port, GA_SCHEDULER_ENABLED="false")
    try:
        with AnalyticsClient(target) as client:
            assert client.pipeline_status().stream_length == 1
            client.run_transfer()
            client.run_aggregation()
            assert client.user(user).total_requests == 2
    finally:
        assert stop(process) == 0


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on (held for the test)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield holder.getsockname()[1]


@pytest.mark.parametrize("which", ["GA_LISTEN_ADDR", "GA_HTTP_ADDR"])
def test_a_taken_port_is_one_line_and_nothing_starts(settings: Settings, taken_port: int, which: str) -> None:
    listeners = {"GA_LISTEN_ADDR": f"127.0.0.1:{free_port()}", "GA_HTTP_ADDR": f"127.0.0.1:{free_port()}"}
    listeners[which] = f"127.0.0.1:{taken_port}"
    env = service_env(settings, GA_LOG_LEVEL="INFO", **listeners)
    done = subprocess.run([CLI, "serve"], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr == f"error: cannot listen on 127.0.0.1:{taken_port}: address already in use\n"
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_listen_check_passes_free_and_zero_ports_and_names_the_reason(taken_port: int) -> None:
    assert listen_error(f"127.0.0.1:{free_port()}") is None
    assert listen_error("127.0.0.1:0") is None
    assert listen_error(f"127.0.0.1:{taken_port}") == "address already in use"
    assert listen_error("127.0.0.1:http-alt") == "not a host:port address"
    assert listen_error("192.0.2.1:50051") == "cannot assign requested address"  # TEST-NET: not this host


def test_startup_log_names_the_servers_never_a_password(settings: Settings, tmp_path: Path) -> None:
    secret = "pw-never-in-logs"
    dsn = make_conninfo(settings.postgres.dsn, password=secret)
    params = conninfo_to_dict(dsn)
    url_dsn = f"postgresql://{params['user']}:{secret}@{params['host']}:{params['port']}/{params['dbname']}"
    port = free_port()
    for postgres_dsn in (dsn, url_dsn):
        log_file = tmp_path / "serve.log"
        env = service_env(settings, GA_POSTGRES_DSN=postgres_dsn, GA_LOG_LEVEL="INFO", GA_SCHEDULER_ENABLED="false",
                          GA_LISTEN_ADDR=f"127.0.0.1:{port}", GA_HTTP_ADDR="off")  # fmt: skip
        with log_file.open("w") as stderr:
            process = subprocess.Popen([CLI, "serve"], env=env, stderr=stderr)
            try:
                wait_serving(process, f"127.0.0.1:{port}")
            finally:
                assert stop(process) == 0
        logged = log_file.read_text()
        expected = f"postgres: {params['host']}:{params['port']}/{params['dbname']} (external)"
        assert expected in logged, logged
        assert f"redis: {describe_redis(settings.redis.url)} (external)" in logged
        assert secret not in logged


def wait_serving(process: subprocess.Popen[bytes], address: str) -> None:
    """Until the gRPC health check answers (fix_processes.launch, with this test's own stderr)."""
    with grpc.insecure_channel(address) as channel:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, "serve exited before serving"
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return
            except grpc.RpcError:
                time.sleep(0.2)
    raise AssertionError(f"serve did not answer on {address}")


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://ga:s3cret@db.internal:6432/analytics?sslmode=require", "db.internal:6432/analytics"),
        ("host=db.internal port=6432 dbname=analytics user=ga password=s3cret", "db.internal:6432/analytics"),
        ("host=db.internal dbname=analytics password='s3cret with space'", "db.internal:5432/analytics"),
        ("postgresql://ga:s3cret@/analytics?host=/run/postgresql", "/run/postgresql:5432/analytics"),
        ("not a dsn s3cret", "(unparseable DSN)"),
    ],
)
def test_postgres_is_described_without_credentials(dsn: str, shown: str) -> None:
    assert describe_postgres(dsn) == shown  # exactly: no user, no password


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@cache.internal:6380/2", "cache.internal:6380/2"),
        ("redis://user:s3cret@cache.internal", "cache.internal:6379/0"),
        ("rediss://:s3cret@cache.internal:6380/0", "rediss://cache.internal:6380/0"),
        ("unix://:s3cret@/run/redis.sock?db=3", "unix:/run/redis.sock db 3"),
    ],
)
def test_redis_is_described_without_credentials(url: str, shown: str) -> None:
    assert describe_redis(url) == shown
