"""`attachments-gateway dev` from an empty folder with no settings: the README's promise."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from service.devstack.demo import DEMO_BODY
from service.devstack.haproxy import haproxy_available
from service.devstack.pgbouncer import pgbouncer_available
from service.devstack.ports import free_port, port_is_free
from service.devstack.redis_server import redis_available
from tests.support.environment import process_env

pytestmark = pytest.mark.slow  # the whole dev stack from an empty folder, twice

CURL = re.compile(r'curl -L -H "Authorization: Bearer (ixk_\w+)" (http://\S+)')


def start_dev(workdir: Path, port: int, *command: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`attachments-gateway dev` (or `command`, e.g. `cluster`) in `workdir`."""
    log = workdir / f"dev-{time.monotonic_ns()}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", *(command or ("dev",)), "--port", str(port)],
            cwd=workdir,
            env=process_env(HOME=str(workdir)),  # nothing configured, as in the README
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, log


async def wait_for_curl(process: subprocess.Popen[bytes], log: Path) -> re.Match[str]:
    deadline = time.monotonic() + 90
    while True:
        text = log.read_text(errors="replace")
        if (match := CURL.search(text)) and "Ctrl-C stops everything" in text:
            return match
        assert process.poll() is None, text
        assert time.monotonic() < deadline, text
        await asyncio.sleep(0.2)


