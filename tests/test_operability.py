"""Health, readiness, metrics, request ids, access logs and the served OpenAPI document."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import shutil
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from service.core.settings import DEFAULT_MIGRATIONS_DIR, Settings
from service.data.migrations import apply_migrations
from service.devstack.ports import free_port
from service.web.api_docs import docs_page
from service.web.app import create_app
from service.web.caches import CACHES
from service.web.database import DATABASE
from service.web.metrics import KNOWN_METHODS, LATENCY_BUCKETS, METRICS, RequestCounts
from service.web.storage import STORAGE
from tests.support.openapi import DOCUMENT, HTTP_METHODS
from tests.support.waiting import changes_heard, eventually


async def test_healthz_needs_no_key(client):
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


async def test_readyz_when_everything_is_there(client):
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "schema": "ok", "storage": "ok"},
    }


async def not_ready_checks(client) -> dict[str, str]:
    """/readyz's checks, asserting it answered not ready."""
    response = await client.get("/readyz")
    assert response.status == 503
    assert int(response.headers["Retry-After"]) > 0
    body = await response.json()
    assert body["status"] == "not_ready"
    return body["checks"]


async def test_readyz_waits_for_this_builds_migrations(
    serve_app, settings, fresh_database, tmp_path
):
    """A new release's pods stay out of rotation until its migrations ran (the migrate
    Job is applied beside them): before, they served the new code on the old schema."""
    database_url = await asyncio.to_thread(fresh_database)
    await apply_migrations(database_url, DEFAULT_MIGRATIONS_DIR)
    next_release = tmp_path / "migrations"
    shutil.copytree(DEFAULT_MIGRATIONS_DIR, next_release)
    (next_release / "9999_next_release.sql").write_text("CREATE TABLE next_release (id int);")
    app = create_app(replace(settings, database_url=database_url, migrations_dir=next_release))
    client = await serve_app(app)

    assert await not_ready_checks(client) == {
        "database": "ok",
        "schema": "migrations not applied: 9999_next_release.sql",
        "storage": "ok",
    }

    assert await apply_migrations(database_url, next_release) == ["9999_next_release.sql"]
    response = await client.get("/readyz")
    assert response.status == 200
    assert (await response.json())["checks"]["schema"] == "ok"


async def test_readyz_on_a_database_no_migration_ran_on(serve_app, settings, fresh_database):
    database_url = await asyncio.to_thread(fresh_database)
    client = await serve_app(create_app(replace(settings, database_url=database_url)))
    shipped = sorted(path.name for path in DEFAULT_MIGRATIONS_DIR.glob("*.sql"))
    checks = await not_ready_checks(client)
    assert checks["schema"] == f"migrations not applied: {', '.join(shipped)}"


async def test_readyz_with_every_pool_connection_busy_stays_ready(serve_app, settings):
    """A pool whose every connection is busy is overload every instance shares: taken
    out of rotation (it said "unreachable"), an instance's load moves to the others, and
    its warm downloads, which need no query, stop too."""
    busy = replace(settings, db_pool_min_size=1, db_pool_max_size=1, db_acquire_timeout=0.2)
    client = await serve_app(create_app(busy))
    pool = client.app[DATABASE].pool
    async with pool.acquire():  # the only connection, busy
        # Not before the schema was seen whole: a new release's instance waits for it.
        assert (await not_ready_checks(client))["database"] == "busy: every pool connection in use"
    response = await client.get("/readyz")
    assert response.status == 200
    assert (await response.json())["checks"]["database"] == "ok"
    async with pool.acquire():
        response = await client.get("/readyz")
        assert response.status == 200
        checks = (await response.json())["checks"]
        assert checks == {
            "database": "busy: every pool connection in use",
            "schema": "ok",  # seen whole before: migrations only add
            "storage": "ok",
        }


async def test_a_flood_of_readiness_probes_costs_the_pool_one_connection(serve_app, settings):
    """/readyz is public and unlimited: probes that arrive while one is asking the
    database share its answer, instead of taking every connection downloads need."""
    pooled = replace(settings, db_pool_min_size=1, db_pool_max_size=8)
    client = await serve_app(create_app(pooled))
    pool = client.app[DATABASE].pool
    assert pool.get_size() == 1
    answers = await asyncio.gather(*(client.get("/readyz") for _ in range(50)))
    assert [answer.status for answer in answers] == [200] * 50
    # (The invalidation listener's probe, sent through this pool every 2 s, may have
    # needed a second; one probe each took all eight.)
    assert pool.get_size() <= 2


