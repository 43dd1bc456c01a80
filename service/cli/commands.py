"""What each CLI command does; `main.py` only parses and prints."""

from __future__ import annotations

import argparse
import contextlib
import mimetypes
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from botocore.exceptions import BotoCoreError, ClientError

from ..core.errors import (
    DatabaseUnavailable,
    KeyNotRotatable,
    ObjectTooLarge,
    StorageNotConfigured,
    StorageUnavailable,
)
from ..core.media_types import DEFAULT_CONTENT_TYPE, is_media_type
from ..core.settings import Settings
from ..core.text import (
    BUCKET_RULE,
    MAX_FILENAME_CHARS,
    OBJECT_KEY_RULE,
    is_reachable_object_key,
    is_storable_bucket,
    is_storable_filename,
)
from ..data import admin, pool
from ..data import purge as purging
from ..data.migrations import apply_migrations
from ..data.pool import UNAVAILABLE_ERRORS
from ..devstack.demo import StateFileError, ensure_demo
from ..storage.client import UPLOAD_URL_SECONDS, internal_client
from ..storage.uploads import MAX_PARALLEL_PARTS, TerminalProgress, upload_file


class UsageError(Exception):
    """Bad input: one line on stderr, exit 2."""


class Unavailable(Exception):
    """The database or S3 could not be reached: one line on stderr, exit 1."""


@dataclass
class Result:
    human: str
    data: Any = field(default_factory=dict)


def parse_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise UsageError(f"{what} {value!r} is not a UUID") from None


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """What went wrong below, as the CLI's two kinds of failure: the one place where the
    commands' errors are translated (each command just lets them rise)."""
    try:
        yield
    except (StorageNotConfigured, StateFileError, KeyNotRotatable, ObjectTooLarge) as exc:
        raise UsageError(str(exc)) from None
    except StorageUnavailable as exc:
        raise Unavailable(str(exc)) from None
    except (BotoCoreError, ClientError) as exc:
        raise Unavailable(f"S3 refused or unreachable ({type(exc).__name__})") from None
    except DatabaseUnavailable as exc:
        raise Unavailable(f"database unreachable ({exc})") from None
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise UsageError(f"refused by the database: {str(exc).splitlines()[0]}") from None
    except UNAVAILABLE_ERRORS as exc:
        raise Unavailable(f"database unreachable ({type(exc).__name__})") from None


@contextlib.asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await pool.connect(settings)
    try:
        yield conn
    finally:
        await conn.close()


async def migrate(settings: Settings, args: argparse.Namespace) -> Result:
    applied = await apply_migrations(settings.direct_database_url, settings.migrations_dir)
    names = ", ".join(applied)
    return Result(f"applied {len(applied)} migration(s)" + (f": {names}" if names else ""))


def serve(settings: Settings, args: argparse.Namespace) -> int:
    from ..server.processes import serve as serve_one
    from ..server.processes import serve_workers

    workers = args.workers if args.workers is not None else settings.workers
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise UsageError("--port must be a port, 1 to 65535")
    # The flags win over HOST/PORT/WORKERS, for the metrics listener too.
    settings = replace(
        settings,
        host=args.host or settings.host,
        port=args.port if args.port is not None else settings.port,
        workers=workers,
    )
    settings.check_listeners()
    host, port = settings.host, settings.port
    if workers == 1:
        serve_one(settings, host, port)
        return 0
    return serve_workers(settings, host, port, workers)


DEV_EXTRA = "the dev stack needs the dev extra: pip install 'attachments-gateway[dev]'"


def cluster(settings: Settings, args: argparse.Namespace) -> int:
    try:
        from ..devstack.cluster import run_cluster
        from ..devstack.processes import CannotStart
    except ImportError:
        raise UsageError(DEV_EXTRA) from None

    if args.replicas < 1:
        raise UsageError("--replicas must be at least 1")
    try:
        run_cluster(args.port, args.replicas)
    except CannotStart as exc:
        raise UsageError(str(exc)) from None
    return 0


