"""`attachments-gateway dev` from an empty folder with no settings: the README's promise."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from service.devstack.demo import DEMO_BODY
from service.devstack.ports import free_port
from tests.support.environment import process_env

pytestmark = pytest.mark.slow  # the whole dev stack from an empty folder, twice

CURL = re.compile(r'curl -L -H "Authorization: Bearer (ixk_\w+)" (http://\S+)')


def start_dev(workdir: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    log = workdir / f"dev-{time.monotonic_ns()}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "dev", "--port", str(port)],
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
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in text:
            found.append(text)
    return found


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
