"""How long a revoked key keeps working on each of several replicas.

`python -m bench.revocation [--replicas 3] [--trials 30]`: an embedded Postgres behind
PgBouncer (transaction mode), a Redis for the shared limits, N gateway processes (each
LISTENs on its direct connection). Per trial: a new key, cached on every replica by one
download each, then revoked on a direct connection; every replica is polled every
millisecond until it refuses the key. Prints, over all replicas and trials, the time from
the revoking COMMIT to each replica's first 401: median, 95th percentile and maximum.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg

from service.core.settings import DEFAULT_MIGRATIONS_DIR
from service.data.admin import create_key, create_workspace, register_attachment, revoke_key
from service.data.migrations import apply_migrations
from service.devstack.pgbouncer import run_pgbouncer
from service.devstack.ports import free_port
from service.devstack.redis_server import run_redis

from .run import start_process, stop_process

HERE = Path(__file__).resolve().parent


def gateway_env(bouncer_url: str, direct_url: str, redis_url: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(HERE.parent),
        "HOST": "127.0.0.1",
        "DATABASE_URL": bouncer_url,
        "DATABASE_DIRECT_URL": direct_url,
        "DB_STATEMENT_CACHE_SIZE": "0",
        "RATE_LIMIT_BACKEND": "redis",
        "REDIS_URL": redis_url,
        # URLs are signed, never fetched: no S3 needs to listen.
        "S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "S3_REGION": "us-east-1",
        "S3_PROBE_INTERVAL_SECONDS": "0",
        "AWS_ACCESS_KEY_ID": "AKIAREVOCATION000001",
        "AWS_SECRET_ACCESS_KEY": "revocation-bench-secret-not-a-real-one",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "LOG_LEVEL": "WARNING",
        # Every trial ends in refusals from this one address: with the failed-auth limit
        # on, a later trial's first 401 waits for that bucket to refill (429 meanwhile),
        # which measured the limit (a median near 1 s), not the revocation.
        "FAILED_AUTH_PER_ADDRESS": "0",
    }


def start_gateways(ports: list[int], env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    return [
        start_process([sys.executable, "-m", "service", "serve", "--port", str(port)], env)
        for port in ports
    ]


async def wait_until_caching(session: aiohttp.ClientSession, url: str) -> None:
    """Until the replica's /metrics says its invalidation listener hears notifications."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            async with session.get(url + "/metrics") as response:
                if "gateway_cache_live 1.0" in await response.text():
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never switched its caches on")


async def status(session: aiohttp.ClientSession, url: str, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.get(url, headers=headers, allow_redirects=False) as response:
        await response.read()
        return response.status


async def trial(
    conn: asyncpg.Connection, session: aiohttp.ClientSession, urls: list[str]
) -> list[float]:
    workspace_id = await create_workspace(conn, "revocation bench")
    key = await create_key(conn, workspace_id)
    attachment_id = await register_attachment(
        conn, workspace_id, bucket="attachments", object_key=f"o/{uuid.uuid4()}", filename="f"
    )
    paths = [f"{url}/api/v1/attachments/{attachment_id}/download" for url in urls]
    for path in paths:  # the key is cached on every replica now
        deadline = time.monotonic() + 10  # (a replica's first database connections)
        while (answer := await status(session, path, key.token)) != 307:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path} answers {answer}, not 307")
            await asyncio.sleep(0.1)
    await revoke_key(conn, key.id)
    revoked_at = time.monotonic()
    latencies: dict[str, float] = {}
    while len(latencies) < len(paths):
        for path in paths:
            if path not in latencies and await status(session, path, key.token) == 401:
                latencies[path] = time.monotonic() - revoked_at
        if time.monotonic() - revoked_at > 30:
            raise RuntimeError("a replica still served the key 30 s after its revocation")
        await asyncio.sleep(0.001)
    return list(latencies.values())


async def measure(replicas: int, trials: int, workdir: Path) -> list[float]:
    import pgserver

    server = pgserver.get_server(workdir / "pg", cleanup_mode="delete")  # type: ignore[attr-defined]
    direct_url = str(server.get_uri())
    processes: list[subprocess.Popen[bytes]] = []
    try:
        await apply_migrations(direct_url, DEFAULT_MIGRATIONS_DIR)
        with (
            run_pgbouncer(direct_url, workdir / "pgbouncer") as bouncer_url,
            run_redis(workdir / "redis") as redis,
        ):
            env = gateway_env(bouncer_url, direct_url, redis.url)
            ports = [free_port() for _ in range(replicas)]
            processes += start_gateways(ports, env)
            urls = [f"http://127.0.0.1:{port}" for port in ports]
            conn = await asyncpg.connect(direct_url)
            try:
                async with aiohttp.ClientSession() as session:
                    for url in urls:
                        await wait_until_caching(session, url)
                    latencies: list[float] = []
                    for _ in range(trials):
                        latencies += await trial(conn, session, urls)
                    return latencies
            finally:
                await conn.close()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            stop_process(process)
        server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    workdir = Path(tempfile.mkdtemp(prefix="revocation-"))
    try:
        latencies = sorted(asyncio.run(measure(args.replicas, args.trials, workdir)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
    print(
        f"{args.replicas} replicas, {args.trials} revocations, {len(latencies)} refusals: "
        f"median {statistics.median(latencies) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
