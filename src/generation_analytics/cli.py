"""The `generation-analytics` command: run the service, migrate, ask it questions, drive the pipeline.

Query commands need only the client (grpcio + protobuf); `serve`, `worker` and `migrate` need the
[service] extra. Output is a table by default and JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message

from generation_analytics.client import AnalyticsClient, AnalyticsClientError
from generation_analytics.jsonify import to_jsonable
from generation_analytics.questions import QUESTIONS, Question, UnknownValue, build, field_type
from generation_analytics.vocabulary import Word

DEFAULT_TARGET = os.environ.get("GA_TARGET", "127.0.0.1:50051")
# A reader that went away (`| head -1`): exit as a command killed by SIGPIPE does in a shell (128 + 13).
EXIT_BROKEN_PIPE = 128 + getattr(signal, "SIGPIPE", 13)


class CliError(Exception):
    """A mistake in how the command was called: shown as one `error: …` line, exit status 2 (as argparse)."""


# ---------------------------------------------------------------- service commands


def _configure_logging(level: str) -> None:
    from generation_analytics.service.logs import configure_logging

    configure_logging(level)


def _serve(args: argparse.Namespace) -> int:
    from generation_analytics.service.api.server import serve, use_uvloop
    from generation_analytics.service.settings import describe, load_settings

    settings = load_settings()
    _configure_logging(settings.log_level)
    if args.print_settings:
        for name, value in describe(settings):
            print(f"{name}={value}")
        return 0
    use_uvloop()
    asyncio.run(serve(settings))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from generation_analytics.service.pipeline.worker import run_worker
    from generation_analytics.service.settings import load_settings

    settings = load_settings()
    _configure_logging(settings.log_level)
    run_worker(settings)
    return 0


@contextlib.contextmanager
def _database(args: argparse.Namespace) -> Iterator[str]:
    """The DSN of --dsn, else GA_POSTGRES_DSN, else the embedded Postgres of `serve` (started for now)."""
    from generation_analytics.service.embedded import start_embedded
    from generation_analytics.service.settings import load_settings

    settings = load_settings()
    dsn = args.dsn or settings.postgres.dsn
    embedded = None
    if not dsn:
        settings, embedded = start_embedded(replace(settings, redis=replace(settings.redis, url="unused")))
        dsn = settings.postgres.dsn
    try:
        yield dsn
    finally:
        if embedded:
            embedded.stop()


def _migrate(args: argparse.Namespace) -> int:
    from generation_analytics.service.migrate import migrate

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with _database(args) as dsn:
        applied = migrate(dsn)
    print(f"applied {len(applied)} migration(s): {applied}" if applied else "schema is up to date")
    return 0


def _keys(args: argparse.Namespace) -> int:
    """keys create | list | revoke: straight on the database (whoever can reach it is the administrator)."""
    import psycopg

    from generation_analytics.service.api import keys
    from generation_analytics.service.migrate import migrate

    with _database(args) as dsn, psycopg.connect(dsn) as conn:
        migrate(dsn)
        if args.keys_command == "create":
            try:
                key, token = keys.create_key(conn, name=args.name, scopes=keys.parse_scopes(args.scope))
            except ValueError as exc:
                raise SystemExit(f"error: {exc}") from None
            print(token)
            print(f"key {key.id} ({', '.join(sorted(key.scopes))}) created; the secret above is shown only now",
                  file=sys.stderr)  # fmt: skip
        elif args.keys_command == "list":
            rows = [
                {"id": k.id, "name": k.name, "scopes": ",".join(sorted(k.scopes)), "created_at": k.created_at,
                 "last_used_at": k.last_used_at, "revoked_at": k.revoked_at}
                for k in keys.list_keys(conn)
            ]  # fmt: skip
            print(table(rows, ["id", "name", "scopes", "created_at", "last_used_at", "revoked_at"]))
        elif not keys.revoke_key(conn, args.id):
            raise SystemExit(f"error: no live key with id {args.id!r} (see `generation-analytics keys list`)")
        else:
            print(f"key {args.id} revoked (services stop accepting it within GA_AUTH_CACHE_S)")
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
    """The parts one after another, leaving out those that render nothing."""
    return lambda d: "\n\n".join(text for part in parts if (text := part(d)))


def _optional_table(key: str, columns: Sequence[str], empty: str, title: str = "") -> Renderer:
    return lambda d: (title + table(d[key], columns)) if d[key] else empty


# The status reply's last runs, one row each (they are messages, which `fields_block` leaves out).
JOB_RUNS = ("last_transfer", "last_aggregation")
JOB_RUN_COLUMNS = ("run", "started_at", "duration_s", "processed", "error", "last_error", "last_error_at")


def _job_runs(data: dict[str, Any]) -> str:
    rows = []
    for key in JOB_RUNS:
        run = data.get(key) or {}
        row = {"run": key.removeprefix("last_"), **(run if run.get("started_at") else {"started_at": "never"})}
        # An error's text may span lines; a table row may not.
        rows.append({k: " ".join(v.split()) if isinstance(v, str) else v for k, v in row.items()})
    return "last runs:\n" + table(rows, JOB_RUN_COLUMNS)


CHANGE_COLUMNS = ("metric", "value", "baseline", "absolute_change", "relative_change_pct", "significant", "test")


def _changes(title: str, key: str = "changes") -> Renderer:
    """The MetricChange list under `title` (nothing when the answer has none: no comparison asked)."""
    return lambda d: f"{title}:\n" + table(d[key], CHANGE_COLUMNS) if d.get(key) else ""


def _model_changes(d: dict[str, Any]) -> str:
    """Each listed checkpoint's changes against the previous window (with compare_previous)."""
    blocks = [
        _changes(f"{m['model_checkpoint'] or '(none)'} against the previous window")(m)
        for m in [*d["models"], *([d["others"]] if d.get("others") else [])]
    ]
    return "\n\n".join(b for b in blocks if b)


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
        "success rate, latency percentiles, users, images, queue",
        _blocks(fields_block, _changes("against the previous window")),
        QUESTIONS["GetOverview"],
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
        _blocks(
            _columns("models", "model_checkpoint", "total_generations", "success_rate_pct", "avg_duration_ms",
                     "p50_duration_ms", "p95_duration_ms", "p99_duration_ms", "gpu_time_ms", "gpu_cost"),
            _model_changes,
        ),
        QUESTIONS["GetModelPerformance"],
    ),
    "compare-checkpoints": Command(
        "two checkpoints side by side: is b slower or failing more than a?",
        _blocks(
            lambda d: table(
                [{"": "a", **d["checkpoint_a"]}, {"": "b", **d["checkpoint_b"]}],
                ["", "model_checkpoint", "total_generations", "success_rate_pct", "avg_duration_ms",
                 "p50_duration_ms", "p95_duration_ms", "p99_duration_ms"],
            ),
            _changes("b against a"),
        ),
        QUESTIONS["CompareCheckpoints"],
    ),
    "failures": Command(
        "error types and daily failure rates",
        _blocks(
            fields_block,
            _columns("error_types", "error_type", "count", "avg_duration_ms", "affected_users", "last_seen"),
            _columns("failure_trends", "date", "total_completions", "failures", "failure_rate"),
            _changes("against the previous window"),
        ),
        QUESTIONS["GetFailureAnalysis"],
    ),
    "error-groups": Command(
        "failures grouped by fingerprint (error type + normalised message), most failures first",
        lambda d: (
            f"{d['total_groups']:,} groups (rules version {d['rules_version']})\n"
            + table(
                [{**g, "checkpoints": ",".join(c or "(none)" for c in g["checkpoints"])} for g in d["groups"]],
                ["fingerprint", "error_type", "count", "affected_users", "checkpoints", "last_seen",
                 "sample_message"],
            )
            + (f"\nnext page: --page-token {d['next_page_token']}" if d["next_page_token"] else "")
        ),
        QUESTIONS["ListErrorGroups"],
    ),
    "peak-hours": Command(
        "load per hour of day (UTC, or --time-zone)",
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
        "users ranked by requests (or --order gpu_time)",
        _columns("users", "user_id", "total_requests", "successful_generations", "failed_generations",
                 "avg_duration_ms", "gpu_time_ms", "last_generation_at"),
        QUESTIONS["ListTopUsers"],
    ),
    "status": Command(
        "pipeline health (stream backlog, freshness, last runs)",
        _blocks(
            lambda d: fields_block(d, skip=JOB_RUNS),
            _job_runs,
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
        call=lambda c, a: c.run_aggregation(*_aggregation_range(a)),
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
        raise CliError(f"--{exc.field.replace('_', '-')}: {exc}") from None
    response: Message = client.ask(question)
    return response


def _client(args: argparse.Namespace, **options: Any) -> AnalyticsClient:
    try:
        return AnalyticsClient(
            args.target,
            api_key=args.api_key,
            ca_file=args.ca,
            client_cert_file=args.cert,
            client_key_file=args.key,
            tls=True if args.tls else None,
            **options,
        )
    except (ValueError, OSError) as exc:  # a certificate without its key, a file that cannot be read
        raise CliError(f"cannot set up the connection to {args.target}: {exc}") from None


def _query(args: argparse.Namespace) -> int:
    if args.command == "aggregate":
        _aggregation_range(args)  # refuse a bad range before connecting
    with _client(args, timeout_s=args.timeout) as client:
        reply = _ask(client, args)
    data = to_jsonable(reply)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(COMMANDS[args.command].render(data))
    return 0


# ---------------------------------------------------------------- alerts


def _rule_row(rule: dict[str, Any]) -> dict[str, Any]:
    spec = rule["spec"] or {}
    scope = spec.get("scope") or "everything"
    scope_text = scope if scope == "everything" else f"{scope} {spec.get('scope_value')}"
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    condition = (f"{spec.get('metric')} of {scope_text} {signs.get(spec.get('comparison') or '', '?')} "
                 f"{spec.get('threshold'):g} over {spec.get('window_minutes')} min")  # fmt: skip
    return {"id": rule["id"], "name": spec.get("name"), "state": rule["state"], "condition": condition,
            "last_value": rule["last_value"], "last_samples": rule["last_samples"],
            "last_evaluated_at": rule["last_evaluated_at"], "enabled": spec.get("enabled")}  # fmt: skip


def _alert_spec(args: argparse.Namespace) -> Any:
    from generation_analytics.client import alert_rule_spec
    from generation_analytics.vocabulary import UnknownValue as WordError

    labels = {}
    for item in args.label or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CliError(f"--label: expected KEY=VALUE (got {item!r})")
        labels[key] = value
    hooks: list[tuple[str, str]] = [(url, "standard") for url in args.webhook or []]
    hooks += [(url, "slack") for url in args.slack_webhook or []]
    try:
        return alert_rule_spec(
            args.name, args.metric, args.comparison, args.threshold, window_minutes=args.window_minutes,
            scope=args.scope, scope_value=args.scope_value, min_samples=args.min_samples,
            pending_for_s=args.pending_for_s, repeat_interval_s=args.repeat_interval_s, labels=labels,
            webhooks=hooks, enabled=not args.disabled,
        )  # fmt: skip
    except WordError as exc:
        raise CliError(f"--{exc.field.replace('_', '-')}: {exc}") from None


def _alerts(args: argparse.Namespace) -> int:
    """alerts create | list | delete | test | events, through AlertService."""
    with _client(args, timeout_s=args.timeout) as client:
        command = args.alerts_command
        if command == "create":
            data: Any = to_jsonable(client.create_alert_rule(_alert_spec(args)))
            text = table([_rule_row(data)], ["id", "name", "state", "condition"])
            secrets = [f"  {t['url']}: {t['secret']}" for t in data["spec"]["targets"]]
            if secrets:
                text += "\nwebhook secrets (shown only now; receivers verify signatures with them):\n"
                text += "\n".join(secrets)
        elif command == "list":
            data = [to_jsonable(rule) for rule in client.alert_rules()]
            columns = ["id", "name", "state", "condition", "last_value", "last_samples", "last_evaluated_at", "enabled"]
            text = table([_rule_row(rule) for rule in data], columns)
        elif command == "delete":
            client.delete_alert_rule(args.id)
            data, text = {"deleted": args.id}, f"alert rule {args.id} deleted"
        elif command == "test":
            data = to_jsonable(client.test_alert_rule(args.id))
            text = fields_block(data)
        else:
            data = to_jsonable(client.alert_events(args.rule_id, page_size=args.page_size, page_token=args.page_token))
            text = table(data["events"], ["id", "at", "rule_name", "from_state", "to_state", "value", "threshold",
                                          "samples", "message"])  # fmt: skip
            if data["next_page_token"]:
                text += f"\nnext page: --page-token {data['next_page_token']}"
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def _add_alert_commands(sub: Any) -> None:
    from generation_analytics.vocabulary import AlertMetric, AlertScope, Comparison

    alerts = sub.add_parser("alerts", help="alert rules: create, list, delete, test; their events")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True)
    create = alerts_sub.add_parser("create", help="a new rule (prints generated webhook secrets once)")
    create.add_argument("--name", required=True)
    create.add_argument("--metric", required=True, choices=[w.value for w in AlertMetric])
    create.add_argument("--comparison", required=True, choices=[w.value for w in Comparison])
    create.add_argument("--threshold", required=True, type=float)
    create.add_argument("--window-minutes", type=int, default=15, help="a multiple of 15 (default 15)")
    create.add_argument("--scope", default="everything", choices=[w.value for w in AlertScope])
    create.add_argument("--scope-value", default="", help="the checkpoint or error type of the scope")
    create.add_argument("--min-samples", type=int, default=0, help="fewer in the window: NO_DATA")
    create.add_argument("--pending-for-s", type=int, default=0, help="breaching this long before FIRING")
    create.add_argument("--repeat-interval-s", type=int, default=0, help="notify again while FIRING (0: never)")
    create.add_argument("--label", action="append", help="KEY=VALUE, copied into notifications (repeatable)")
    create.add_argument("--webhook", action="append", help="URL for signed standard webhooks (repeatable)")
    create.add_argument("--slack-webhook", action="append", help="URL for Slack-compatible bodies (repeatable)")
    create.add_argument("--disabled", action="store_true", help="store it without evaluating it")
    alerts_sub.add_parser("list", help="every rule and where it stands")
    delete = alerts_sub.add_parser("delete", help="remove a rule and its history")
    delete.add_argument("id", type=int)
    test = alerts_sub.add_parser("test", help="evaluate a rule now (nothing stored or sent)")
    test.add_argument("id", type=int)
    events = alerts_sub.add_parser("events", help="state transitions, newest first")
    events.add_argument("--rule-id", type=int, default=0, help="one rule's (default: every rule's)")
    events.add_argument("--page-size", type=int, default=50)
    events.add_argument("--page-token", default="")
    for command in alerts_sub.choices.values():
        command.add_argument("--target", default=DEFAULT_TARGET, help="gRPC address (env GA_TARGET)")
        command.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
        command.add_argument("--json", action="store_true", help="print JSON instead of a table")
        _add_connection_arguments(command)
    alerts.set_defaults(func=_alerts)


def _hour(option: str, text: str) -> datetime:
    """`text` as an aware datetime (UTC unless it says otherwise); CliError naming `option` if it is not one."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"{option}: not an ISO time (e.g. 2026-11-28T13:00): {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _aggregation_range(args: argparse.Namespace) -> tuple[datetime | None, datetime | None]:
    """`aggregate`'s --start-hour and --end-hour: both (a range to recompute) or neither (the dirty hours)."""
    if bool(args.start_hour) != bool(args.end_hour):
        given, missing = ("--start-hour", "--end-hour") if args.start_hour else ("--end-hour", "--start-hour")
        raise CliError(f"{given} needs {missing} too (give both to recompute a range, or neither)")
    if not args.start_hour:
        return None, None
    start, end = _hour("--start-hour", args.start_hour), _hour("--end-hour", args.end_hour)
    if end < start:
        raise CliError(f"--end-hour ({end.isoformat()}) is before --start-hour ({start.isoformat()})")
    return start, end


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """How to reach a service that requires keys or TLS (each also read from the environment)."""
    parser.add_argument("--api-key", default=None, help="API key (env GA_API_KEY)")
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's roots (env GA_TLS)")
    parser.add_argument("--ca", default=None, help="CA file that signed the server's certificate (env GA_CA_FILE)")
    parser.add_argument("--cert", default=None, help="client certificate, for mTLS (env GA_CLIENT_CERT)")
    parser.add_argument("--key", default=None, help="client certificate's key, for mTLS (env GA_CLIENT_KEY)")


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


class Progress:
    """One line on stderr, rewritten at most every `every_s`: rows so far and rows per second."""

    def __init__(self, *, every_s: float = 0.5) -> None:
        self.rows = 0
        self._every_s = every_s
        self._started = self._shown = time.monotonic()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        return f"exported {self.rows:,} rows ({self.rows / elapsed:,.0f} rows/s, {elapsed:.1f} s)"

    def add(self, rows: int) -> None:
        self.rows += rows
        if time.monotonic() - self._shown >= self._every_s:
            self._shown = time.monotonic()
            print("\r" + self.line(), end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        print("\r" + self.line(), file=sys.stderr, flush=True)


def _export(args: argparse.Namespace) -> int:
    """Every event matching the filters, streamed by ExportEvents into a CSV, JSON Lines or Parquet file."""
    from pathlib import Path

    from generation_analytics.export import MissingPyarrow, flat_event, open_writer

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(QUESTIONS["ExportEvents"])}
    if values["success"] is not None:
        values["success"] = values["success"] == "true"
    try:
        build(QUESTIONS["ExportEvents"], **values)  # refuse bad filters before creating the file
    except UnknownValue as exc:
        raise CliError(f"--{exc.field.replace('_', '-')}: {exc}") from None
    to_stdout = args.output == "-"
    if to_stdout and args.format == "parquet":
        raise CliError("--format parquet needs --output FILE (not stdout)")
    path = Path(args.output)
    progress = Progress()
    with contextlib.ExitStack() as stack:
        stream = None
        if args.format != "parquet":
            stream = sys.stdout if to_stdout else stack.enter_context(path.open("w", encoding="utf-8", newline=""))
        try:
            writer = open_writer(args.format, path, stream)
        except MissingPyarrow as exc:
            raise CliError(str(exc)) from None
        client = stack.enter_context(_client(args))
        try:
            for batch in client.export_batches(timeout_s=args.timeout, **values):
                rows = [flat_event(event) for event in batch.events]
                writer.write(rows)
                progress.add(len(rows))
        finally:
            writer.close()
    progress.done()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from generation_analytics.client.demo import run_demo

    with _client(args, timeout_s=60) as client:
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


def dashboard_url(http_addr: str, *, tls: bool) -> str:
    """The dashboard's URL for a gateway listening on `http_addr` (a wildcard address is browsed on loopback)."""
    host, _, port = http_addr.rpartition(":")
    host = host.strip("[]")
    if host in {"", "0.0.0.0"}:
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}/"