async def test_readyz_names_what_is_missing(serve_app, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    offline = Settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    client = await serve_app(create_app(offline))
    assert await not_ready_checks(client) == {
        "database": "unreachable",
        "schema": "unknown",
        "storage": "no S3 endpoint or region configured",
    }


async def test_readyz_with_storage_unreachable_still_needs_its_database(serve_app, settings):
    """Unreachable storage alone leaves an instance in rotation (every instance shares that
    outage); an instance that cannot reach its database as well is not ready."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    isolated = replace(
        settings,
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
        s3_endpoint_url=nowhere,
        s3_probe_interval_seconds=0.1,
    )
    client = await serve_app(create_app(isolated))
    await eventually(lambda: not client.app[STORAGE].reachable, timeout=5)
    assert await not_ready_checks(client) == {
        "database": "unreachable",
        "schema": "unknown",
        "storage": "unreachable",
    }


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
            metric, value = line.rsplit(" ", 1)
            found = metric[len(name) :].strip("{}")
            if ",".join(sorted(found.split(","))) == wanted or (not labels and not found):
                return float(value)
    return 0.0


async def test_metrics_count_requests_presigns_auth_failures_and_the_pool(
    client, conn, make_tenant, make_attachment
):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    path = f"/api/v1/attachments/{attachment_id}/download"
    # URLs are reused only once the invalidation listener is up (its first connection can
    # time out on a loaded machine, and it retries): the counts below assume reuse.
    await eventually(lambda: client.app[CACHES].live, timeout=15)
    # The rows just made notify every listener: the first lookup must not overlap that.
    await changes_heard(conn, client.app[CACHES])
    for _ in range(3):
        await client.get(path, headers=tenant.auth(), allow_redirects=False)
    await client.head(path, headers=tenant.auth(), allow_redirects=False)
    await client.get(path)
    await client.get(path, headers={"Authorization": "Bearer ixk_garbage"})
    await client.get(path, headers={"Authorization": "Basic eDp5"})
    await client.delete(path, headers=tenant.auth())

    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await response.text()
    route = "/api/v1/attachments/{id}/download"
    assert sample(text, "gateway_requests_total", route=route, method="GET", status="307") == 3
    assert sample(text, "gateway_requests_total", route=route, method="HEAD", status="307") == 1
    assert sample(text, "gateway_requests_total", route=route, method="GET", status="401") == 3
    # Signed once, then handed out again within the reuse window.
    assert sample(text, "gateway_presigned_urls_total", method="GET", source="signed") == 1
    assert sample(text, "gateway_presigned_urls_total", method="GET", source="reused") == 2
    assert sample(text, "gateway_presigned_urls_total", method="HEAD", source="signed") == 1
    for reason in ("missing_credentials", "malformed_token", "other_scheme", "insufficient_scope"):
        assert sample(text, "gateway_auth_failures_total", reason=reason) == 1, reason
    # The DELETE matched no route for its method: its label is "unmatched", not its path.
    assert (
        sample(text, "gateway_requests_total", route="unmatched", method="DELETE", status="403")
        == 1
    )
    assert sample(text, "gateway_request_duration_seconds_count", route=route) == 7
    assert sample(text, "gateway_request_duration_seconds_bucket", route=route, le="+Inf") == 7
    assert 0 < sample(text, "gateway_request_duration_seconds_sum", route=route) < 7
    assert sample(text, "gateway_db_pool_connections", state="max") == 32
    assert sample(text, "gateway_db_pool_connections", state="open") >= 1
    assert attachment_id.hex not in text and str(attachment_id) not in text
    assert "ixk_" not in text and "X-Amz" not in text


def exposition_lines(registry, prefixes):
    return sorted(
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith(prefixes) and "_created" not in line
    )


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["/a/{id}", "unmatched"]),
            st.sampled_from(["GET", "HEAD", "DELETE", "BREW", "get"]),
            st.sampled_from([200, 307, 404, 500]),
            st.one_of(st.sampled_from(LATENCY_BUCKETS), st.floats(0, 10, allow_nan=False)),
            st.sampled_from([("GET", "signed"), ("GET", "reused"), ("HEAD", "shortened")]),
        ),
        max_size=60,
    )
)
def test_request_counts_expose_what_prometheus_clients_metrics_would(observations):
    """The hot path's plain counters against prometheus_client's own Counter and
    Histogram fed the same observations: the same exposition, line for line."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counts = RequestCounts()
    ours.register(counts)
    requests = Counter(
        "gateway_requests",
        "HTTP requests answered, by route template, method and status.",
        ["route", "method", "status"],
        registry=theirs,
    )
    latency = Histogram(
        "gateway_request_duration_seconds",
        "Time to answer, by route template.",
        ["route"],
        buckets=LATENCY_BUCKETS,
        registry=theirs,
    )
    presigns = Counter(
        "gateway_presigned_urls",
        "Presigned URLs handed out, by method and whether signed now or reused.",
        ["method", "source"],
        registry=theirs,
    )
    for route, method, status, seconds, (signed_method, source) in observations:
        counts.count_request(route, method, status, seconds)
        counts.count_presign(signed_method, source)
        label = method if method in KNOWN_METHODS else "other"
        requests.labels(route, label, str(status)).inc()
        latency.labels(route).observe(seconds)
        presigns.labels(signed_method, source).inc()
    prefixes = ("gateway_requests", "gateway_request_duration_seconds", "gateway_presigned_urls")
    assert exposition_lines(ours, prefixes) == exposition_lines(theirs, prefixes)
    buckets = exposition_lines(ours, ("gateway_request_duration_seconds_bucket",))
    assert len(buckets) == 14 * len({route for route, *_ in observations})


async def test_metrics_time_the_collectors_pauses_while_the_app_runs(serve_app, settings):
    client = await serve_app(create_app(settings))
    hook = client.app[METRICS].collector_pauses
    assert hook in gc.callbacks

    def full_collections(text: str) -> float:
        return sample(text, "gateway_gc_pause_seconds_count", generation="2")

    before = full_collections(await (await client.get("/metrics")).text())
    gc.collect()
    text = await (await client.get("/metrics")).text()

    assert full_collections(text) >= before + 1
    assert sample(text, "gateway_gc_pause_seconds_bucket", generation="2", le="+Inf") == (
        full_collections(text)
    )
    assert sample(text, "gateway_gc_pause_seconds_sum", generation="2") > 0
    for generation in "01":
        assert f'gateway_gc_pause_seconds_count{{generation="{generation}"}}' in text
    await client.close()
    assert hook not in gc.callbacks  # the process's hooks are not the app's to keep


async def test_metrics_can_move_to_their_own_port(serve_app, settings):
    port = free_port()
    client = await serve_app(create_app(replace(settings, metrics_port=port)))
    assert (await client.get("/metrics")).status == 401  # not public on the API port
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            assert "gateway_requests_total" in await response.text()


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("abc-123_x.y:z", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("has space", False),
        ("new\\nline", False),
        ("ixk_<script>", False),
        ("ixk_UmAzQFoLjnBLEejadYD7tssghrtvkWgR2vgMTu", False),  # a token: never echoed
        ("", False),
    ],
)
async def test_request_ids_are_honoured_only_when_sane(client, incoming, kept):
    response = await client.get("/healthz", headers={"X-Request-ID": incoming} if incoming else {})
    echoed = response.headers["X-Request-ID"]
    if kept:
        assert echoed == incoming
    else:
        assert re.fullmatch(r"[0-9a-f]{32,}", echoed)


