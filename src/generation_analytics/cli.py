"""The `generation-analytics` command: run the service, migrate, ask it questions, drive the pipeline.

Query commands need only the client (grpcio + protobuf); `serve`, `worker` and `migrate` need the
[service] extra. Output is a table by default and JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message

from generation_analytics.client import AnalyticsClient, AnalyticsClientError
from generation_analytics.jsonify import to_jsonable
from generation_analytics.questions import QUESTIONS, Question, UnknownValue, build, field_type
from generation_analytics.vocabulary import Word

DEFAULT_TARGET = os.environ.get("GA_TARGET", "127.0.0.1:50051")


# ---------------------------------------------------------------- service commands


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # APScheduler logs every run at INFO (every 2 s here); our jobs log what they did themselves.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))


def _serve(args: argparse.Namespace) -> int:
    from generation_analytics.service.api.server import serve
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
    from generation_analytics.service.pipeline.worker import run_worker
    from generation_analytics.service.settings import load_settings

    settings = load_settings()
    _configure_logging(settings.log_level)
    run_worker(settings)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from generation_analytics.service.embedded import start_embedded
    from generation_analytics.service.migrate import migrate
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


def _columns(key: str, *columns: str) -> Renderer:
    return lambda d: table(d[key], columns)


def _blocks(*parts: Callable[[dict[str, Any]], str]) -> Renderer:
    return lambda d: "\n\n".join(part(d) for part in parts)


def _optional_table(key: str, columns: Sequence[str], empty: str, title: str = "") -> Renderer:
    return lambda d: (title + table(d[key], columns)) if d[key] else empty


@dataclass(frozen=True)
class Command:
    """One client command: what it asks (a question, whose fields become its arguments, or a call) and
    how its answer is shown."""

    help: str
    render: Renderer
    question: type[Question] | None = None
    call: Callable[[AnalyticsClient, argparse.Namespace], Message] | None = None


COMMANDS: dict[str, Command] = {
    "overview": Command(
        "success rate, latency percentiles, users, images, queue", fields_block, QUESTIONS["GetOverview"]
    ),
    "trends": Command(
        "hourly or daily buckets",
        _columns("data_points", "timestamp", "total_requests", "successful_generations", "failed_generations",
                 "success_rate", "p95_duration_ms", "unique_users"),
        QUESTIONS["GetTrends"],
    ),
    "user": Command(
        "one user's activity",
        _blocks(
            fields_block,
            _optional_table("failure_breakdown", ["error_type", "count"], "no failures"),
            _optional_table("models_used", ["model_checkpoint", "count"], "no checkpoints"),
            _columns("recent_activity", "timestamp", "event_type", "model_checkpoint", "duration_ms", "success"),
        ),
        QUESTIONS["GetUserAnalytics"],
    ),
    "models": Command(
        "model checkpoint comparison",
        _columns("models", "model_checkpoint", "total_generations", "success_rate_pct", "avg_duration_ms",
                 "p50_duration_ms", "p95_duration_ms", "p99_duration_ms"),
        QUESTIONS["GetModelPerformance"],
    ),
    "failures": Command(
        "error types and daily failure rates",
        _blocks(
            fields_block,
            _columns("error_types", "error_type", "count", "avg_duration_ms", "affected_users", "last_seen"),
            _columns("failure_trends", "date", "total_completions", "failures", "failure_rate"),
        ),
        QUESTIONS["GetFailureAnalysis"],
    ),
    "peak-hours": Command(
        "load per UTC hour of day",
        _columns("peak_hours", "hour_of_day", "avg_requests", "total_requests", "avg_p95_duration_ms",
                 "avg_queue_length"),
        QUESTIONS["GetPeakHours"],
    ),
    "events": Command(
        "raw events, newest or slowest first",
        lambda d: (
            table(d["events"], ["timestamp", "event_type", "user_id", "model_checkpoint", "duration_ms", "success",
                                "error_type"])
            + (f"\nnext page: --page-token {d['next_page_token']}" if d["next_page_token"] else "")
        ),
        QUESTIONS["ListEvents"],
    ),
    "top-users": Command(
        "users ranked by requests",
        _columns("users", "user_id", "total_requests", "successful_generations", "failed_generations",
                 "avg_duration_ms", "last_generation_at"),
        QUESTIONS["ListTopUsers"],
    ),
    "status": Command(
        "pipeline health (stream backlog, freshness, last runs)",
        _blocks(
            fields_block,
            _columns("hours_with_data", "day", "hours_with_data"),
            _optional_table(
                "failing_hours", ["hour", "failing_since", "failures", "next_retry_at", "last_error"], "",
                "failing hours (retried with backoff; the others keep flowing):\n",
            ),
        ),
        call=lambda c, a: c.pipeline_status(),
    ),
    "transfer": Command("drain the stream into Postgres now", fields_block, call=lambda c, a: c.run_transfer()),
    "aggregate": Command(
        "recompute dirty hours now (or every hour of a range)",
        fields_block,
        call=lambda c, a: c.run_aggregation(
            _hour(a.start_hour) if a.start_hour else None, _hour(a.end_hour) if a.end_hour else None
        ),
    ),
}  # fmt: skip
# Shorter spellings kept from earlier versions of the CLI.
ALIASES = {"model_checkpoint": ["--model"]}
# Paging defaults the CLI shows (the API's own default page is 50 too).
CLI_DEFAULTS: dict[str, Any] = {"page_size": 50}


def _ask(client: AnalyticsClient, args: argparse.Namespace) -> Message:
    command = COMMANDS[args.command]
    if command.call is not None:
        return command.call(client, args)
    assert command.question is not None
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(command.question)}
    if "success" in values and values["success"] is not None:
        values["success"] = values["success"] == "true"
    try:
        question = build(command.question, **values)
    except UnknownValue as exc:
        raise SystemExit(f"error: --{exc.field.replace('_', '-')}: {exc}") from None
    response: Message = client.ask(question)
    return response


def _query(args: argparse.Namespace) -> int:
    with AnalyticsClient(args.target, timeout_s=args.timeout) as client:
        reply = _ask(client, args)
    data = to_jsonable(reply)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(COMMANDS[args.command].render(data))
    return 0


def _hour(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _add_question_arguments(parser: argparse.ArgumentParser, question: type[Question]) -> None:
    """One argument per field of the question: required fields positional, the others options."""
    for f in dataclasses.fields(question):
        kind = field_type(question, f.name)
        if f.default is dataclasses.MISSING:
            parser.add_argument(f.name)
            continue
        flags = [f"--{f.name.replace('_', '-')}", *ALIASES.get(f.name, [])]
        default = CLI_DEFAULTS.get(f.name)
        if kind is bool:
            parser.add_argument(*flags, dest=f.name, choices=["true", "false"], default=None)
        elif issubclass(kind, Word):
            parser.add_argument(*flags, dest=f.name, choices=[w.value for w in kind], default=None)
        else:
            parser.add_argument(*flags, dest=f.name, type=kind, default=default)


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

    for name, command in COMMANDS.items():
        client = sub.add_parser(name, help=command.help)
        client.add_argument("--target", default=DEFAULT_TARGET, help="gRPC address (env GA_TARGET)")
        client.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
        client.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if command.question is not None:
            _add_question_arguments(client, command.question)
        client.set_defaults(func=_query)
    aggregate = sub.choices["aggregate"]
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
