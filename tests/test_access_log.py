"""The access log's direct path writes the very line JsonFormatter makes of the same
record, is the path `serve` takes, and loses no line under load."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.web.access_log import access_line
from service.web.logs import JsonFormatter, log_time
from tests.support.environment import NO_ABUSE_LIMITS, process_env
from tests.support.processes import Gateway

optional_text = st.none() | st.text()


@given(
    request_id=optional_text,
    method=st.text(min_size=1),
    path=st.text(),
    status=st.integers(100, 599),
    duration_ms=st.floats(0, 1e6, allow_nan=False).map(lambda ms: round(ms, 3)),
    workspace_id=optional_text,
    key_prefix=optional_text,
    created=st.floats(0, 4e9, allow_nan=False),
)
def test_the_direct_line_is_the_formatters_line(
    request_id, method, path, status, duration_ms, workspace_id, key_prefix, created
):
    record = logging.LogRecord("aiohttp.access", logging.INFO, "", 0, "request", (), None)
    record.created = created
    record.__dict__.update(
        request_id=request_id,
        method=method,
        path=path,
        status=status,
        duration_ms=duration_ms,
        workspace_id=workspace_id,
        key_prefix=key_prefix,
    )
    direct = access_line(
        "aiohttp.access",
        log_time(created),
        request_id,
        method,
        path,
        status,
        duration_ms,
        workspace_id,
        key_prefix,
    )
    assert direct == JsonFormatter().format(record)


def test_serve_takes_the_direct_path():
    """After configure_logging, as `serve` calls it, the access log skips `logging`; any
    other handler or filter on the way sends it back through `logging`."""
    script = (
        "import logging\n"
        "from service.web.logs import configure_logging\n"
        "from service.web.access_log import sole_line_handler\n"
        "access = logging.getLogger('aiohttp.access')\n"
        "configure_logging('INFO')\n"
        "assert sole_line_handler(access) is logging.getLogger().handlers[0]\n"
        "access.addFilter(lambda record: True)\n"
        "assert sole_line_handler(access) is None\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=process_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
async def test_every_request_has_its_line_under_load(
    gateway_env, make_tenant, make_attachment, tmp_path
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    gateway = Gateway(
        {**gateway_env, **NO_ABUSE_LIMITS, "LOG_LEVEL": "INFO"}, log=tmp_path / "gateway.log"
    )
    requests, concurrency = 5_000, 200
    try:
        await gateway.wait_ready()
        url = f"{gateway.url}/api/v1/attachments/{attachment_id}/download"
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            ids: list[str] = []

            async def one(index: int) -> None:
                headers = {**tenant.auth(), "X-Request-ID": f"load-{index}"}
                async with session.get(url, headers=headers, allow_redirects=False) as response:
                    assert response.status == 307
                    ids.append(response.headers["X-Request-ID"])

            await asyncio.gather(*(one(index) for index in range(requests)))
    finally:
        assert gateway.stop() == 0
    logged = [
        line["request_id"]
        for line in gateway.json_lines()
        if line.get("logger") == "aiohttp.access" and line.get("path", "").endswith("/download")
    ]
    assert sorted(logged) == sorted(ids) == sorted(f"load-{index}" for index in range(requests))