async def test_access_log_lines_carry_context_but_no_query_or_secret(
    client, make_tenant, make_attachment, caplog
):
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    refused = await client.get(
        f"/api/v1/attachments/{attachment_id}/download?access_token={tenant.read_token}&x=1",
        headers={**tenant.auth(), "X-Request-ID": "log-check-0"},
        allow_redirects=False,
    )
    assert refused.status == 401  # a token in the URL is refused, even beside a good header
    response = await client.get(
        f"/api/v1/attachments/{attachment_id}/download?x=1",
        headers={**tenant.auth(), "X-Request-ID": "log-check-1"},
        allow_redirects=False,
    )
    assert response.status == 307
    refused_lines = [r for r in caplog.records if getattr(r, "request_id", None) == "log-check-0"]
    assert refused_lines and all(
        tenant.read_token not in json.dumps(r.__dict__, default=str) for r in refused_lines
    )
    records = [r for r in caplog.records if getattr(r, "request_id", None) == "log-check-1"]
    assert len(records) == 1
    record = records[0]
    assert record.method == "GET"
    assert record.path == f"/api/v1/attachments/{attachment_id}/download"
    assert record.status == 307
    assert record.workspace_id == str(tenant.workspace_id)
    assert record.key_prefix == tenant.read_token[:12]
    assert record.duration_ms > 0
    from service.web.logs import JsonFormatter

    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "info" and line["request_id"] == "log-check-1"
    rendered = json.dumps(line)
    assert tenant.read_token not in rendered and "access_token" not in rendered


async def test_the_served_document_is_the_document_and_public(client):
    response = await client.get("/api/v1/openapi.json")
    assert response.status == 200
    assert await response.json() == DOCUMENT


async def test_served_routes_and_the_document_agree(serve_app, settings):
    # Every optional route on: secret scanning is served only with its keys configured.
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    configured = replace(settings, secret_scanning_public_keys=json.dumps({"k": pem}))
    client = await serve_app(create_app(configured))
    served = set()
    assets = docs_page().assets  # the API page's files: part of its route, not an API
    for route in client.app.router.routes():
        path = route.resource.canonical
        if route.method == "HEAD" and not path.startswith("/api/v1/attachments"):
            continue  # aiohttp adds HEAD to every GET; only the attachments' are an API
        if path not in assets:
            served.add((path, route.method.lower()))
    documented = {
        (path, method)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    # Preflights are answered by the CORS middleware, not by routes (tests/test_cors.py).
    preflights = {(path, method) for path, method in documented if method == "options"}
    assert served == documented - preflights
    assert {path for path, _ in preflights} == {
        path for path, _ in served if path.startswith("/api/v1/attachments")
    }
