"""Abuse limits: per key, per workspace, failed authentication per address; 429s with
Retry-After and the IETF RateLimit fields, never those fields on a redirect."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from service.core.tokens import generate_token
from service.web import limits
from service.web.app import create_app
from service.web.limits import TokenBuckets
from service.web.problems import Problem
from tests.support.rate_limits import assert_rate_limited, download


@pytest.fixture
def limited_gateway(serve_app, settings, make_tenant, make_attachment):
    """A gateway with these limits, a tenant and one of its attachments."""

    async def start(**limits):
        client = await serve_app(create_app(replace(settings, **limits)))
        tenant = await make_tenant()
        return client, tenant, await make_attachment(tenant.workspace_id)

    return start


async def test_a_key_over_its_limit_gets_429_and_its_redirects_carry_no_limit_fields(
    limited_gateway,
):
    client, tenant, attachment_id = await limited_gateway(
        rate_limit_per_key=0.5, rate_limit_burst_per_key=5
    )
    for _ in range(5):
        response, _ = await download(client, attachment_id, tenant.auth())
        assert response.status == 307
        assert not {"RateLimit", "RateLimit-Policy"} & set(response.headers)
    response, body = await download(client, attachment_id, tenant.auth())
    assert_rate_limited(response, body, "key", quota=5)
    assert int(response.headers["Retry-After"]) == 2  # one token at 0.5 per second
    # Another key of the same workspace has its own bucket.
    response, _ = await download(client, attachment_id, tenant.auth("write"))
    assert response.status == 307


async def test_the_keys_of_a_workspace_share_its_limit(limited_gateway):
    client, tenant, attachment_id = await limited_gateway(
        rate_limit_per_workspace=0.5, rate_limit_burst_per_workspace=6
    )
    for scope in ("read", "write", "read", "write", "read", "write"):
        assert (await download(client, attachment_id, tenant.auth(scope)))[0].status == 307
    response, body = await download(client, attachment_id, tenant.auth("write"))
    assert_rate_limited(response, body, "workspace", quota=6)


async def test_an_address_that_keeps_guessing_is_refused_even_a_right_guess(
    serve_app, settings, limited_gateway
):
    limits = {"failed_auth_per_address": 0.2, "failed_auth_burst_per_address": 10}
    client, tenant, attachment_id = await limited_gateway(**limits)
    guesses = [generate_token() for _ in range(5)] + ["ixk_malformed"] * 5
    for guess in guesses:
        response, _ = await download(client, attachment_id, {"Authorization": f"Bearer {guess}"})
        assert response.status == 401
    response, body = await download(client, attachment_id, tenant.auth())
    assert_rate_limited(response, body, "failed-auth", quota=10)
    # A missing header is not a guess: it never counts (nor does a success).
    fresh = await serve_app(create_app(replace(settings, **limits)))
    for _ in range(15):
        assert (await fresh.get("/api/v1/anything")).status == 401
    assert (await download(fresh, attachment_id, tenant.auth()))[0].status == 307


async def test_one_workspace_hammering_does_not_starve_another(
    serve_app, settings, make_tenant, make_attachment
):
    limited = replace(
        settings,
        rate_limit_per_key=20,
        rate_limit_burst_per_key=20,
        rate_limit_per_workspace=20,
        rate_limit_burst_per_workspace=20,
    )
    client = await serve_app(create_app(limited))
    noisy, quiet = await make_tenant(), await make_tenant()
    noisy_id = await make_attachment(noisy.workspace_id)
    quiet_id = await make_attachment(quiet.workspace_id)

    async def hammer():
        statuses = []
        for _ in range(10):
            batch = await asyncio.gather(
                *(download(client, noisy_id, noisy.auth()) for _ in range(20))
            )
            statuses += [response.status for response, _ in batch]
        return statuses

    async def steady():
        statuses = []
        for _ in range(10):  # 10 requests a second: within its limit
            statuses.append((await download(client, quiet_id, quiet.auth()))[0].status)
            await asyncio.sleep(0.1)
        return statuses

    noisy_statuses, quiet_statuses = await asyncio.gather(hammer(), steady())
    assert noisy_statuses.count(429) > 100  # far over its limit
    assert set(noisy_statuses) == {307, 429}
    assert quiet_statuses == [307] * 10


def test_the_least_recently_spent_bucket_is_forgotten_first(monkeypatch):
    monkeypatch.setattr(limits, "MAX_BUCKETS", 3)
    buckets = TokenBuckets("key", rate=1e-9, burst=2)  # (no refill within the test)
    for key in "abc":
        assert buckets.take(key)
    assert buckets.take("a")  # "a" spent its burst, and is now the most recent
    assert buckets.take("d")  # a fourth: "b", the least recent, is forgotten

    assert buckets.take("b") and buckets.take("b")  # a forgotten bucket is a full one
    assert not buckets.take("a")  # remembered, and empty


def test_a_bucket_refused_again_and_again_is_not_the_one_forgotten(monkeypatch):
    monkeypatch.setattr(limits, "MAX_BUCKETS", 2)
    buckets = TokenBuckets("key", rate=1e-9, burst=1)
    assert buckets.take("hammering") and buckets.take("other")
    assert not buckets.take("hammering")  # refused: and now the most recent
    assert buckets.take("third")  # "other", the least recent, is forgotten

    assert not buckets.take("hammering")  # still remembered, still empty: no fresh burst


def test_a_request_the_workspace_refuses_costs_its_key_nothing(monkeypatch):
    """The key's bucket is charged only for what is admitted, as the shared buckets'
    script does (all or nothing): else a key in a throttled workspace would run dry on
    refusals and, once the workspace refilled, be refused on its own account."""
    clock = [100.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: clock[0])
    rate_limits = limits.RateLimits(
        per_key=(1e-9, 4), per_workspace=(1.0, 2), failed_auth_per_address=(0, 0),
        reports_per_address=(0, 0),
    )  # fmt: skip

    def admitted() -> bool | str:
        try:
            rate_limits.admit("key", "workspace")
        except Problem as refusal:
            return refusal.reason
        return True

    assert [admitted() for _ in range(4)] == [True, True, "workspace", "workspace"]
    clock[0] += 10  # the workspace's burst is back; the key's refills no faster than 1e-9/s
    assert [admitted() for _ in range(3)] == [True, True, "key"]  # its own four, spent
