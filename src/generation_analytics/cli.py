"""The `generation-analytics` command: run the service, migrate, and ask it questions."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence


def _serve(args: argparse.Namespace) -> int:
    from generation_analytics.service.server import serve
    from generation_analytics.service.settings import describe, load_settings

    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="generation-analytics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC service (embedded Postgres/Redis when none is configured)")
    serve.add_argument("--print-settings", action="store_true", help="print the effective settings and exit")
    serve.set_defaults(func=_serve)

    migrate = sub.add_parser("migrate", help="apply the schema migrations (safe to run twice)")
    migrate.add_argument("--dsn", default="", help="Postgres DSN (default: GA_POSTGRES_DSN, else embedded)")
    migrate.set_defaults(func=_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
