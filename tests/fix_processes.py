"""Service processes for tests and benchmarks: `generation-analytics serve|worker` as users start them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from generation_analytics.service.embedded import free_port
from generation_analytics.service.settings import Settings

CLI = str(Path(sys.executable).parent / "generation-analytics")

__all__ = ["CLI", "free_port", "launch", "service_env"]


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a service process on the test's database and namespace, with a brisk pipeline."""
    return {
        **os.environ,
        "GA_POSTGRES_DSN": settings.postgres.dsn,
        "GA_REDIS_URL": settings.redis.url,
        "GA_NAMESPACE": settings.redis.namespace,
        "GA_REDIS_CLUSTER": str(settings.redis.cluster).lower(),
        "GA_REDIS_STREAM_SHARDS": str(settings.redis.stream_shards),
        "GA_TRANSFER_INTERVAL_S": "0.2",
        "GA_AGGREGATION_INTERVAL_S": "0.3",
        "GA_TRANSFER_BATCH_SIZE": "500",
        "GA_AGGREGATION_BATCH_HOURS": "3",
        "GA_RECLAIM_IDLE_MS": "1000",
        "GA_LOG_LEVEL": "WARNING",
        **extra,
    }


def launch(
    command: str, env: Mapping[str, str], *, address: str | None = None, timeout_s: float = 120
) -> subprocess.Popen[bytes]:
    """Start `generation-analytics <command>`; with `address`, wait until its gRPC health says SERVING."""
    process = subprocess.Popen([CLI, command], env=dict(env))
    if address is None:
        return process
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"`{command}` exited with {process.returncode} before serving")
            try:
                if (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return process
            except grpc.RpcError:
                time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"`{command}` did not start serving on {address} within {timeout_s:.0f} s")
