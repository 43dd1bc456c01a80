"""What the rate-limit tests share: a download and the check of a 429's fields."""

from __future__ import annotations

import re

from tests.support.http import assert_problem

POLICY = re.compile(r'^"(?P<name>[a-z-]+)";q=(?P<q>\d+);w=(?P<w>\d+)$')
REMAINING = re.compile(r'^"(?P<name>[a-z-]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')


async def download(client, attachment_id, headers):
    response = await client.get(
        f"/api/v1/attachments/{attachment_id}/download", headers=headers, allow_redirects=False
    )
    return response, await response.read()


def assert_rate_limited(response, body, policy, quota):
    assert response.status == 429
    assert_problem(429, body, "rate_limited")
    assert int(response.headers["Retry-After"]) >= 1
    declared = POLICY.match(response.headers["RateLimit-Policy"])
    assert declared and declared["name"] == policy and int(declared["q"]) == quota
    left = REMAINING.match(response.headers["RateLimit"])
    assert left and left["name"] == policy and left["r"] == "0"
    assert int(left["t"]) == int(response.headers["Retry-After"])
