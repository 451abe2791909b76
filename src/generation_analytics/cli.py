"""The `generation-analytics` command: run the service, migrate, ask it questions, drive the pipeline.

Query commands need only the client (grpcio + protobuf); `serve`, `worker` and `migrate` need the
[service] extra. Output is a table by default and JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message

from generation_analytics.client import AnalyticsClient, AnalyticsClientError
from generation_analytics.client.jsonify import to_jsonable

DEFAULT_TARGET = os.environ.get("GA_TARGET", "127.0.0.1:50051")


# ---------------------------------------------------------------- service commands


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # APScheduler logs every run at INFO (every 2 s here); our jobs log what they did themselves.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))


def _serve(args: argparse.Namespace) -> int:
    from generation_analytics.service.server import serve
    from generation_analytics.service.settings import describe, load_settings

    settings = load_settings()
    _configure_logging(settings.log_level)
    if args.print_settings:
        for name, value in describe(settings):
            print(f"{name}={value}")
        return 0
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(settings))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from generation_analytics.service.server import run_worker
    from generation_analytics.service.settings import load_settings

    settings = load_settings()
    _configure_logging(settings.log_level)
    run_worker(settings)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from generation_analytics.service.migrate import migrate
    from generation_analytics.service.runtime import start_embedded
    from generation_analytics.service.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    dsn = args.dsn or settings.postgres.dsn
    embedded = None
    if not dsn:
        settings, embedded = start_embedded(settings)
        dsn = settings.postgres.dsn
    try:
        applied = migrate(dsn)
    finally:
        if embedded:
            embedded.stop()
    print(f"applied {len(applied)} migration(s): {applied}" if applied else "schema is up to date")
    return 0


# ---------------------------------------------------------------- rendering


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain text table of `columns` of `rows`."""
    cells = [[_number(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(v.rjust(w) if v[:1].isdigit() else v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells
    ]
    return "\n".join(lines)


def fields_block(data: dict[str, Any], skip: Sequence[str] = ()) -> str:
    scalars = {k: v for k, v in data.items() if not isinstance(v, list | dict) and k not in skip}
    width = max(len(k) for k in scalars) if scalars else 0
    return "\n".join(f"{k.ljust(width)}  {_number(v)}" for k, v in scalars.items())


Renderer = Callable[[dict[str, Any]], str]

RENDERERS: dict[str, Renderer] = {
    "overview": fields_block,
    "trends": lambda d: table(
        d["data_points"],
        [
            "timestamp",
            "total_requests",
            "successful_generations",
            "failed_generations",
            "success_rate",
            "p95_duration_ms",
            "unique_users",
        ],
    ),
    "user": lambda d: "\n\n".join(
        [
            fields_block(d),
            table(d["failure_breakdown"], ["error_type", "count"]) if d["failure_breakdown"] else "no failures",
            table(d["models_used"], ["model_checkpoint", "count"]) if d["models_used"] else "no checkpoints",
            table(d["recent_activity"], ["timestamp", "event_type", "model_checkpoint", "duration_ms", "success"]),
        ]
    ),
    "models": lambda d: table(
        d["models"],
        [
            "model_checkpoint",
            "total_generations",
            "success_rate_pct",
            "avg_duration_ms",
            "p50_duration_ms",
            "p95_duration_ms",
            "p99_duration_ms",
        ],
    ),
    "failures": lambda d: "\n\n".join(
        [
            fields_block(d),
            table(d["error_types"], ["error_type", "count", "avg_duration_ms", "affected_users", "last_seen"]),
            table(d["failure_trends"], ["date", "total_completions", "failures", "failure_rate"]),
        ]
    ),
    "peak-hours": lambda d: table(
        d["peak_hours"], ["hour_of_day", "avg_requests", "total_requests", "avg_p95_duration_ms", "avg_queue_length"]
    ),
    "events": lambda d: (
        table(
            d["events"],
            ["timestamp", "event_type", "user_id", "model_checkpoint", "duration_ms", "success", "error_type"],
        )
        + (f"\nnext page: --page-token {d['next_page_token']}" if d["next_page_token"] else "")
    ),
    "top-users": lambda d: table(
        d["users"],
        [
            "user_id",
            "total_requests",
            "successful_generations",
            "failed_generations",
            "avg_duration_ms",
            "last_generation_at",
        ],
    ),
    "status": lambda d: (
        fields_block(d)
        + "\n\n"
        + table(d["hours_with_data"], ["day", "hours_with_data"])
        + (
            "\n\nfailing hours (retried with backoff; the others keep flowing):\n"
            + table(d["failing_hours"], ["hour", "failing_since", "failures", "next_retry_at", "last_error"])
            if d["failing_hours"]
            else ""
        )
    ),
    "transfer": fields_block,
    "aggregate": fields_block,
}


def _query(args: argparse.Namespace) -> int:
    with AnalyticsClient(args.target, timeout_s=args.timeout) as client:
        reply: Message = QUERIES[args.command](client, args)
    data = to_jsonable(reply)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(RENDERERS[args.command](data))
    return 0


def _hour(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


QUERIES: dict[str, Callable[[AnalyticsClient, argparse.Namespace], Message]] = {
    "overview": lambda c, a: c.overview(a.days),
    "trends": lambda c, a: c.trends(a.days, a.interval),
    "user": lambda c, a: c.user(a.user_id, a.days),
    "models": lambda c, a: c.models(a.days),
    "failures": lambda c, a: c.failures(a.days),
    "peak-hours": lambda c, a: c.peak_hours(a.days),
    "events": lambda c, a: c.events(
        days=a.days,
        user_id=a.user_id,
        model_checkpoint=a.model,
        event_type=a.event_type,
        success={"true": True, "false": False}.get(a.success or ""),
        error_type=a.error_type,
        min_duration_ms=a.min_duration_ms,
        order=a.order,
        page_size=a.page_size,
        page_token=a.page_token,
    ),
    "top-users": lambda c, a: c.top_users(a.days, a.limit),
    "status": lambda c, a: c.pipeline_status(),
    "transfer": lambda c, a: c.run_transfer(),
    "aggregate": lambda c, a: c.run_aggregation(
        _hour(a.start_hour) if a.start_hour else None, _hour(a.end_hour) if a.end_hour else None
    ),
}


def _demo(args: argparse.Namespace) -> int:
    from generation_analytics.client.demo import run_demo

    with AnalyticsClient(args.target, timeout_s=60) as client:
        run_demo(
            client,
            days=args.days,
            generations=args.generations,
            live_seconds=args.live_seconds,
            rate_per_s=args.rate,
            users=args.users,
        )
        client.run_transfer()
        client.run_aggregation()
        print(fields_block(to_jsonable(client.overview(args.days))))
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="generation-analytics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service (embedded Postgres/Redis when none is configured)")
    serve.add_argument("--print-settings", action="store_true", help="print the effective settings and exit")
    serve.set_defaults(func=_serve)
    worker = sub.add_parser("worker", help="run only the pipeline (transfer, aggregation, retention) on a schedule")
    worker.set_defaults(func=_worker)
    migrate = sub.add_parser("migrate", help="apply the schema migrations (safe to run twice)")
    migrate.add_argument("--dsn", default="", help="Postgres DSN (default: GA_POSTGRES_DSN, else embedded)")
    migrate.set_defaults(func=_migrate)

    def client_command(name: str, help_text: str, *, days: bool = True) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--target", default=DEFAULT_TARGET, help="gRPC address (env GA_TARGET)")
        command.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
        command.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if days:
            command.add_argument("--days", type=int, default=None, help="window in days (default: the RPC's)")
        command.set_defaults(func=_query)
        return command

    client_command("overview", "success rate, latency percentiles, users, images, queue")
    client_command("trends", "hourly or daily buckets").add_argument(
        "--interval", choices=["hourly", "daily"], default="hourly"
    )
    client_command("user", "one user's activity").add_argument("user_id")
    client_command("models", "model checkpoint comparison")
    client_command("failures", "error types and daily failure rates")
    client_command("peak-hours", "load per UTC hour of day")
    events = client_command("events", "raw events, newest or slowest first")
    events.add_argument("--user-id", default="")
    events.add_argument("--model", default="", help="model_checkpoint")
    events.add_argument("--event-type", default="", choices=["", "request", "completion", "cancellation"])
    events.add_argument("--success", choices=["true", "false"])
    events.add_argument("--error-type", default="")
    events.add_argument("--min-duration-ms", type=int)
    events.add_argument("--order", choices=["newest", "slowest"], default="newest")
    events.add_argument("--page-size", type=int, default=50)
    events.add_argument("--page-token", default="")
    client_command("top-users", "users ranked by requests").add_argument("--limit", type=int)
    client_command("status", "pipeline health (stream backlog, freshness, last runs)", days=False)
    client_command("transfer", "drain the stream into Postgres now", days=False)
    aggregate = client_command("aggregate", "recompute dirty hours now (or every hour of a range)", days=False)
    aggregate.add_argument("--start-hour", help="ISO time, UTC unless it says otherwise")
    aggregate.add_argument("--end-hour", help="ISO time, UTC unless it says otherwise")

    demo = sub.add_parser("demo", help="load a realistic history and send live traffic through the public API")
    demo.add_argument("--target", default=DEFAULT_TARGET)
    demo.add_argument("--days", type=int, default=7)
    demo.add_argument("--generations", type=int, default=20_000, help="generations in the history")
    demo.add_argument("--live-seconds", type=float, default=20.0)
    demo.add_argument("--rate", type=float, default=20.0, help="live generations per second")
    demo.add_argument("--users", type=int, default=200)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except AnalyticsClientError as exc:
        if exc.code.name == "UNAVAILABLE":
            print(f"error: cannot reach the service at {getattr(args, 'target', '?')} ({exc.details})", file=sys.stderr)
            print("hint: start it with `make run`, or pass --target HOST:PORT", file=sys.stderr)
            return 2
        where = f" (field: {exc.field})" if exc.field else ""
        print(f"error: {exc.code.name}{where}: {exc.details}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        if args.command in {"serve", "worker", "migrate"}:
            print(f"error: `{args.command}` needs the service extra ({exc.name} is missing):", file=sys.stderr)
            print("  pip install 'generation-analytics[service,embedded]'", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
