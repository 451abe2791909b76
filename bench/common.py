"""Shared helpers for the benchmarks: isolated databases/namespaces, fast event generation, reporting."""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import statistics
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import make_conninfo

from generation_analytics.service.embedded import free_port
from generation_analytics.service.migrate import migrate
from generation_analytics.service.settings import (
    AggregationSettings,
    PostgresSettings,
    RedisSettings,
    ScheduleSettings,
    Settings,
    TransferSettings,
)
from generation_analytics.service.stream import EVENT_FIELD, StreamKeys
from generation_analytics.v1 import events_pb2
from tests.fix_processes import launch

ADMIN_DSN = os.environ.get("GA_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("GA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def rerun_command() -> str:
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", "-m", f"bench.{_module_name()}", *sys.argv[1:]])


def _module_name() -> str:
    return os.path.splitext(os.path.basename(sys.argv[0]))[0]


@contextlib.contextmanager
def scratch_database(name: str | None = None, *, keep: bool = False, schema: Path | None = None) -> Iterator[str]:
    """A freshly migrated database (the migrations in `schema`, else the package's), dropped unless `keep`."""
    name = name or f"ga_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(ADMIN_DSN, dbname=name)
    try:
        migrate(dsn, folder=schema)
        yield dsn
    finally:
        if not keep:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def scratch_namespace() -> Iterator[str]:
    namespace = f"ga_bench_{uuid.uuid4().hex[:10]}"
    try:
        yield namespace
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=StreamKeys(namespace).pattern))
        if keys:
            client.delete(*keys)
        client.close()


def bench_settings(dsn: str, namespace: str, *, budget_s: float | None = None, **transfer: Any) -> Settings:
    """Settings for a benchmark: the scheduler off; `budget_s` (if given) lets one run drain everything."""
    settings = replace(
        Settings(),
        postgres=PostgresSettings(dsn=dsn),
        redis=RedisSettings(url=REDIS_URL, namespace=namespace),
        schedule=ScheduleSettings(enabled=False),
        transfer=TransferSettings(**transfer),
    )
    if budget_s is not None:
        settings = replace(
            settings,
            transfer=replace(settings.transfer, time_budget_s=budget_s),
            aggregation=AggregationSettings(time_budget_s=budget_s),
        )
    return settings


MODELS = ["sdxl-1.0", "sdxl-turbo", "flux-dev", "flux-schnell", "sd-1.5", "sd-2.1", "kandinsky-3", "playground-v2"]
ERRORS = ["OutOfMemory", "Timeout", "NSFWFilter", "InvalidPrompt", "ModelLoadError"]


def synthetic_event(rng: random.Random, when: datetime, users: Sequence[str]) -> events_pb2.GenerationEvent:
    """A plausible event of any type (fast to build: used for backlogs of a million)."""
    kind = rng.random()
    event = events_pb2.GenerationEvent(
        event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        generation_id=f"g{rng.getrandbits(40):x}",
        user_id=rng.choice(users),
        model_checkpoint=rng.choice(MODELS),
    )
    event.timestamp.FromDatetime(when)
    if kind < 0.48:
        event.event_type = events_pb2.EVENT_TYPE_REQUEST
        event.queue_length = rng.randint(0, 40)
    elif kind < 0.97:
        event.event_type = events_pb2.EVENT_TYPE_COMPLETION
        event.success = rng.random() > 0.05
        event.duration_ms = int(rng.lognormvariate(8.3, 0.5))
        event.batch_size = rng.choice((1, 1, 2, 4))
        if not event.success:
            event.error_type = rng.choice(ERRORS)
            event.error_message = f"{event.error_type} on worker {rng.randint(1, 20)}"
    else:
        event.event_type = events_pb2.EVENT_TYPE_CANCELLATION
    return event


def push_backlog(namespace: str, count: int, *, start: datetime, span: timedelta, seed: int = 7) -> None:
    """Append `count` events spread over [start, start + span) to the namespace's stream, pipelined."""
    rng = random.Random(seed)
    users = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(5_000)]
    client = redis.Redis.from_url(REDIS_URL)
    stream = StreamKeys(namespace).stream
    step = span / max(count, 1)
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.xadd(stream, {EVENT_FIELD: synthetic_event(rng, start + step * i, users).SerializeToString()})
        if i % 5_000 == 4_999:
            pipe.execute()
    pipe.execute()
    client.close()


def now_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Figure:
    """One measured figure, its target (if it has one) and the verdict."""

    name: str
    value: str
    target: str = ""
    passed: bool | None = None

    @property
    def verdict(self) -> str:
        return "" if self.passed is None else ("PASS" if self.passed else "FAIL")


def print_figures(title: str, figures: Sequence[Figure]) -> None:
    print_result(
        title,
        [
            (f.name, "  ".join(x for x in (f.value, f.verdict, f"(target {f.target})" if f.target else "") if x))
            for f in figures
        ],
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_result(title: str, rows: Sequence[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}")
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
    print(f"  rerun: {rerun_command()}\n")


def service_environment(dsn: str, *, namespace: str, **env: str) -> tuple[dict[str, str], str]:
    """The environment of a benchmarked `serve` on `dsn` and `namespace` (gRPC on a free port, no gateway,
    quiet logs, then `env`), and its gRPC address."""
    address = f"127.0.0.1:{free_port()}"
    environment = {
        **os.environ,
        "GA_POSTGRES_DSN": dsn,
        "GA_REDIS_URL": REDIS_URL,
        "GA_NAMESPACE": namespace,
        "GA_LISTEN_ADDR": address,
        "GA_HTTP_ADDR": "off",
        "GA_LOG_LEVEL": "WARNING",
        **env,
    }
    return environment, address


def start_service(dsn: str, *, namespace: str, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """`generation-analytics serve` as its own process on `dsn` and `namespace`; returns it and its address."""
    environment, address = service_environment(dsn, namespace=namespace, **env)
    return launch("serve", environment, address=address, timeout_s=60), address


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