def dev(settings: Settings, args: argparse.Namespace) -> int:
    try:
        from ..devstack.processes import CannotStart
        from ..devstack.stack import run_dev_stack
    except ImportError:
        raise UsageError(DEV_EXTRA) from None

    try:
        run_dev_stack(args.port, settings)
    except CannotStart as exc:
        raise UsageError(str(exc)) from None
    return 0


async def seed(settings: Settings, args: argparse.Namespace) -> Result:
    demo = await ensure_demo(settings, Path(args.state_file))
    data = {**asdict(demo), "curl": demo.curl(args.base_url)}
    human = (
        f"demo workspace {demo.workspace_id}\n"
        f"read key       {demo.read_token}\nwrite key      {demo.write_token}\n"
        f"attachment     {demo.attachment_id}\n\n{data['curl']}"
    )
    return Result(human, data)


def healthcheck(settings: Settings, args: argparse.Namespace) -> int:
    url = args.url or f"http://127.0.0.1:{settings.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - operator's URL
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1
    except ValueError:  # not a URL urllib can open: `localhost/healthz`
        raise UsageError(f"--url {url!r} is not an http(s) URL") from None


async def workspace_create(settings: Settings, args: argparse.Namespace) -> Result:
    async with connect(settings) as conn:
        workspace_id = await admin.create_workspace(
            conn, args.name, api_access=not args.no_api_access
        )
    data = {"id": str(workspace_id), "name": args.name, "api_access": not args.no_api_access}
    return Result(f"created workspace {workspace_id} ({args.name})", data)


async def workspace_list(settings: Settings, args: argparse.Namespace) -> Result:
    async with connect(settings) as conn:
        rows = [dict(row) for row in await admin.list_workspaces(conn)]
    lines = [
        f"{r['id']}  api_access={'on' if r['api_access'] else 'off'}  {r['name']}" for r in rows
    ]
    return Result("\n".join(lines) or "no workspaces", rows)


async def workspace_set_api_access(settings: Settings, args: argparse.Namespace) -> Result:
    workspace_id = parse_uuid(args.id, "workspace")
    async with connect(settings) as conn:
        if not await admin.set_api_access(conn, workspace_id, args.state == "on"):
            raise UsageError(f"no workspace {workspace_id}")
    data = {"id": str(workspace_id), "api_access": args.state == "on"}
    return Result(f"api access {args.state} for workspace {workspace_id}", data)


async def key_create(settings: Settings, args: argparse.Namespace) -> Result:
    workspace_id = parse_uuid(args.workspace, "workspace")
    expires_at = None
    if args.expires_in is not None:
        if args.expires_in <= 0:
            raise UsageError("--expires-in must be a positive number of seconds")
        expires_at = shifted(timedelta(0), args.expires_in, f"--expires-in {args.expires_in}")
    async with connect(settings) as conn:
        if not await admin.workspace_exists(conn, workspace_id):
            raise UsageError(f"no workspace {workspace_id}")
        key = await admin.create_key(
            conn, workspace_id, scope=args.scope, name=args.name, expires_at=expires_at
        )
    data = _new_key_data(key)
    human = f"created {key.scope} key {key.id}\n{key.token}\n(shown once: store it now)"
    return Result(human, data)


def _new_key_data(key: admin.NewKey) -> dict[str, Any]:
    """What `key create --json` prints, and `key rotate --json` of the successor."""
    return {
        "id": str(key.id),
        "token": key.token,
        "prefix": key.prefix,
        "scope": key.scope,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
    }


