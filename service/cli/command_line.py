"""`attachments-gateway`: parse, call one function, print (a human line, or JSON)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ..core.settings import Settings, SettingsError
from ..data.migrations import MigrationError
from ..storage.uploads import DEFAULT_PARALLEL_PARTS, MAX_PARALLEL_PARTS
from . import commands

log = logging.getLogger(__name__)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit 2 (its default prints the usage too)."""

    def error(self, message: str) -> Any:
        self.exit(2, f"attachments-gateway: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="attachments-gateway", description="Presigned-redirect download gateway.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    sub.add_parser("migrate", help="apply pending database migrations")
    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", help="address to bind (HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (PORT; default 8080)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (WORKERS)")
    dev = sub.add_parser("dev", help="run on an embedded Postgres and S3, with demo data")
    dev.add_argument("--port", type=int, default=8080)
    cluster = sub.add_parser(
        "cluster", help="the dev stack scaled out: PgBouncer, Redis, gateways behind HAProxy"
    )
    cluster.add_argument("--port", type=int, default=8080, help="the balancer's port")
    cluster.add_argument("--replicas", type=int, default=3)
    seed = sub.add_parser("seed", help="create (or reuse) the demo workspace, keys and file")
    seed.add_argument("--state-file", default=".dev/demo.json")
    seed.add_argument("--base-url", default="http://127.0.0.1:8080")
    seed.add_argument("--json", action="store_true")
    health = sub.add_parser("healthcheck", help="exit 0 if /healthz answers on this host")
    health.add_argument("--url", help="default http://127.0.0.1:$PORT/healthz")

    workspace = sub.add_parser("workspace", help="workspaces (tenants)").add_subparsers(
        dest="action", required=True, parser_class=Parser
    )
    create = workspace.add_parser("create")
    create.add_argument("name")
    create.add_argument("--no-api-access", action="store_true")
    create.add_argument("--json", action="store_true")
    listing = workspace.add_parser("list")
    listing.add_argument("--json", action="store_true")
    access = workspace.add_parser("set-api-access")
    access.add_argument("id")
    access.add_argument("state", choices=["on", "off"])

    key = sub.add_parser("key", help="API keys").add_subparsers(
        dest="action", required=True, parser_class=Parser
    )
    create = key.add_parser("create")
    create.add_argument("--workspace", required=True)
    create.add_argument("--scope", choices=["read", "write"], default="read")
    create.add_argument("--name", default="")
    create.add_argument("--expires-in", type=int, metavar="SECONDS")
    create.add_argument("--json", action="store_true")
    listing = key.add_parser("list")
    listing.add_argument("--workspace", required=True)
    listing.add_argument("--json", action="store_true")
    key.add_parser("revoke").add_argument("key_id")
    rotate = key.add_parser("rotate", help="a successor now; the old key ends after the overlap")
    rotate.add_argument("key_id")
    rotate.add_argument(
        "--overlap", required=True, metavar="DURATION", help="90s, 30m, 24h, 7d, or 0 (none)"
    )
    rotate.add_argument("--json", action="store_true")

    attachment = sub.add_parser("attachment", help="attachments").add_subparsers(
        dest="action", required=True, parser_class=Parser
    )
    add = attachment.add_parser("add", help="upload a file to S3 and register it")
    add.add_argument("--workspace", required=True)
    add.add_argument("path")
    add.add_argument("--filename")
    add.add_argument("--content-type")
    add.add_argument("--bucket")
    add.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL_PARTS,
        metavar="N",
        help=f"parts sent at once, 1 to {MAX_PARALLEL_PARTS} (default {DEFAULT_PARALLEL_PARTS})",
    )
    add.add_argument("--json", action="store_true")
    register = attachment.add_parser("register", help="register an object already in S3")
    register.add_argument("--workspace", required=True)
    register.add_argument("--bucket", required=True)
    register.add_argument("--key", required=True)
    register.add_argument("--filename", required=True)
    register.add_argument("--content-type", default="application/octet-stream")
    register.add_argument("--size", type=int)
    register.add_argument("--json", action="store_true")
    attachment.add_parser("delete", help="soft delete").add_argument("id")

    audit = sub.add_parser("audit", help="recorded downloads and refusals of a workspace")
    audit.add_argument("--workspace", required=True)
    audit.add_argument("--since", help="30m, 12h, 7d, or an ISO 8601 time (default: 1d)")
    audit.add_argument("--attachment")
    audit.add_argument("--limit", type=int, default=100)
    audit.add_argument("--json", action="store_true")
    purge = sub.add_parser(
        "purge", help="remove attachments deleted, or uploads left unconfirmed, long enough ago"
    )
    purge.add_argument("--older-than", required=True, metavar="AGE", help="90m, 12h, 30d")
    purge.add_argument("--dry-run", action="store_true", help="only count what would go")
    purge.add_argument("--json", action="store_true")
    return parser


def emit(result: commands.Result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.data, default=str))
    else:
        print(result.human)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = args.command + (f" {args.action}" if getattr(args, "action", None) else "")
    try:
        settings = Settings.from_env()
        command = commands.COMMANDS[name]
        outcome = command(settings, args)
        if asyncio.iscoroutine(outcome):
            with commands.reported():
                outcome = asyncio.run(outcome)
        if isinstance(outcome, commands.Result):
            emit(outcome, getattr(args, "json", False))
            return 0
        return int(outcome or 0)
    except (SettingsError, MigrationError, commands.UsageError) as exc:
        print(f"attachments-gateway: error: {exc}", file=sys.stderr)
        return 2
    except commands.Unavailable as exc:
        print(f"attachments-gateway: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
