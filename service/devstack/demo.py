"""The demo tenant of the dev stack and of docker compose's `seed`, created idempotently.

Tokens are stored nowhere in the database, so the demo's are kept in a local state file
(mode 0600) to print the same ready-to-run curl command on every start. That is for demo
data on a developer's machine only.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg
from botocore.exceptions import ClientError

from ..core.settings import Settings
from ..data.admin import (
    create_key,
    create_workspace,
    key_is_live,
    live_attachment,
    register_attachment,
    workspace_exists,
)
from ..data.pool import connect
from ..storage.client import BUCKET_ALREADY_THERE, internal_client

# The demo bucket lets any page read its objects through their presigned URLs, so a
# browser `fetch` that follows the gateway's 307 can read the bytes (docs/api.md, "From a
# browser"). The URL is still the credential: CORS only lets a page see what it fetched.
BROWSER_CORS = {
    "CORSRules": [
        {
            "AllowedOrigins": ["*"],
            "AllowedMethods": ["GET", "HEAD"],
            "AllowedHeaders": ["*"],
            "ExposeHeaders": ["Content-Disposition", "Content-Length", "Content-Type", "ETag"],
            "MaxAgeSeconds": 7200,
        }
    ]
}

DEMO_FILENAME = "hello-gateway.txt"
DEMO_BODY = b"Hello from attachments-gateway!\nThis file came from S3 through a presigned URL.\n"


class StateFileError(Exception):
    """The state file cannot be read or written: the message says which and why."""


@dataclass(frozen=True, slots=True)
class Demo:
    workspace_id: str
    read_token: str
    write_token: str
    attachment_id: str

    def curl(self, base_url: str) -> str:
        return (
            f'curl -L -H "Authorization: Bearer {self.read_token}" '
            f"{base_url}/api/v1/attachments/{self.attachment_id}/download"
        )


async def ensure_demo(settings: Settings, state_file: Path) -> Demo:
    """Reuse what the state file names and still exists; create whatever is missing.
    A state file that cannot be written is refused before anything is created."""
    state = await asyncio.to_thread(_read_state, state_file)
    await asyncio.to_thread(_check_writable, state_file)
    conn = await connect(settings)
    try:
        workspace_id = await _workspace(conn, state.get("workspace_id"))
        read_token = await _token(conn, workspace_id, "read", state.get("read_token"))
        write_token = await _token(conn, workspace_id, "write", state.get("write_token"))
        attachment_id = await _attachment(conn, settings, workspace_id, state.get("attachment_id"))
    finally:
        await conn.close()
    demo = Demo(str(workspace_id), read_token, write_token, str(attachment_id))
    await asyncio.to_thread(_write_state, state_file, demo)
    return demo


def _read_state(state_file: Path) -> dict[str, str]:
    try:
        if not state_file.exists():
            return {}
        state: dict[str, str] = json.loads(state_file.read_text())
    except OSError as exc:
        raise StateFileError(f"cannot read the state file {state_file}: {exc.strerror}") from None
    except ValueError:
        raise StateFileError(f"the state file {state_file} is not JSON") from None
    return state


def _check_writable(state_file: Path) -> None:
    temporary = state_file.with_suffix(".tmp")
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary.touch(mode=0o600)
        temporary.unlink()
    except OSError as exc:
        raise StateFileError(f"cannot write the state file {state_file}: {exc.strerror}") from None


def _write_state(state_file: Path, demo: Demo) -> None:
    temporary = state_file.with_suffix(".tmp")
    try:
        temporary.write_text(json.dumps(asdict(demo), indent=2))
        os.chmod(temporary, 0o600)
        temporary.replace(state_file)
    except OSError as exc:
        raise StateFileError(f"cannot write the state file {state_file}: {exc.strerror}") from None


async def _workspace(conn: asyncpg.Connection, known: str | None) -> uuid.UUID:
    if known and await workspace_exists(conn, uuid.UUID(known)):
        return uuid.UUID(known)
    return await create_workspace(conn, "demo")


async def _token(
    conn: asyncpg.Connection, workspace_id: uuid.UUID, scope: str, known: str | None
) -> str:
    if known and await key_is_live(conn, known):
        return known
    return (await create_key(conn, workspace_id, scope=scope, name=f"demo {scope} key")).token


async def _attachment(
    conn: asyncpg.Connection, settings: Settings, workspace_id: uuid.UUID, known: str | None
) -> uuid.UUID:
    bucket = settings.s3_default_bucket
    async with internal_client(settings) as s3:
        try:
            await s3.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in BUCKET_ALREADY_THERE:
                raise
        await s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=BROWSER_CORS)
        if known and (row := await live_attachment(conn, uuid.UUID(known), workspace_id)):
            try:
                await s3.head_object(Bucket=row["bucket"], Key=row["object_key"])
                return uuid.UUID(known)
            except ClientError:
                pass  # the object is gone (a wiped S3 volume): upload it again below
        attachment_id = uuid.uuid4()
        key = f"{workspace_id}/{attachment_id}"
        await s3.put_object(Bucket=bucket, Key=key, Body=DEMO_BODY, ContentType="text/plain")
    return await register_attachment(
        conn,
        workspace_id,
        bucket=bucket,
        object_key=key,
        filename=DEMO_FILENAME,
        content_type="text/plain; charset=utf-8",
        size_bytes=len(DEMO_BODY),
        attachment_id=attachment_id,
    )
