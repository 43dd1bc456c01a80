"""Three gateway processes behind a real HAProxy (round robin, health checks on /readyz),
on PgBouncer in transaction mode and one Redis, all on loopback: changes reach every
replica within a second, a per-key limit holds cluster-wide, and a replica killed under
load costs no more than the requests it had in flight, then rejoins."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import pytest

from service.data.admin import delete_attachment, revoke_key, set_api_access
from service.devstack.haproxy import haproxy_available, run_haproxy
from service.devstack.pgbouncer import pgbouncer_available, run_pgbouncer
from service.devstack.redis_server import redis_available, run_redis
from tests.support.processes import Gateway

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (haproxy_available() and pgbouncer_available() and redis_available()),
        reason="needs Debian's haproxy, pgbouncer and redis-server",
    ),
]

REPLICAS = 3
# The per-key limit the cluster must hold: R per second, burst R.
RATE = 20
LOAD_SECONDS = 10
CLIENTS = 8


@pytest.fixture
def cluster_env(gateway_env, database_url, tmp_path):
    with (
        run_pgbouncer(database_url, tmp_path / "pgbouncer") as bouncer_url,
        run_redis(tmp_path / "redis") as redis,
    ):
        yield gateway_env | {
            "DATABASE_URL": bouncer_url,
            "DATABASE_DIRECT_URL": database_url,
            "DB_STATEMENT_CACHE_SIZE": "0",
            "RATE_LIMIT_BACKEND": "redis",
            "REDIS_URL": redis.url,
            "RATE_LIMIT_PER_KEY": str(RATE),
            "RATE_LIMIT_BURST_PER_KEY": str(RATE),
            "RATE_LIMIT_PER_WORKSPACE": "0",
            "FAILED_AUTH_PER_ADDRESS": "0",
            "LOG_LEVEL": "INFO",
        }


@pytest.fixture
async def cluster(cluster_env, tmp_path):
    replicas = [Gateway(cluster_env, log=tmp_path / f"gateway{n}.log") for n in range(REPLICAS)]
    try:
        for replica in replicas:
            await replica.wait_ready()
        with run_haproxy([r.port for r in replicas], tmp_path / "haproxy") as balancer:
            await wait_until_all_serve(balancer, REPLICAS)
            yield balancer, replicas
    finally:
        for replica in replicas:
            replica.stop()


async def wait_until_all_serve(balancer, count, timeout=15.0):
    """Until HAProxy's health checks have every replica up (its /readyz round robin)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(balancer + "/readyz") as response:
                if response.status == 200:
                    ids = set()
                    for _ in range(count * 3):
                        async with session.get(balancer + "/healthz") as answer:
                            ids.add(answer.headers["X-Request-ID"][:24])  # a process's prefix
                    if len(ids) == count:
                        return
            assert time.monotonic() < deadline, "the balancer never had every replica up"
            await asyncio.sleep(0.1)


async def status(session, url, headers):
    async with session.get(url, headers=headers, allow_redirects=False) as response:
        await response.read()
        return response.status


async def refused_everywhere_within_a_second(replicas, path, headers, refused, change):
    """`change()`, then every replica answers `refused` within 1 s of it."""
    async with aiohttp.ClientSession() as session:
        for replica in replicas:  # each has the key (and the attachment) cached now
            assert await status(session, replica.url + path, headers) == 307
        await change()
        changed_at = time.monotonic()
        waiting = list(replicas)
        while waiting:
            answers = [await status(session, r.url + path, headers) for r in waiting]
            assert set(answers) <= {307, refused}, answers
            waiting = [r for r, a in zip(waiting, answers, strict=True) if a != refused]
            assert time.monotonic() - changed_at < 1.0, f"{len(waiting)} replicas still serve"
            await asyncio.sleep(0.01)


