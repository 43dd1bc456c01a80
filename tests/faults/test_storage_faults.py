"""Storage faults: the S3 endpoint goes away, credentials run out or cannot be refreshed.
Never a URL that cannot work, never a botocore message in a body."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import aiohttp

from service.devstack.ports import free_port
from tests.support.http import assert_problem
from tests.support.load import seed
from tests.support.processes import error_lines, metric
from tests.support.waiting import eventually


def credential_process_config(tmp_path, seaweed, lifetimes):
    """An AWS config whose default profile gets its keys from a program (as with SSO or a
    vault) that hands out SeaweedFS's identity for lifetimes[n] seconds on its n-th run,
    and fails once the list is used up."""
    state = tmp_path / "runs"
    program = tmp_path / "credentials.py"
    program.write_text(
        textwrap.dedent(f"""
        import json, sys
        from datetime import datetime, timedelta, UTC
        from pathlib import Path
        state = Path({str(state)!r})
        runs = int(state.read_text()) if state.exists() else 0
        state.write_text(str(runs + 1))
        lifetimes = {lifetimes!r}
        if runs >= len(lifetimes):
            sys.exit("the vault is sealed")
        expires = datetime.now(UTC) + timedelta(seconds=lifetimes[runs])
        print(json.dumps({{"Version": 1, "AccessKeyId": {seaweed.access_key!r},
                          "SecretAccessKey": {seaweed.secret_key!r},
                          "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
    """)
    )
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\ncredential_process = {sys.executable} {program}\n")
    return {
        "AWS_CONFIG_FILE": str(config),
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
    }


async def get(url, headers):
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers, allow_redirects=False) as response:
            return response.status, dict(response.headers), await response.read()


async def test_an_unreachable_endpoint_means_503_until_it_is_back(database_url, start_gateway):
    seeded = await seed(database_url)
    port = free_port()  # nothing listens there yet
    gateway = await start_gateway(
        S3_ENDPOINT_URL=f"http://127.0.0.1:{port}", S3_PROBE_INTERVAL_SECONDS="0.2"
    )
    url = gateway.url + seeded.paths()[0]

    async def answers(status):
        return (await get(url, seeded.auth))[0] == status

    await eventually(lambda: answers(503), timeout=5)
    status, headers, body = await get(url, seeded.auth)
    assert status == 503
    assert_problem(503, body, "service_unavailable")
    assert int(headers["Retry-After"]) > 0
    assert b"botocore" not in body.lower() and b"connect" not in body.lower()
    assert await metric(gateway, "gateway_storage_reachable") == 0
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/readyz") as response:
            assert response.status == 200
            assert (await response.json())["checks"]["storage"] == "unreachable"

    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    async with server:
        await eventually(lambda: answers(307), timeout=5)
        assert await metric(gateway, "gateway_storage_reachable") == 1
    assert error_lines(gateway) == []


async def test_urls_never_outlive_expiring_credentials(
    database_url, seaweed, make_tenant, make_attachment, start_gateway, tmp_path
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id, body=b"short-lived\n")
    # Every run of the program gives 5 minutes: under the URL's 15 (and the refresh
    # windows of botocore), so a refresh does not help and the URL must be shortened.
    env = credential_process_config(tmp_path, seaweed, [300] * 100)
    gateway = await start_gateway(**env)
    url = f"{gateway.url}/api/v1/attachments/{attachment_id}/download"

    for _ in range(2):  # and never reused: each one is signed for what is left
        asked_at = datetime.now(UTC)
        status, headers, body = await get(url, tenant.auth())
        assert status == 307
        expires_at = datetime.strptime(json.loads(body)["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
        lifetime = expires_at.replace(tzinfo=UTC) - asked_at
        assert timedelta(seconds=200) < lifetime < timedelta(seconds=300)
        assert "X-Amz-Expires=900" not in headers["Location"]
        async with aiohttp.ClientSession() as session:  # and it works, to the byte
            async with session.get(headers["Location"]) as response:
                assert response.status == 200 and await response.read() == b"short-lived\n"
    shortened = await metric(
        gateway, 'gateway_presigned_urls_total{method="GET",source="shortened"}'
    )
    assert shortened == 2


async def test_credentials_that_cannot_be_refreshed_mean_503(
    database_url, seaweed, start_gateway, tmp_path
):
    seeded = await seed(database_url)
    # 100 s at start-up, then the program fails: botocore must refresh (under 10 minutes
    # left) and cannot.
    env = credential_process_config(tmp_path, seaweed, [100])
    gateway = await start_gateway(**env)
    status, headers, body = await get(gateway.url + seeded.paths()[0], seeded.auth)
    assert status == 503
    assert_problem(503, body, "service_unavailable")
    assert int(headers["Retry-After"]) > 0
    assert b"vault" not in body and b"botocore" not in body.lower()
    assert error_lines(gateway) == []
