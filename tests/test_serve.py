"""`attachments-gateway serve` as a real process: logs, workers, health check, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from service.devstack.ports import free_port
from tests.support.processes import Gateway
from tests.support.proxy import postgres_proxy
from tests.support.secrets_in_logs import SECRETS_IN_LOGS


async def get(url: str, token: str | None = None, method: str = "GET") -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, headers=headers, allow_redirects=False) as r:
            await r.read()
            return r.status


async def test_serve_logs_json_lines_without_secrets_and_stops_on_sigterm(
    gateway_env, make_tenant, make_attachment, tmp_path
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    gateway = Gateway(gateway_env, log=tmp_path / "gateway.log")
    try:
        await gateway.wait_ready()
        path = f"/api/v1/attachments/{attachment_id}/download"
        assert await get(gateway.url + path, tenant.read_token) == 307
        assert await get(gateway.url + path + f"?token={tenant.read_token}") == 401
    finally:
        started = time.monotonic()
        assert gateway.stop() == 0
    assert time.monotonic() - started < 12
    lines = gateway.json_lines()  # every line is one JSON object
    requests = [line for line in lines if line.get("message") == "request"]
    download = next(line for line in requests if line.get("status") == 307)
    assert download["path"] == path and download["method"] == "GET"
    assert download["workspace_id"] == str(tenant.workspace_id)
    assert download["key_prefix"] == tenant.read_token[:12]
    assert {"time", "level", "request_id", "duration_ms"} <= set(download)
    assert any(line.get("message") == "stopped" for line in lines)
    text = gateway.log.read_text()
    assert not SECRETS_IN_LOGS.search(text), text


@pytest.mark.slow
async def test_in_flight_requests_finish_after_sigterm(
    gateway_env, database_url, make_tenant, make_attachment, tmp_path
):
    """The database answers slowly (a proxy holds every packet); SIGTERM arrives while a
    download is being decided; the answer still comes, then the process exits 0."""
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    proxy, slow_dsn = postgres_proxy(database_url)
    async with proxy:
        env = {
            **gateway_env,
            "DATABASE_URL": slow_dsn.format(port=proxy.port),
            "DB_CONNECT_TIMEOUT": "10",
            "DB_ACQUIRE_TIMEOUT": "10",
            "DB_STATEMENT_TIMEOUT": "10",
        }
        gateway = Gateway(env, log=tmp_path / "gateway.log")
        try:
            await gateway.wait_ready()
            url = f"{gateway.url}/api/v1/attachments/{attachment_id}/download"
            assert await get(url, tenant.read_token) == 307  # the pool has its connection
            proxy.delay = 0.4  # each query now takes at least 0.8 s
            in_flight = asyncio.create_task(get(url, tenant.read_token))
            await asyncio.sleep(0.3)
            gateway.process.send_signal(signal.SIGTERM)
            assert await in_flight == 307
            assert await asyncio.to_thread(gateway.process.wait, 15) == 0
        finally:
            proxy.delay = 0
            gateway.stop()


@pytest.mark.slow
async def test_workers_share_the_port_and_all_stop(gateway_env, make_tenant, tmp_path):
    tenant = await make_tenant()
    gateway = Gateway(gateway_env, "--workers", "2", log=tmp_path / "gateway.log")
    try:
        await gateway.wait_ready()
        children = _children(gateway.process.pid)
        assert len(children) >= 2
        statuses = await asyncio.gather(
            *(
                get(
                    f"{gateway.url}/api/v1/attachments/{os.urandom(2).hex()}/download",
                    tenant.read_token,
                )
                for _ in range(20)
            )
        )
        assert set(statuses) == {404}
    finally:
        assert gateway.stop() == 0
    # A worker (or multiprocessing's resource tracker) may take a moment longer than the
    # parent to finish exiting; none may still be running after that.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(_gone(pid) for pid in children):
        time.sleep(0.05)
    assert all(_gone(pid) for pid in children)


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


@pytest.mark.slow
def test_healthcheck_command(gateway_env, tmp_path):
    command = [sys.executable, "-m", "service", "healthcheck"]
    closed = {**gateway_env, "PORT": str(free_port())}
    assert subprocess.run(command, env=closed, timeout=30).returncode == 1
    gateway = Gateway(gateway_env, log=tmp_path / "gateway.log")
    try:
        asyncio.run(gateway.wait_ready())
        env = {**gateway_env, "PORT": str(gateway.port)}
        assert subprocess.run(command, env=env, timeout=30).returncode == 0
    finally:
        gateway.stop()


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def _is_zombie(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


async def test_a_second_signal_does_not_cut_the_shutdown_short(
    gateway_env, database_url, conn, make_tenant, make_attachment, tmp_path
):
    """Ctrl-C on `serve --workers N` signals every worker twice (the terminal's SIGINT to
    the process group, and the parent's forward), as systemd's default KillMode does with
    SIGTERM: a signal during the shutdown under way does not cut it short, and every
    queued audit row is still written."""
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    proxy, dsn = postgres_proxy(database_url)
    async with proxy:
        env = {
            **gateway_env,
            "DATABASE_URL": dsn.format(port=proxy.port),
            "DATABASE_DIRECT_URL": database_url,
            # No timed flush before the signal: every row is still queued when it comes.
            "AUDIT_FLUSH_SECONDS": "600",
        }
        gateway = Gateway(env, log=tmp_path / "gw.log")
        try:
            await gateway.wait_ready()
            path = f"/api/v1/attachments/{attachment_id}/download"
            for _ in range(5):
                assert await get(gateway.url + path, tenant.read_token) == 307
            proxy.delay = 0.15  # each round trip now takes 0.3 s: the final flush, several
            gateway.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)  # while it drains and flushes
            gateway.process.send_signal(signal.SIGINT)
            await asyncio.sleep(0.1)
            gateway.process.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(gateway.process.wait, 20)
        finally:
            gateway.stop()
    assert exit_code == 0, gateway.log.read_text()
    written = await conn.fetchval(
        "SELECT count(*) FROM download_audit WHERE workspace_id = $1", tenant.workspace_id
    )
    assert written == 5, gateway.log.read_text()
    messages = [line.get("message") for line in gateway.json_lines()]
    assert messages.count("shutting down already: the drain goes on (SIGKILL ends it at once)") == 2
    assert "stopped" in messages