async def test_a_revoked_key_is_refused_by_every_replica_within_a_second(
    cluster, make_tenant, make_attachment, conn
):
    _, replicas = cluster
    tenant = await make_tenant()
    path = f"/api/v1/attachments/{await make_attachment(tenant.workspace_id)}/download"
    await refused_everywhere_within_a_second(
        replicas, path, tenant.auth(), 401, lambda: revoke_key(conn, tenant.read_key_id)
    )


async def test_a_removed_entitlement_is_refused_by_every_replica_within_a_second(
    cluster, make_tenant, make_attachment, conn
):
    _, replicas = cluster
    tenant = await make_tenant()
    path = f"/api/v1/attachments/{await make_attachment(tenant.workspace_id)}/download"
    await refused_everywhere_within_a_second(
        replicas,
        path,
        tenant.auth(),
        403,
        lambda: set_api_access(conn, tenant.workspace_id, False),
    )


async def test_a_deleted_attachment_is_refused_by_every_replica_within_a_second(
    cluster, make_tenant, make_attachment, conn
):
    _, replicas = cluster
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    path = f"/api/v1/attachments/{attachment_id}/download"
    await refused_everywhere_within_a_second(
        replicas, path, tenant.auth(), 404, lambda: delete_attachment(conn, attachment_id)
    )


async def load(url, headers, seconds, clients=CLIENTS):
    """`clients` loops of requests for `seconds`; every answer's status, or the error."""
    answers: list[int | str] = []
    stop_at = time.monotonic() + seconds

    async def loop(session):
        while time.monotonic() < stop_at:
            try:
                answers.append(await status(session, url, headers))
            except (aiohttp.ClientError, TimeoutError) as exc:
                answers.append(type(exc).__name__)

    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(loop(session) for _ in range(clients)))
    return answers


async def test_a_per_key_limit_holds_cluster_wide(cluster, make_tenant, make_attachment):
    balancer, _ = cluster
    tenant = await make_tenant()
    url = f"{balancer}/api/v1/attachments/{await make_attachment(tenant.workspace_id)}/download"
    answers = await load(url, tenant.auth(), LOAD_SECONDS)
    admitted = answers.count(307)
    assert set(answers) <= {307, 429}, set(answers)
    # The burst, then RATE a second; three local limits would admit three times as much.
    expected = RATE + RATE * LOAD_SECONDS
    assert abs(admitted - expected) <= 0.15 * expected, (admitted, expected, len(answers))


async def test_a_replica_killed_under_load_costs_only_its_requests_in_flight_and_rejoins(
    cluster, cluster_env, make_tenant, make_attachment, tmp_path
):
    balancer, replicas = cluster
    tenant = await make_tenant()
    url = f"{balancer}/api/v1/attachments/{await make_attachment(tenant.workspace_id)}/download"
    victim = replicas[1]
    loading = asyncio.create_task(load(url, tenant.auth(), 4))
    await asyncio.sleep(1.5)
    victim.process.kill()  # SIGKILL: no drain, no goodbye
    victim.process.wait()
    answers = await loading
    failures = [a for a in answers if a not in (307, 429)]
    # At most the requests the dead replica held (one per client connection at a time).
    assert len(failures) <= CLIENTS, failures
    assert answers.count(307) > 0
    # Restarted on its port, the balancer's health checks bring it back into rotation.
    restarted = Gateway(cluster_env, log=tmp_path / "restarted.log", port=victim.port)
    replicas[1] = restarted
    await restarted.wait_ready()
    # Only requests sent through the balancer carry this id: the replica's own readiness
    # probes and HAProxy's health checks are logged too, and prove nothing of rotation.
    through_balancer = f"rejoin-{uuid.uuid4().hex}"
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession() as session:
        while not any(
            line.get("request_id") == through_balancer for line in restarted.json_lines()
        ):
            assert time.monotonic() < deadline, "the balancer sent the restarted replica nothing"
            await status(session, url, {**tenant.auth(), "X-Request-ID": through_balancer})
            await asyncio.sleep(0.05)
