"""`attachments-gateway serve` as a real process: logs, workers, health check, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from service.devstack.ports import free_port
from service.server.processes import RESTARTS_ALLOWED
from tests.support.environment import NO_CACHES
from tests.support.processes import Gateway
from tests.support.proxy import postgres_proxy
from tests.support.secrets_in_logs import SECRETS_IN_LOGS
from tests.support.waiting import eventually


async def get(url: str, token: str | None = None, method: str = "GET") -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, headers=headers, allow_redirects=False) as r:
            await r.read()
            return r.status


async def answers(url: str, status: int) -> bool:
    try:
        return await get(url) == status
    except aiohttp.ClientConnectionError:
        return False


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
            # Served from a cache, the second download would be over before the signal.
            **NO_CACHES,
        }
        gateway = Gateway(env, log=tmp_path / "gateway.log")
        try:
            await gateway.wait_ready()
            url = f"{gateway.url}/api/v1/attachments/{attachment_id}/download"
            assert await get(url, tenant.read_token) == 307  # the pool has its connection
            proxy.delay = 0.4  # each query now takes at least 0.8 s
            in_flight = asyncio.create_task(get(url, tenant.read_token))
            await asyncio.sleep(0.3)
            assert not in_flight.done()
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


@pytest.mark.slow
async def test_a_worker_that_dies_is_logged_and_replaced(gateway_env, tmp_path):
    """An OOM kill of one worker left N-1 serving, unnoticed, and the parent's exit status
    said nothing of it."""
    gateway = Gateway(gateway_env, "--workers", "2", log=tmp_path / "gateway.log")
    try:
        await gateway.wait_ready()
        workers = await _workers_of(gateway, 2)
        os.kill(workers[0], signal.SIGKILL)
        replaced = await _workers_of(gateway, 2, without=workers[0])
        assert workers[1] in replaced
        # Served on. Once in a full run the first connection after the replacement was
        # refused while worker[1] listened (cause not found; not seen again in a dozen
        # runs), so a refused connection is tried again, as a client would.
        await eventually(lambda: answers(gateway.url + "/healthz", 200), timeout=5)
    finally:
        assert gateway.stop() == 0  # the replaced worker's end was logged, not an error now
    ended = [line for line in gateway.json_lines() if line.get("level") == "error"]
    assert [line["message"] for line in ended] == [
        f"worker {workers[0]} ended with exit status 137"
    ]


@pytest.mark.slow
def test_workers_that_keep_ending_stop_the_parent_non_zero(gateway_env, tmp_path):
    """Every worker fails to start (its port is taken by a socket that does not share it):
    replaced a few times, then the parent gives up with an error, not a spin."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = Gateway(gateway_env, "--workers", "2", log=tmp_path / "gw.log", port=port)
        try:
            exit_code = gateway.process.wait(120)
        finally:
            if gateway.process.poll() is None:
                gateway.process.kill()
    assert exit_code != 0
    messages = [line["message"] for line in gateway.json_lines() if "message" in line]
    assert messages.count("workers keep ending: stopping the others") == 1
    assert sum(message.startswith("worker ") for message in messages) == RESTARTS_ALLOWED + 1


async def _workers_of(gateway: Gateway, count: int, without: int | None = None) -> list[int]:
    """The parent's `count` serving workers (not multiprocessing's resource tracker)."""
    deadline = time.monotonic() + 30
    while True:
        workers = [
            pid
            for pid in _children(gateway.process.pid)
            if pid != without and not _is_zombie(pid) and _is_worker(pid)
        ]
        if len(workers) == count:
            return sorted(workers)
        assert time.monotonic() < deadline, (workers, gateway.log.read_text())
        await asyncio.sleep(0.1)


def _is_worker(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"resource_tracker" not in command


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
            fields = _status_fields(status)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def _status_fields(status: Path) -> dict[str, str]:
    """/proc/<pid>/status as its fields."""
    lines = status.read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


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


class FirstProcess:
    """`serve` as the first process (PID 1) of a PID namespace of its own, as in a
    container: the kernel drops any signal it has no handler for."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "service", "serve", "--port", str(self.port)]
        with log.open("wb") as output:
            self.unshare = subprocess.Popen(
                ["unshare", "--pid", "--fork", *command],
                env=env,
                cwd=log.parent,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            self.pid = eventually_python_child(self.unshare.pid)
        except AssertionError:
            self.unshare.kill()
            self.unshare.wait()
            raise

    def __enter__(self) -> FirstProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Whatever the test did: nothing left running, holding the port."""
        if self.unshare.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)  # the only signal PID 1 cannot ignore
            self.unshare.wait(10)

    def catches_sigterm(self) -> bool:
        caught = int(_status_fields(Path(f"/proc/{self.pid}/status"))["SigCgt"], 16)
        return bool(caught & (1 << (signal.SIGTERM - 1)))

    def terminate(self) -> tuple[int, float]:
        """SIGTERM from outside the namespace, as `docker stop` sends it: the exit status
        (unshare passes on its child's) and how long it took."""
        started = time.monotonic()
        os.kill(self.pid, signal.SIGTERM)
        try:
            status = self.unshare.wait(10)
        except subprocess.TimeoutExpired:
            return -1, time.monotonic() - started  # (SIGKILLed on the way out)
        return status, time.monotonic() - started


def eventually_python_child(pid: int) -> int:
    """The pid of the Python that `unshare --fork` (pid) runs, once it runs Python."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for child in _children(pid):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/exe").resolve() == Path(sys.executable).resolve():
                    return child
        time.sleep(0.001)
    raise AssertionError("unshare did not start Python")


def test_sigterm_while_starting_as_pid_1_ends_it(gateway_env, tmp_path):
    """Sent as soon as the process can take it, during its imports and long before the
    server's own handlers exist (which would make it a graceful stop, exit 0): it ends at
    once, 143 as for any process SIGTERM ends. (It was lost before: the container ran on
    until its SIGKILL.)"""
    with FirstProcess(gateway_env, tmp_path / "gw.log") as first:
        deadline = time.monotonic() + 10
        while not first.catches_sigterm():
            assert time.monotonic() < deadline, (tmp_path / "gw.log").read_text()
            time.sleep(0.001)
        status, took = first.terminate()
    assert status == 143, (tmp_path / "gw.log").read_text()
    assert took < 2


async def test_sigterm_once_serving_as_pid_1_is_the_graceful_stop(gateway_env, tmp_path):
    """The early handler is only until the server's: once it serves, SIGTERM is the
    graceful shutdown, exit 0."""
    with FirstProcess(gateway_env, tmp_path / "gw.log") as first:
        await eventually(lambda: answers(first.url + "/healthz", 200), timeout=30)
        status, took = first.terminate()
    assert status == 0, (tmp_path / "gw.log").read_text()
    assert took < 12