async def key_list(settings: Settings, args: argparse.Namespace) -> Result:
    workspace_id = parse_uuid(args.workspace, "workspace")
    async with connect(settings) as conn:
        rows = [dict(row) for row in await admin.list_keys(conn, workspace_id)]
    now = datetime.now(UTC)
    for row in rows:
        row["status"] = (
            "revoked"
            if row["revoked_at"]
            else "expired"
            if row["expires_at"] and row["expires_at"] <= now
            else "active"
        )
    lines = [
        f"{r['id']}  {r['prefix']}…  {r['scope']:<5}  {r['status']:<7}  "
        f"last used {_minute(r['last_used_at'])}  {_rotation_link(r)}{r['name']}"
        for r in rows
    ]
    return Result("\n".join(lines) or "no keys", rows)


def _rotation_link(row: dict[str, Any]) -> str:
    """Where the key stands in a rotation, for the human listing ("" for most keys)."""
    link = f"rotated from {row['rotated_from']}  " if row["rotated_from"] else ""
    if row["replaced_by"]:
        link += f"replaced by {row['replaced_by']} (overlap ends {_second(row['expires_at'])})  "
    return link


def _minute(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if moment else "never"


def _second(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def key_revoke(settings: Settings, args: argparse.Namespace) -> Result:
    key_id = parse_uuid(args.key_id, "key")
    async with connect(settings) as conn:
        revoked = await admin.revoke_key(conn, key_id)
    if not revoked:
        raise UsageError(f"no active key {key_id}")
    return Result(f"revoked key {key_id}", {"id": str(key_id), "revoked": True})


async def key_rotate(settings: Settings, args: argparse.Namespace) -> Result:
    key_id = parse_uuid(args.key_id, "key")
    overlap = parse_overlap(args.overlap)
    async with connect(settings) as conn:
        rotation = await admin.rotate_key(conn, key_id, overlap)
    successor = rotation.successor
    data = {
        **_new_key_data(successor),
        "rotated_from": str(key_id),
        "overlap_ends_at": rotation.overlap_ends_at.isoformat(),
    }
    human = (
        f"rotated key {key_id} into {successor.scope} key {successor.id}\n{successor.token}\n"
        f"(shown once: store it now)\nkey {key_id} stops working at "
        f"{_second(rotation.overlap_ends_at)}"
    )
    return Result(human, data)


def _filename(filename: str) -> str:
    # Checked before any upload: refused by the database after it, the object would stay
    # in the bucket with no row, where `purge` never looks.
    if not is_storable_filename(filename):
        raise UsageError(
            f"the filename must be 1 to {MAX_FILENAME_CHARS:,} characters, none of them a "
            "control character"
        )
    return filename


def _bucket(bucket: str) -> str:
    if not is_storable_bucket(bucket):
        raise UsageError(f"a bucket's name is {BUCKET_RULE}")
    return bucket


def _content_type(value: str | None, filename: str) -> str:
    content_type = value or mimetypes.guess_type(filename)[0] or DEFAULT_CONTENT_TYPE
    if not is_media_type(content_type):
        raise UsageError(f"{content_type!r} is not a media type")
    return content_type


async def attachment_add(settings: Settings, args: argparse.Namespace) -> Result:
    workspace_id = parse_uuid(args.workspace, "workspace")
    if not 1 <= args.parallel <= MAX_PARALLEL_PARTS:
        raise UsageError(f"--parallel must be between 1 and {MAX_PARALLEL_PARTS}")
    path = Path(args.path)
    if not path.is_file():  # noqa: ASYNC240 - one stat before any I/O starts
        raise UsageError(f"{path} is not a readable file")
    filename = _filename(args.filename or path.name)
    content_type = _content_type(args.content_type, filename)
    bucket = _bucket(args.bucket or settings.s3_default_bucket)
    attachment_id = uuid.uuid4()
    object_key = f"{workspace_id}/{attachment_id}"
    async with connect(settings) as conn:
        if not await admin.workspace_exists(conn, workspace_id):
            raise UsageError(f"no workspace {workspace_id}")
        progress = TerminalProgress(path.stat().st_size)  # noqa: ASYNC240 - one stat
        # A connection for each part in flight, or parts would queue for one.
        async with internal_client(settings, connections=args.parallel) as s3:
            uploaded = await upload_file(
                s3, bucket, object_key, path, content_type, progress, args.parallel
            )
        await admin.register_attachment(
            conn,
            workspace_id,
            bucket=bucket,
            object_key=object_key,
            filename=filename,
            content_type=content_type,
            size_bytes=uploaded.size,
            attachment_id=attachment_id,
            sha256=bytes.fromhex(uploaded.sha256_hex),
        )
    data = _attachment_data(
        attachment_id, workspace_id, bucket, object_key, filename, content_type, uploaded.size
    )
    data["sha256"] = uploaded.sha256_hex
    human = f"added attachment {attachment_id} ({filename}, {uploaded.size} bytes)"
    return Result(f"{human}\nsha256 {uploaded.sha256_hex}", data)


async def attachment_register(settings: Settings, args: argparse.Namespace) -> Result:
    workspace_id = parse_uuid(args.workspace, "workspace")
    content_type = _content_type(args.content_type, _filename(args.filename))
    _bucket(args.bucket)
    if not is_reachable_object_key(args.key):
        raise UsageError(f"an object key is {OBJECT_KEY_RULE}")
    if args.size is not None and args.size < 0:
        raise UsageError("--size must not be negative")
    async with connect(settings) as conn:
        if not await admin.workspace_exists(conn, workspace_id):
            raise UsageError(f"no workspace {workspace_id}")
        attachment_id = await admin.register_attachment(
            conn,
            workspace_id,
            bucket=args.bucket,
            object_key=args.key,
            filename=args.filename,
            content_type=content_type,
            size_bytes=args.size,
        )
    data = _attachment_data(
        attachment_id, workspace_id, args.bucket, args.key, args.filename, content_type, args.size
    )
    return Result(f"registered attachment {attachment_id} ({args.filename})", data)


def _attachment_data(
    attachment_id: uuid.UUID,
    workspace_id: uuid.UUID,
    bucket: str,
    key: str,
    filename: str,
    content_type: str,
    size: int | None,
) -> dict[str, Any]:
    return {
        "id": str(attachment_id),
        "workspace_id": str(workspace_id),
        "bucket": bucket,
        "key": key,
        "filename": filename,
        "content_type": content_type,
        "size_bytes": size,
    }


async def attachment_delete(settings: Settings, args: argparse.Namespace) -> Result:
    attachment_id = parse_uuid(args.id, "attachment")
    async with connect(settings) as conn:
        if not await admin.delete_attachment(conn, attachment_id):
            raise UsageError(f"no live attachment {attachment_id}")
    return Result(
        f"deleted attachment {attachment_id}", {"id": str(attachment_id), "deleted": True}
    )


SINCE_UNITS = {"m": 60, "h": 3600, "d": 86400}


def relative_age(value: str, units: dict[str, int] = SINCE_UNITS) -> timedelta | None:
    """`30m`, `12h`, `7d` (a number and one of `units`) as a duration; None for anything
    else, a number too large for a duration included."""
    unit = units.get(value[-1:])
    number = value[:-1]
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if unit and number.isascii() and number.isdigit():
        try:
            return timedelta(seconds=int(number) * unit)
        except OverflowError:
            return None
    return None


def shifted(age: timedelta, ahead_seconds: int, option: str) -> datetime:
    """Now, less `age` and plus `ahead_seconds`; a moment past what a date can hold is
    the option's one-line error, not a traceback."""
    try:
        return datetime.now(UTC) - age + timedelta(seconds=ahead_seconds)
    except OverflowError:
        raise UsageError(f"{option}: too far from now") from None


def parse_since(value: str) -> datetime:
    """`30m`, `12h`, `7d` ago, or an ISO 8601 moment (UTC unless it says otherwise)."""
    if (age := relative_age(value)) is not None:
        return shifted(age, 0, f"--since {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--since {value!r}: use 30m, 12h, 7d or an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def audit(settings: Settings, args: argparse.Namespace) -> Result:
    workspace_id = parse_uuid(args.workspace, "workspace")
    attachment_id = parse_uuid(args.attachment, "attachment") if args.attachment else None
    since = parse_since(args.since) if args.since else datetime.now(UTC) - timedelta(days=1)
    async with connect(settings) as conn:
        entries = await admin.audit_entries(conn, workspace_id, since, attachment_id, args.limit)
    rows = [dict(row) for row in entries]
    lines = [
        f"{r['at']:%Y-%m-%d %H:%M:%S}  {r['key_prefix']}…  {r['method']:<4}  {r['status']}  "
        f"{r['outcome']:<18}  {r['attachment_id'] or '-'}  {r['client_address'] or '-'}  "
        f"{r['user_agent'] or ''}"
        for r in rows
    ]
    return Result("\n".join(lines) or "no downloads recorded", rows)


# An upload's URL works this long: a row purged sooner could still get its object after,
# and that object no row would name.
MIN_PURGE_AGE = timedelta(seconds=UPLOAD_URL_SECONDS)


def parse_age(value: str) -> timedelta:
    """`90m`, `12h`, `30d`: an age, not a moment; at least MIN_PURGE_AGE."""
    age = relative_age(value)
    if age is None:
        raise UsageError(f"--older-than {value!r}: use minutes, hours or days (90m, 12h, 30d)")
    if age < MIN_PURGE_AGE:
        minutes = MIN_PURGE_AGE // timedelta(minutes=1)
        raise UsageError(
            f"--older-than {value!r}: at least {minutes}m, as long as an upload's URL works"
        )
    return age


# An overlap is a window for clients to switch tokens, not a second life for the key.
MAX_OVERLAP = timedelta(days=365)
OVERLAP_UNITS = {"s": 1, **SINCE_UNITS}


def parse_overlap(value: str) -> timedelta:
    """`90s`, `30m`, `24h`, `7d`, or `0` (the old key stops at once), at most 365d."""
    overlap = timedelta(0) if value == "0" else relative_age(value, OVERLAP_UNITS)
    if overlap is None or overlap > MAX_OVERLAP:
        raise UsageError(
            f"--overlap {value!r}: use seconds, minutes, hours or days (90s, 30m, 24h, 7d),"
            " 0 for none, at most 365d"
        )
    return overlap


async def purge(settings: Settings, args: argparse.Namespace) -> Result:
    cutoff = shifted(parse_age(args.older_than), 0, f"--older-than {args.older_than!r}")
    async with connect(settings) as conn:
        if args.dry_run:
            count = await purging.count_purgeable(conn, cutoff)
            return Result(f"{count} attachments would be purged", {"would_purge": count})
        async with internal_client(settings) as s3:
            report = await purging.purge(conn, s3, cutoff)
    data = {
        "purged": report.rows,
        "objects_deleted": report.objects,
        "shared_objects_kept": report.shared_objects_kept,
    }
    human = (
        f"purged {report.rows} attachments, deleted {report.objects} objects"
        f" (kept {report.shared_objects_kept} still named by other attachments)"
    )
    return Result(human, data)


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Any]] = {
    "migrate": migrate,
    "serve": serve,
    "dev": dev,
    "cluster": cluster,
    "seed": seed,
    "healthcheck": healthcheck,
    "workspace create": workspace_create,
    "workspace list": workspace_list,
    "workspace set-api-access": workspace_set_api_access,
    "key create": key_create,
    "key list": key_list,
    "key revoke": key_revoke,
    "key rotate": key_rotate,
    "attachment add": attachment_add,
    "attachment register": attachment_register,
    "attachment delete": attachment_delete,
    "audit": audit,
    "purge": purge,
}