async def download(url: str, token: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            return response.status, await response.read()


async def assert_pages_may_call_and_read(url: str, token: str) -> None:
    """CORS on both hops: the gateway allows any origin, and the bucket's rule lets a page
    read the object its 307 leads to (a redirected fetch sends `Origin: null`); and the
    API page."""
    preflight = {
        "Origin": "http://127.0.0.1:5173",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    async with aiohttp.ClientSession() as session:
        async with session.options(url, headers=preflight) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "*"
        headers = {"Authorization": f"Bearer {token}", "Origin": preflight["Origin"]}
        async with session.get(url, headers=headers, allow_redirects=False) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            location = URL(response.headers["Location"], encoded=True)
        async with session.get(location, headers={"Origin": "null"}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] in ("*", "null")
        # The API page the banner names, without a key.
        async with session.get(url.split("/api/v1/")[0] + "/api/v1/docs") as response:
            assert response.status == 200 and response.content_type == "text/html"


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    return process.wait(30)


def processes_using(path: Path) -> list[str]:
    """The command lines of the processes that name `path`."""
    return list(pids_using(path).values())


def pids_using(path: Path) -> dict[int, str]:
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in text:
            found[int(cmdline.parent.name)] = text
    return found


@pytest.fixture(autouse=True)
def nothing_left_running(tmp_path: Path) -> Iterator[None]:
    """A test that failed half-way may leave a stack's Postgres or SeaweedFS running (a
    test that passed checked that it left nothing): stopped here, not left for good."""
    yield
    for pid in pids_using(tmp_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_dev_stack_serves_the_demo_file_reuses_it_and_leaves_nothing_behind(tmp_path):
    port = free_port()
    process, log = start_dev(tmp_path, port)
    try:
        first = await wait_for_curl(process, log)
        token, url = first.groups()
        # What the printed curl -L does: follow the 307 to the embedded S3.
        assert await download(url, token) == (200, DEMO_BODY)
        await assert_pages_may_call_and_read(url, token)
    finally:
        assert stop(process) == 0
    assert processes_using(tmp_path / ".dev") == []
    assert (tmp_path / ".dev" / "demo.json").stat().st_mode & 0o777 == 0o600

    process, log = start_dev(tmp_path, port)
    try:
        second = await wait_for_curl(process, log)
        assert second.groups() == first.groups()  # the same key and attachment
        assert await download(url, token) == (200, DEMO_BODY)
    finally:
        assert stop(process) == 0
    assert processes_using(tmp_path / ".dev") == []


async def wait_for_output(process: subprocess.Popen[bytes], log: Path, text: str) -> None:
    deadline = time.monotonic() + 90
    while text not in log.read_text(errors="replace"):
        assert process.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        await asyncio.sleep(0.1)


def ended(process: subprocess.Popen[bytes], log: Path) -> tuple[int, str]:
    code = process.wait(60)
    return code, log.read_text(errors="replace")


async def test_a_stack_killed_while_starting_or_outright_leaves_nothing_in_the_way(tmp_path):
    """SIGTERM (a `kill`) and SIGHUP (a closed terminal) used to end Python at once: SeaweedFS
    and Postgres, in sessions of their own, ran on and held .dev's files, and every later
    start failed. One killed outright (SIGKILL) can clean up nothing: the next start stops
    what it left. And one stack at a time on a folder, on a free port."""
    port = free_port()
    dev = tmp_path / ".dev"
    for sig in (signal.SIGTERM, signal.SIGHUP):
        process, log = start_dev(tmp_path, port)
        await wait_for_output(process, log, "starting embedded S3")
        await asyncio.sleep(0.5)  # Postgres up, SeaweedFS starting
        process.send_signal(sig)
        code, output = ended(process, log)
        assert code in (130, 0), output  # 0: SeaweedFS was up soon enough for the gateway
        assert "Traceback" not in output
        assert processes_using(dev) == []

    first, log = start_dev(tmp_path, port)
    try:
        token, url = (await wait_for_curl(first, log)).groups()
        # A second stack on the same folder, and one on a taken port, stop at once.
        second, second_log = start_dev(tmp_path, free_port())
        code, output = ended(second, second_log)
        assert code == 2 and "is in use by another `dev` or `cluster`" in output, output
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        third, third_log = start_dev(elsewhere, port)
        code, output = ended(third, third_log)
        assert code == 2 and f"port {port} is in use" in output, output
        assert not (elsewhere / ".dev" / "postgres").exists()  # refused before starting
    finally:
        first.kill()  # outright: no cleanup runs
        first.wait()
    assert processes_using(dev) != []  # what it left: SeaweedFS and Postgres

    process, log = start_dev(tmp_path, port)
    try:
        assert (await wait_for_curl(process, log)).groups() == (token, url)
        assert await download(url, token) == (200, DEMO_BODY)
    finally:
        assert stop(process) == 0
    assert processes_using(dev) == []


BALANCED = re.compile(r"round robin over 2 gateways: (\d+), (\d+)")


def pid_serving(port: int) -> int:
    """The gateway process started with `serve --port PORT`."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if f"serve --port {port}" in cmdline.read_bytes().replace(b"\0", b" ").decode():
                return int(cmdline.parent.name)
    raise AssertionError(f"no gateway serves port {port}")


@pytest.mark.skipif(
    not (haproxy_available() and pgbouncer_available() and redis_available()),
    reason="needs Debian's haproxy, pgbouncer and redis-server",
)
async def test_the_cluster_serves_once_every_gateway_is_ready_and_ends_when_one_dies(tmp_path):
    """`make cluster` printed its banner after a fixed second, whether its gateways came up
    or not, and never noticed one that died; on a taken port HAProxy exited and the port's
    other listener answered in its place."""
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        refused, log = start_dev(tmp_path, port, "cluster", "--replicas", "2")
        code, output = ended(refused, log)
    assert code == 2 and f"port {port} is in use" in output, output

    process, log = start_dev(tmp_path, port, "cluster", "--replicas", "2")
    try:
        token, url = (await wait_for_curl(process, log)).groups()
        # The banner comes once every gateway is ready: the first request is served.
        assert await download(url, token) == (200, DEMO_BODY)
        gateway_ports = [int(p) for p in BALANCED.search(log.read_text()).groups()]
        os.kill(pid_serving(gateway_ports[0]), signal.SIGKILL)
        code, output = ended(process, log)
    finally:
        if process.poll() is None:
            stop(process)
    assert code == 2, output
    assert f"the gateway on port {gateway_ports[0]} exited with -9" in output
    assert "Traceback" not in output
    assert processes_using(tmp_path / ".dev") == []
    assert port_is_free(gateway_ports[1])
