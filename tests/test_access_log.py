"""The access log's direct path writes the very line JsonFormatter makes of the same
record, is the path `serve` takes, keeps the log's order, and loses no line under load or
to another thread."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import uuid

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.principal import Principal
from service.core.tokens import generate_token
from service.web.access_log import access_line, access_lines, loggable_path
from service.web.logs import DeferredLines, JsonFormatter, LineHandler, log_time
from service.web.request_ids import SANE_REQUEST_ID
from tests.support.environment import NO_ABUSE_LIMITS, process_env
from tests.support.http import raw_request
from tests.support.processes import Gateway

TOKEN = generate_token()

# Every member but the path as it can only be, by where it comes from (access_line's
# docstring); the path is anything a client sends.
HTTP_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 9110's tchar: a method


@given(
    request_id=st.none() | st.from_regex(SANE_REQUEST_ID, fullmatch=True),
    method=st.from_regex(HTTP_TOKEN, fullmatch=True),
    path=st.text(),
    status=st.integers(100, 599),
    duration_ms=st.floats(0, 1e6, allow_nan=False).map(lambda ms: round(ms, 3)),
    workspace_id=st.none() | st.uuids().map(str),
    key_prefix=st.none() | st.from_regex(r"ixk_[0-9A-Za-z]{8}", fullmatch=True),
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


def test_the_clock_text_is_made_again_for_each_millisecond_and_second():
    seconds = [1764878400.0, 1764878400.0004, 1764878400.0011, 1764878400.9999, 1764878401.0001]
    assert [log_time(t) for t in seconds] == [
        "2025-12-04T20:00:00.000+00:00",
        "2025-12-04T20:00:00.000+00:00",
        "2025-12-04T20:00:00.001+00:00",
        "2025-12-04T20:00:00.999+00:00",
        "2025-12-04T20:00:01.000+00:00",
    ]


def access_fields(index: int, principal: Principal | None = None) -> tuple[object, ...]:
    """What AccessLogger.log defers for one request."""
    created = 1764878400.0 + index / 1000
    return ("aiohttp.access", created, f"id-{index}", "GET", f"/p/{index}", 307, 0.0012, principal)


def test_deferred_lines_are_the_direct_lines():
    principal = Principal(
        key_id=uuid.UUID(int=8),
        workspace_id=uuid.UUID(int=7),
        scope="read",
        key_prefix="ixk_abcdefgh",
        api_access=True,
        expires_at=None,
    )
    fields = [access_fields(0, principal), access_fields(1)]
    assert access_lines(fields) == (
        access_line(
            "aiohttp.access",
            log_time(1764878400.0),
            "id-0",
            "GET",
            "/p/0",
            307,
            1.2,
            str(uuid.UUID(int=7)),
            "ixk_abcdefgh",
        )
        + "\n"
        + access_line(
            "aiohttp.access", log_time(1764878400.001), "id-1", "GET", "/p/1", 307, 1.2, None, None
        )
        + "\n"
    )


def test_deferred_lines_keep_the_logs_order_and_their_bound():
    stream = io.StringIO()
    handler = LineHandler(stream)
    handler.setFormatter(JsonFormatter())
    deferred = handler.deferred(access_lines)
    assert handler.deferred(access_lines) is deferred  # one buffer per kind of line
    deferred.add(access_fields(0))
    deferred.add(access_fields(1))
    assert stream.getvalue() == ""  # waiting
    record = logging.LogRecord("service", logging.WARNING, "", 0, "after them", (), None)
    handler.handle(record)
    logged = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("request_id", line["message"]) for line in logged] == [
        "id-0",
        "id-1",
        "after them",
    ]
    # No more than LIMIT wait: the one that fills the buffer writes it.
    for index in range(DeferredLines.LIMIT):
        deferred.add(access_fields(index))
    assert stream.getvalue().count("\n") == 3 + DeferredLines.LIMIT
    deferred.add(access_fields(0))
    handler.flush()
    assert stream.getvalue().count("\n") == 4 + DeferredLines.LIMIT


def test_a_line_added_while_others_are_made_waits_for_the_next_write():
    """The event loop adds lines while another thread, logging, makes and writes those
    that wait: what arrives meanwhile is neither lost nor written out of turn."""
    stream = io.StringIO()
    handler = LineHandler(stream)
    handler.setFormatter(JsonFormatter())
    arriving = [access_fields(2), access_fields(3)]

    def render_while_more_arrive(waiting: list[tuple[object, ...]]) -> str:
        text = access_lines(waiting)
        if arriving:
            deferred.add(arriving.pop(0))  # as the loop's thread would, meanwhile
        return text

    deferred = handler.deferred(render_while_more_arrive)
    deferred.add(access_fields(0))
    deferred.add(access_fields(1))
    handler.flush()
    assert request_ids(stream) == ["id-0", "id-1"]
    handler.flush()
    assert request_ids(stream) == ["id-0", "id-1", "id-2"]
    handler.flush()
    handler.flush()
    assert request_ids(stream) == ["id-0", "id-1", "id-2", "id-3"]


def request_ids(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]


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


async def test_what_clients_choose_cannot_break_a_line(gateway_env, tmp_path):
    """The members access_line writes unescaped hold only what their sources allow, here
    against a real server: an odd method, a hostile X-Request-ID, a path of quotes,
    backslashes and escapes. Every line is still one JSON object."""
    gateway = Gateway({**gateway_env, "LOG_LEVEL": "INFO"}, log=tmp_path / "gateway.log")
    try:
        await gateway.wait_ready()
        host, port = "127.0.0.1", int(gateway.url.rsplit(":", 1)[1])
        hostile = [
            b'GET /a%22b%5C"\\x HTTP/1.1\r\nHost: h\r\nX-Request-ID: a"b\\c\r\n',
            f"GET /api/v1/attachments/{TOKEN}/download HTTP/1.1\r\nHost: h\r\n".encode(),
            b"M-SEARCH /%00%1b[31m HTTP/1.1\r\nHost: h\r\n",
            b'GE"T / HTTP/1.1\r\nHost: h\r\n',
        ]
        for head in hostile:
            await raw_request(host, port, head + b"Connection: close\r\n\r\n")
    finally:
        assert gateway.stop() == 0
    # (Each line is one JSON object: json_lines parses every line of the log.)
    access = [line for line in gateway.json_lines() if line.get("logger") == "aiohttp.access"]
    by_path = {line["path"]: line for line in access}
    assert by_path['/a"b\\"\\x']["request_id"] != 'a"b\\c'  # replaced, never echoed
    assert by_path["/\x00\x1b[31m"]["method"] == "M-SEARCH"
    assert by_path["/api/v1/attachments/ixk_[redacted]/download"]["status"] == 401
    assert TOKEN[4:] not in gateway.log.read_text()
    assert [line["status"] for line in access if line["method"] == "UNKNOWN"] == [400]  # GE"T
    # Durations to the microsecond, not the event loop's whole milliseconds.
    middleware_timed = [line["duration_ms"] for line in access if line["method"] != "UNKNOWN"]
    assert any(duration != int(duration) for duration in middleware_timed), middleware_timed


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/api/v1/attachments/x/download", "/api/v1/attachments/x/download"),
        (f"/api/v1/attachments/{TOKEN}/download", "/api/v1/attachments/ixk_[redacted]/download"),
        (f"/{TOKEN[:20]}", "/ixk_[redacted]"),  # cut short, still a secret's beginning
        (f"/a/{TOKEN}x{TOKEN}", "/a/ixk_[redacted]"),
    ],
)
def test_a_token_pasted_into_the_path_is_not_logged(path, logged):
    assert loggable_path(path) == logged


async def test_the_logging_path_redacts_a_token_in_the_path(client, make_tenant, caplog):
    tenant = await make_tenant()
    caplog.set_level(logging.INFO, "aiohttp.access")
    path = f"/api/v1/attachments/{tenant.read_token}/download"
    response = await client.get(path, headers=tenant.auth(), allow_redirects=False)
    assert response.status == 404
    (line,) = [r for r in caplog.records if r.name == "aiohttp.access"]
    assert line.path == "/api/v1/attachments/ixk_[redacted]/download"
    assert tenant.read_token not in caplog.text
