"""Cross-instance cache invalidation: one dedicated connection LISTENs for row changes.

A pooled connection would lose its listener when recycled (asyncpg#283), so this one is
our own, on DATABASE_DIRECT_URL. While it is down, the caches are flushed and bypassed;
when it is back, they are flushed again, since notifications sent meanwhile are lost. A
periodic ping notices a silently dead TCP connection instead of waiting for the kernel's
timeout (asyncpg#519).

Delivery is checked, not assumed: a LISTEN through a transaction pooler (PgBouncer's
transaction mode) connects and then hears nothing (pgbouncer/pgbouncer#655). So with
every ping the listener NOTIFYs itself through the request pool, the path every other
change takes; the caches are on only while that probe comes back within PROBE_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from dataclasses import dataclass

import asyncpg

from ..core.errors import DatabaseUnavailable
from ..core.settings import Settings
from .caches import HotPathCaches
from .pool import Database

log = logging.getLogger(__name__)

CHANNEL = "gateway_invalidate"
APPLICATION_NAME = "attachments-gateway invalidation listener"
PING_INTERVAL = 2.0
PING_TIMEOUT = 2.0
MAX_BACKOFF = 5.0
# How long the listener's own probe may take to come back before delivery counts as broken.
PROBE_TIMEOUT = 2.0
PROBE_PREFIX = "probe:"
SEND_PROBE = "SELECT pg_notify($1, $2)"


@dataclass(slots=True)
class ListenerStatus:
    """What the listener knows, for readiness and metrics."""

    connected: bool = False
    # Its own probe came back lately: notifications reach this process.
    delivering: bool = False
    # A probe was sent and did not come back: why the caches are off.
    undelivered: bool = False


def apply_notification(caches: HotPathCaches, payload: str) -> None:
    """A row changed somewhere (migrations' triggers send `key:<digest hex>`,
    `attachment:<id>` or `workspace:<id>`): forget what it makes stale."""
    kind, _, value = payload.partition(":")
    try:
        if kind == "key":
            caches.forget_key(bytes.fromhex(value))
        elif kind == "attachment":
            caches.forget_attachment(str(uuid.UUID(value)))
        else:  # a workspace (its entitlement) or anything unknown: forget all keys
            caches.forget_keys()
    except ValueError:
        caches.flush()


def error_name(exc: Exception) -> str:
    """What to log of a failure: a server's refusal by its SQLSTATE (class 28, a login
    refused, is "InvalidAuthorization..." by name, which reads as a leaked header), other
    errors by class; never their text, which may hold the DSN."""
    if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate:
        return f"SQLSTATE {exc.sqlstate}"
    return type(exc).__name__


async def listen(
    settings: Settings, caches: HotPathCaches, probe_path: Database, status: ListenerStatus
) -> None:
    """Keep a LISTEN connection up for as long as the app runs."""
    backoff = 0.1
    while True:
        try:
            conn = await asyncpg.connect(
                settings.direct_database_url,
                timeout=settings.db_connect_timeout,
                server_settings={"application_name": APPLICATION_NAME},
            )
        # Anything, not only an outage: a role or password being rotated, a standby after a
        # failover. The listener must outlive it, or the caches stay off until a restart.
        except Exception as exc:  # logged, and reconnected as after an outage
            log.warning("invalidation listener cannot connect: %s", error_name(exc))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            continue
        connected_at = time.monotonic()
        await _listen_on(conn, caches, probe_path, status)
        log.info("caches off until the invalidation listener reconnects")
        # A session that ends at once (LISTEN refused, as on a standby in recovery) would
        # otherwise reconnect at full speed: only one that lasted starts afresh.
        if time.monotonic() - connected_at >= PING_INTERVAL:
            backoff = 0.1
        else:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)


async def _listen_on(
    conn: asyncpg.Connection,
    caches: HotPathCaches,
    probe_path: Database,
    status: ListenerStatus,
) -> None:
    """Serve one connection until it is lost; the caches are on only meanwhile, and only
    while the listener hears its own probes."""
    lost = asyncio.Event()
    probe = PROBE_PREFIX + secrets.token_hex(8)
    heard = asyncio.Event()

    def on_lost(_conn: object) -> None:
        caches.live = False
        caches.flush()
        status.connected = status.delivering = False
        lost.set()
        heard.set()  # (wakes a wait for the probe: there is nothing left to hear)

    def on_notification(*args: object) -> None:
        payload = str(args[3])
        if payload == probe:
            heard.set()
        elif not payload.startswith(PROBE_PREFIX):  # another instance's probe: not a change
            apply_notification(caches, payload)

    conn.add_termination_listener(on_lost)
    try:
        await conn.add_listener(CHANNEL, on_notification)
        status.connected = True
        while not lost.is_set():
            heard.clear()
            if await _send(probe_path, probe):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(heard.wait(), PROBE_TIMEOUT)
                if lost.is_set():
                    break
                if heard.is_set():
                    _delivering(caches, status)
                else:
                    _undelivered(caches, status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), PING_INTERVAL)
            if not lost.is_set():
                await conn.fetchval("SELECT 1", timeout=PING_TIMEOUT)
    except Exception as exc:  # logged, and reconnected as after an outage
        log.warning("invalidation listener lost: %s", error_name(exc))
    finally:
        on_lost(conn)
        conn.terminate()


async def _send(probe_path: Database, probe: str) -> bool:
    """NOTIFY the probe the way every change is NOTIFYed; False if that path is down now
    (then delivery cannot be judged, and nothing changes)."""
    try:
        await probe_path.fetch(SEND_PROBE, CHANNEL, probe)
    except DatabaseUnavailable:
        return False
    return True


def _delivering(caches: HotPathCaches, status: ListenerStatus) -> None:
    status.delivering, status.undelivered = True, False
    if not caches.live:
        caches.flush()  # whatever changed while nobody heard it
        caches.live = True
        log.info("invalidation listener connected and hearing notifications; caches on")


def _undelivered(caches: HotPathCaches, status: ListenerStatus) -> None:
    was_delivering = status.delivering or not status.undelivered
    status.delivering, status.undelivered = False, True
    if caches.live:
        caches.live = False
        caches.flush()
    if was_delivering:
        log.warning(
            "invalidation notifications do not arrive (the listener's own probe did not "
            "come back within %.0f s): caches off. Likely cause: DATABASE_DIRECT_URL (or "
            "DATABASE_URL) goes through a transaction pooler such as PgBouncer, where LISTEN "
            "hears nothing; point DATABASE_DIRECT_URL at Postgres itself",
            PROBE_TIMEOUT,
        )
