"""Rate limits shared across replicas through a real redis-server (RATE_LIMIT_BACKEND=redis):
the cluster spends from one bucket, the 429's fields come from it, and when Redis is down
or slow each replica falls back to its own buckets at once, never a 5xx."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import time
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from service.core.tokens import generate_token
from service.core.uploads import MIB
from service.devstack.redis_server import REDIS_SERVER, redis_available, run_redis
from service.web.app import create_app
from service.web.caches import CACHES
from service.web.limits import RATE_LIMITS
from tests.support.http import assert_problem
from tests.support.rate_limits import assert_rate_limited, download

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not redis_available(), reason="redis-server is not installed"),
]


@pytest.fixture
def redis_server(tmp_path):
    with run_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def replicas(serve_app, settings, redis_server, make_tenant, make_attachment):
    """Two gateways on one Redis (as two replicas behind a balancer), a tenant, a file."""

    async def start(count=2, **limits):
        # On a loaded machine a first round trip can outlast the shipped 0.1 s, and then
        # the local buckets would decide: what these tests count is the shared bucket.
        # The test of the timeout itself sets its own.
        limits.setdefault("redis_timeout_seconds", 1.0)
        shared = replace(settings, rate_limit_backend="redis", redis_url=redis_server.url, **limits)
        clients = [await serve_app(create_app(shared)) for _ in range(count)]
        tenant = await make_tenant()
        return clients, tenant, await make_attachment(tenant.workspace_id)

    return start


async def test_two_replicas_spend_one_key_bucket(replicas):
    (first, second), tenant, attachment_id = await replicas(
        rate_limit_per_key=0.5, rate_limit_burst_per_key=6
    )
    for client in (first, second) * 3:  # round robin: 3 each, 6 in all
        assert (await download(client, attachment_id, tenant.auth()))[0].status == 307
    for client in (first, second):  # local buckets would still hold 3 each
        response, body = await download(client, attachment_id, tenant.auth())
        assert_rate_limited(response, body, "key", quota=6)
        assert int(response.headers["Retry-After"]) == 2  # one token at 0.5 per second


async def test_two_replicas_spend_one_workspace_bucket(replicas):
    (first, second), tenant, attachment_id = await replicas(
        rate_limit_per_workspace=0.5, rate_limit_burst_per_workspace=4
    )
    for client, scope in ((first, "read"), (second, "write"), (first, "write"), (second, "read")):
        assert (await download(client, attachment_id, tenant.auth(scope)))[0].status == 307
    response, body = await download(first, attachment_id, tenant.auth("write"))
    assert_rate_limited(response, body, "workspace", quota=4)


async def test_guesses_on_any_replica_count_against_the_address_everywhere(replicas):
    (first, second), tenant, attachment_id = await replicas(
        failed_auth_per_address=0.2, failed_auth_burst_per_address=6
    )
    for client in (first, second) * 3:
        guess = {"Authorization": f"Bearer {generate_token()}"}
        assert (await download(client, attachment_id, guess))[0].status == 401
    for client in (first, second):  # a right guess now is refused like a wrong one
        response, body = await download(client, attachment_id, tenant.auth())
        assert_rate_limited(response, body, "failed-auth", quota=6)
        guess = {"Authorization": f"Bearer {generate_token()}"}
        response, body = await download(client, attachment_id, guess)
        assert_rate_limited(response, body, "failed-auth", quota=6)


async def test_an_address_redis_refused_costs_no_key_lookups_until_it_may_guess_again(replicas):
    """Shared limits looked at the address's failed attempts only after its token's lookup:
    each guess of a flood, refused 429, still cost a query and left a miss in the key
    cache, pushing real keys out. Once Redis refuses the address, this process refuses it
    before the lookup, until its bucket (as Redis told it) holds a token again."""
    (client,), tenant, attachment_id = await replicas(
        count=1, failed_auth_per_address=0.25, failed_auth_burst_per_address=3
    )
    keys = client.app[CACHES].keys
    for _ in range(3):
        guess = {"Authorization": f"Bearer {generate_token()}"}
        assert (await download(client, attachment_id, guess))[0].status == 401
    looked_up = len(keys)
    assert looked_up == 3
    for _ in range(30):  # (a token comes back after 4 s)
        guess = {"Authorization": f"Bearer {generate_token()}"}
        response, body = await download(client, attachment_id, guess)
        assert_rate_limited(response, body, "failed-auth", quota=3)
    assert len(keys) <= looked_up + 1  # the guess that Redis refused was looked up
    response, body = await download(client, attachment_id, tenant.auth())
    assert_rate_limited(response, body, "failed-auth", quota=3)  # a right one too
    await asyncio.sleep(4.1)  # one token back: the address is asked about again
    assert (await download(client, attachment_id, tenant.auth()))[0].status == 307


async def test_a_redis_that_is_down_means_local_limits_at_once_then_shared_again(
    replicas, redis_server, caplog
):
    (first,), tenant, attachment_id = await replicas(
        count=1, rate_limit_per_key=0.5, rate_limit_burst_per_key=100
    )
    assert (await download(first, attachment_id, tenant.auth()))[0].status == 307
    redis_server.stop()
    with caplog.at_level(logging.INFO, logger="service.data.shared_limits"):
        started = time.monotonic()
        for _ in range(20):
            response, _ = await download(first, attachment_id, tenant.auth())
            assert response.status == 307
        assert time.monotonic() - started < 2  # no request waits long on a Redis that is gone
        metrics = await (await first.get("/metrics")).text()
        assert "gateway_rate_limit_shared 0.0" in metrics
        assert re.search(r"^gateway_rate_limit_fallbacks_total [1-9]", metrics, re.M)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "local limits" in warnings[0].getMessage()
        redis_server.start()
        await asyncio.sleep(1.2)  # the retry interval
        assert (await download(first, attachment_id, tenant.auth()))[0].status == 307
        assert first.app[RATE_LIMITS].shared.up
        assert any("cluster-wide" in r.getMessage() for r in caplog.records)


async def test_a_redis_that_is_slow_means_local_limits_within_the_timeout(replicas, redis_server):
    (first,), tenant, attachment_id = await replicas(
        count=1, rate_limit_per_key=0.5, rate_limit_burst_per_key=2, redis_timeout_seconds=0.1
    )
    for _ in range(2):
        assert (await download(first, attachment_id, tenant.auth()))[0].status == 307
    # Redis busy for 2 s: every answer within the timeout, and the local bucket, still
    # full, admits; never a 5xx.
    cli = REDIS_SERVER.replace("redis-server", "redis-cli")
    sleeper = subprocess.Popen([cli, "-p", str(redis_server.port), "DEBUG", "SLEEP", "2"])
    try:
        await asyncio.sleep(0.2)
        started = time.monotonic()
        response, _ = await download(first, attachment_id, tenant.auth())
        assert response.status == 307
        assert time.monotonic() - started < 0.5
    finally:
        sleeper.wait(10)


async def test_requests_waiting_on_a_batch_that_times_out_fall_back_with_it(replicas, redis_server):
    """A request that arrives while a batch is in flight waits for that batch; if the
    batch finds Redis silent, the request falls back when it does, not after a timeout of
    its own (it once was sent to the silent Redis in the next batch)."""
    (first,), tenant, attachment_id = await replicas(count=1, redis_timeout_seconds=0.5)
    assert (await download(first, attachment_id, tenant.auth()))[0].status == 307  # connected
    cli = REDIS_SERVER.replace("redis-server", "redis-cli")
    shared = first.app[RATE_LIMITS].shared
    fallbacks_before = shared.fallbacks
    sleeper = subprocess.Popen([cli, "-p", str(redis_server.port), "DEBUG", "SLEEP", "3"])
    try:
        await asyncio.sleep(0.2)
        in_flight = asyncio.create_task(download(first, attachment_id, tenant.auth()))
        await asyncio.sleep(0.2)  # the first batch is waiting on Redis
        started = time.monotonic()
        response, _ = await download(first, attachment_id, tenant.auth())
        waited = time.monotonic() - started
        assert response.status == 307 and (await in_flight)[0].status == 307
        assert waited < 0.5  # the first batch's 0.3 s left, not that and 0.5 s more
        # Both fell back: Redis was silent for them, not merely fast.
        assert shared.fallbacks - fallbacks_before == 2
    finally:
        sleeper.wait(10)


async def test_a_batch_of_links_spends_one_token_per_id_from_the_shared_bucket(replicas):
    (first, second), tenant, attachment_id = await replicas(
        rate_limit_per_key=0.1, rate_limit_burst_per_key=6
    )
    path = "/api/v1/attachments/download-links"

    async def batch(client, count):
        query = [("id", str(attachment_id))] * count
        response = await client.get(path, headers=tenant.auth(), params=query)
        return response, await response.read()

    assert (await batch(first, 4))[0].status == 200
    response, body = await batch(second, 3)  # 2 left in the cluster's bucket
    assert_problem(response.status, body, "rate_limited")
    assert re.search(r";r=2;", response.headers["RateLimit"])
    assert (await batch(second, 2))[0].status == 200
    assert_rate_limited(*(await download(first, attachment_id, tenant.auth())), "key", quota=6)


async def test_part_urls_spend_a_token_each_from_the_shared_bucket(replicas):
    (first, second), tenant, _ = await replicas(
        upload_single_put_max_bytes=5 * MIB,
        upload_part_bytes=5 * MIB,
        rate_limit_per_key=0.01,
        rate_limit_burst_per_key=4,
    )
    write = tenant.auth("write")
    document = {"filename": "big.bin", "size_bytes": 12 * MIB}  # three parts
    response = await first.post("/api/v1/attachments", json=document, headers=write)
    assert response.status == 201  # 3 of the 4
    created = await response.json()
    response = await second.post(f"/api/v1/attachments/{created['id']}/upload", headers=write)
    assert_rate_limited(response, await response.read(), "key", quota=4)


async def test_secret_scanning_reports_spend_one_bucket_per_address_across_replicas(replicas):
    """Reports count per address cluster-wide, signed or not (the limit comes first)."""
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    (first, second), _, _ = await replicas(
        secret_scanning_public_keys=json.dumps({"k": pem}),
        secret_scanning_per_address=0.1,
        secret_scanning_burst_per_address=2,
    )
    path = "/api/v1/secret-scanning/reports"
    for client in (first, second):  # unsigned: refused, but counted
        response = await client.post(path, data=b"[]")
        assert_problem(response.status, await response.read(), "signature_missing")
    for client in (first, second):  # local buckets would still hold one each
        response = await client.post(path, data=b"[]")
        assert_problem(response.status, await response.read(), "rate_limited")
        assert int(response.headers["Retry-After"]) == 10  # one report at 0.1 a second
