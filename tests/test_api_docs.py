"""The API page at /api/v1/docs, as HTTP sees it: public, a strict CSP, its assets cached
forever under their digest; nothing else changes. tests/test_browser.py renders it."""

from __future__ import annotations

import gzip
import re

import pytest

from service.web.api_docs import ASSET_CACHING, docs_page

ASSET = re.compile(r'(?:src|href)="(docs/[0-9a-f]{16}/[^"]+)"')


async def test_the_page_loads_without_a_key(client):
    response = await client.get("/api/v1/docs")
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    assert 'data-spec-url="openapi.json"' in page
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "<script>" not in page and "<style" not in page  # nothing inline
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Request-ID"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert sorted(ASSET.findall(page)) == sorted(
        path.removeprefix("/api/v1/") for path in docs_page().assets
    )


async def test_assets_are_cached_forever_under_their_digest(client):
    page = await (await client.get("/api/v1/docs")).text()
    for path in ASSET.findall(page):
        response = await client.get(f"/api/v1/{path}", headers={"Accept-Encoding": "identity"})
        assert response.status == 200, path
        assert response.headers["Cache-Control"] == ASSET_CACHING
        assert await response.read() == docs_page().assets[f"/api/v1/{path}"].body
    bundle = next(path for path in ASSET.findall(page) if path.endswith("swagger-ui-bundle.js"))
    response = await client.get(
        f"/api/v1/{bundle}", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.content_type == "text/javascript"
    raw = await response.read()
    assert len(raw) < len(docs_page().assets[f"/api/v1/{bundle}"].body) / 3
    assert gzip.decompress(raw) == docs_page().assets[f"/api/v1/{bundle}"].body


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip, deflate, br", True),
        ("GZIP", True),  # content codings are case-insensitive
        ("br;q=1.0, gzip;q=0.5", True),
        ("*", True),
        ("gzip;q=0, identity", False),  # "never gzip"
        ("gzip; q=0.000", False),
        ("*;q=0", False),
        ("x-gzip", True),  # the same coding (RFC 9110 §8.4.1.3)
        ("*;q=0, x-gzip;q=0.1", True),
        ("x-gzip-ish, br", False),
        ("", False),
    ],
)
async def test_assets_are_gzipped_only_when_the_client_takes_gzip(client, accept_encoding, gzipped):
    page = await (await client.get("/api/v1/docs")).text()
    bundle = next(path for path in ASSET.findall(page) if path.endswith("swagger-ui-bundle.js"))
    response = await client.get(
        f"/api/v1/{bundle}", headers={"Accept-Encoding": accept_encoding}, auto_decompress=False
    )
    assert response.status == 200
    assert (response.headers.get("Content-Encoding") == "gzip") is gzipped
    body = docs_page().assets[f"/api/v1/{bundle}"].body
    assert (gzip.decompress(await response.read()) if gzipped else await response.read()) == body


async def test_nothing_else_becomes_public(client):
    for path in (
        "/api/v1/docs/",
        "/api/v1/docs/0000000000000000/swagger-ui-bundle.js",
        "/api/v1/docs/index.html",
    ):
        response = await client.get(path)
        assert response.status == 401, path
    response = await client.get("/api/v1/attachments")
    assert response.status == 401
    assert response.headers["Cache-Control"] == "no-store"