def _probe(url: str, ca_file: str | None) -> str:
    """ "open", "auth" (the data needs a key), "tls" (answers, but its certificate could not be checked) or
    "down": one small question to the gateway behind `url`."""
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url + "api/v1/analytics/generation/overview?days=1", timeout=5, context=context):
            return "open"
    except urllib.error.HTTPError as exc:
        return "auth" if exc.code in {401, 403} else "open"
    except urllib.error.URLError as exc:
        return "tls" if isinstance(exc.reason, ssl.SSLError) else "down"
    except ssl.SSLError:
        return "tls"
    except OSError:
        return "down"


def _has_graphical_browser() -> bool:
    """A browser window can open here (without a display, Python would start a text browser in this terminal)."""
    return sys.platform in {"darwin", "win32"} or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _dashboard(args: argparse.Namespace) -> int:
    import webbrowser

    http_addr, tls = args.http, args.tls
    if http_addr is None:  # where `serve` would listen, read as it reads it
        from generation_analytics.service.settings import load_settings

        settings = load_settings()
        http_addr, tls = settings.server.http_addr, tls or settings.tls.enabled
    if http_addr.lower() == "off":
        raise CliError("the HTTP gateway is off (GA_HTTP_ADDR=off): the dashboard needs it")
    url = dashboard_url(http_addr, tls=tls)
    print(url)
    found = _probe(url, args.ca)
    if found == "down":
        print(f"error: nothing answers at {url}", file=sys.stderr)
        print("hint: start the service with `make run`, or pass --http HOST:PORT (its GA_HTTP_ADDR)", file=sys.stderr)
        return 2
    if found == "tls":
        print("note: the service answers over TLS but its certificate could not be checked here (see --ca)")
    if found == "auth":
        print("this service requires API keys: the page asks once per tab for one with the `read` scope")
        print("  (create one: generation-analytics keys create --name dashboard --scope read)")
    if not args.no_browser and _has_graphical_browser() and webbrowser.open(url, new=2):
        print("opened in your browser")
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="generation-analytics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service (embedded Postgres/Redis when none is configured)")
    serve.add_argument("--print-settings", action="store_true", help="print the effective settings and exit")
    serve.set_defaults(func=_serve)
    worker = sub.add_parser(
        "worker", help="run only the pipeline (transfer, aggregation, retention, alerts) on its schedule"
    )
    worker.set_defaults(func=_worker)
    migrate = sub.add_parser("migrate", help="apply the schema migrations (safe to run twice)")
    migrate.add_argument("--dsn", default="", help="Postgres DSN (default: GA_POSTGRES_DSN, else embedded)")
    migrate.set_defaults(func=_migrate)
    keys = sub.add_parser("keys", help="API keys: create (shows the secret once), list, revoke")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="a new key; prints it once")
    create.add_argument("--name", required=True, help="who or what uses it")
    create.add_argument("--scope", required=True, help="ingest, read, admin (comma-separated)")
    keys_sub.add_parser("list", help="every key (never a secret), with when it was last used")
    revoke = keys_sub.add_parser("revoke", help="stop a key working (within GA_AUTH_CACHE_S)")
    revoke.add_argument("id")
    for keys_command in (create, keys_sub.choices["list"], revoke):
        keys_command.add_argument("--dsn", default="", help="Postgres DSN (default: GA_POSTGRES_DSN, else embedded)")
    keys.set_defaults(func=_keys)

    for name, command in COMMANDS.items():
        client = sub.add_parser(name, help=command.help)
        client.add_argument("--target", default=DEFAULT_TARGET, help="gRPC address (env GA_TARGET)")
        client.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
        client.add_argument("--json", action="store_true", help="print JSON instead of a table")
        _add_connection_arguments(client)
        if command.question is not None:
            _add_question_arguments(client, command.question)
        client.set_defaults(func=_query)
    export = sub.add_parser("export", help="every event matching ListEvents' filters, to a CSV, JSONL or Parquet file")
    export.add_argument("--target", default=DEFAULT_TARGET, help="gRPC address (env GA_TARGET)")
    export.add_argument("--timeout", type=float, default=None, help="seconds for the whole export (default: none)")
    export.add_argument("--format", choices=["csv", "jsonl", "parquet"], default="csv")
    export.add_argument("--output", required=True, help="file to write (`-`: stdout, csv and jsonl only)")
    _add_connection_arguments(export)
    _add_question_arguments(export, QUESTIONS["ExportEvents"])
    export.set_defaults(func=_export)
    aggregate = sub.choices["aggregate"]
    aggregate.add_argument("--start-hour", help="ISO time, UTC unless it says otherwise")
    aggregate.add_argument("--end-hour", help="ISO time, UTC unless it says otherwise")

    _add_alert_commands(sub)

    demo = sub.add_parser("demo", help="load a realistic history and send live traffic through the public API")
    demo.add_argument("--target", default=DEFAULT_TARGET)
    _add_connection_arguments(demo)
    demo.add_argument("--days", type=int, default=7)
    demo.add_argument("--generations", type=int, default=20_000, help="generations in the history")
    demo.add_argument("--live-seconds", type=float, default=20.0)
    demo.add_argument("--rate", type=float, default=20.0, help="live generations per second")
    demo.add_argument("--users", type=int, default=200)
    demo.set_defaults(func=_demo)

    dashboard = sub.add_parser("dashboard", help="print the web dashboard's URL and open it in a browser")
    dashboard.add_argument("--http", default=None, help="the gateway's HOST:PORT (default: GA_HTTP_ADDR, as `serve`)")
    dashboard.add_argument("--tls", action="store_true", help="https (default when GA_TLS_CERT is set, as `serve`)")
    dashboard.add_argument("--ca", default=os.environ.get("GA_CA_FILE"), help="CA file for https (env GA_CA_FILE)")
    dashboard.add_argument("--no-browser", action="store_true", help="only print the URL")
    dashboard.set_defaults(func=_dashboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        # Flush here, not at interpreter exit, so that a reader gone away is noticed below.
        sys.stdout.flush()
        return result
    except BrokenPipeError:
        # The reader closed early (`| head -1`): what it wanted is out. As Python's docs recommend (the
        # signal module's note on SIGPIPE), point stdout at devnull so the flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except AnalyticsClientError as exc:
        details = " ".join(exc.details.split())  # one line, even for a database error with its CONTEXT
        if exc.code.name == "UNAVAILABLE":
            print(f"error: cannot reach the service at {getattr(args, 'target', '?')} ({details})", file=sys.stderr)
            print("hint: start it with `make run`, or pass --target HOST:PORT", file=sys.stderr)
            return 2
        where = f" (field: {exc.field})" if exc.field else ""
        print(f"error: {exc.code.name}{where}: {details}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        if args.command in {"serve", "worker", "migrate", "keys"}:
            print(f"error: `{args.command}` needs the service extra ({exc.name} is missing):", file=sys.stderr)
            print("  pip install 'generation-analytics[service,embedded]'", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
