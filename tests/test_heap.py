"""The serving process's collector settings, and what they rest on: a request, answered
or refused, leaves no cyclic garbage, so the young generation can be collected rarely
(service/server/processes.py)."""

from __future__ import annotations

import gc
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

import service
from service.server.processes import YOUNG_GENERATION_THRESHOLD, settle_heap

SERVICE_DIR = str(Path(service.__file__).parent)


@pytest.fixture
def collector_state() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("collector_state")
def test_settle_heap_freezes_what_was_built_and_raises_the_young_threshold():
    gc.unfreeze()
    _, *older = gc.get_threshold()

    settle_heap()

    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *older)


def held_in_cycles(garbage: list[object]) -> list[str]:
    """Requests, responses and the service's frames that a collection found only in
    reference cycles. (A routing error of aiohttp's is a small cycle of its own: the
    error, its route and the route's bound handler; without the request, as long as
    its traceback is dropped.)"""
    found = []
    for thing in garbage:
        if isinstance(thing, web.HTTPException):
            continue
        if isinstance(thing, web.BaseRequest | web.StreamResponse):
            found.append(type(thing).__name__)
        elif isinstance(thing, types.FrameType) and thing.f_code.co_filename.startswith(
            SERVICE_DIR
        ):
            found.append(f"frame of {thing.f_code.co_qualname}")
    return found


async def test_answered_and_refused_requests_leave_no_cycles(client, make_tenant, make_attachment):
    tenant = await make_tenant()
    other = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    download = f"/api/v1/attachments/{attachment_id}/download"
    bad_token = {"Authorization": "Bearer ixk_" + "0" * 40}
    requests = [
        ("GET", download, tenant.auth(), 307),
        ("HEAD", download, tenant.auth(), 307),
        ("GET", download + "?redirect=false", tenant.auth(), 200),
        ("GET", download + "?redirect=maybe", tenant.auth(), 400),  # a domain error
        ("GET", download, other.auth(), 404),  # another tenant's
        ("GET", f"/api/v1/attachments/{uuid.uuid4()}/download", tenant.auth(), 404),
        ("GET", "/api/v1/attachments/not-an-id/download", tenant.auth(), 404),
        ("GET", download, {}, 401),
        ("GET", download, bad_token, 401),
        ("GET", download + "?access_token=x", tenant.auth(), 401),
        ("DELETE", f"/api/v1/attachments/{attachment_id}", tenant.auth(), 403),  # read key
        ("POST", download, tenant.auth("write"), 405),
        ("GET", "/no/such/path", tenant.auth(), 404),
        ("GET", "/healthz", {}, 200),
    ]

    async def send_all() -> None:
        for method, path, headers, status in requests:
            response = await client.request(method, path, headers=headers, allow_redirects=False)
            await response.read()
            assert response.status == status, (method, path)

    await send_all()  # caches filled, every lazy import done
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds is kept, to be looked at
    try:
        for _ in range(3):
            await send_all()
        gc.collect()
        found = held_in_cycles(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()

    assert found == []
