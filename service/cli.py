"""`attachments-gateway`: parse, call one function, print."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from .app import create_app
from .logs import AccessLogger, configure_logging
from .migrate import MigrationError, apply_migrations
from .settings import Settings, SettingsError

log = logging.getLogger(__name__)


class UsageError(Exception):
    """Bad input from the operator: one line on stderr, exit 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attachments-gateway", description="Presigned-redirect download gateway."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply pending database migrations")
    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", help="address to bind (default: HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: PORT or 8080)")
    return parser


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    applied = asyncio.run(apply_migrations(settings.database_url, settings.migrations_dir))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    try:
        import uvloop  # optional: a faster event loop when installed
    except ImportError:
        uvloop = None
    web.run_app(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        access_log_class=AccessLogger,
        shutdown_timeout=settings.shutdown_grace_seconds,
        print=None,
        loop=uvloop.new_event_loop() if uvloop else None,
    )
    return 0


COMMANDS = {"migrate": cmd_migrate, "serve": cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level)
        return COMMANDS[args.command](settings, args)
    except (SettingsError, MigrationError, UsageError) as exc:
        print(f"attachments-gateway: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"attachments-gateway: error: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
