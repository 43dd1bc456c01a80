"""The interactive API page at /api/v1/docs: Swagger UI, served by the gateway itself.

Swagger UI 5 renders OpenAPI 3.1. Its files come from swagger-ui-py, which bundles them
(the PyPI alternatives carry Swagger UI 3 or 4, which cannot read 3.1; npm's
swagger-ui-dist would need Node.js to build the image). Only its static files are used,
never its Python code. The page makes no request beyond this origin: the CSP says so to
the browser, and tests/test_browser.py checks it.

Assets are served under a path made of their content's digest, so they can be cached
forever: another Swagger UI or page version is another path.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib.util
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from aiohttp import web

from ..core.negotiation import weights
from .config import Handler

DOCS_PATH = "/api/v1/docs"
OPENAPI_PATH = "/api/v1/openapi.json"

OUR_FILES = Path(__file__).resolve().parent / "api_docs_assets"
SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
}

# Nothing but this origin, no inline script or style, no framing, no form posts.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
PAGE_CACHING = "no-cache"
ASSET_CACHING = "public, max-age=31536000, immutable"


@dataclass
class Asset:
    body: bytes
    content_type: str
    compressed: bytes | None = field(default=None, repr=False)

    def gzipped(self) -> bytes:
        if self.compressed is None:
            self.compressed = gzip.compress(self.body, compresslevel=6, mtime=0)
        return self.compressed


@dataclass(frozen=True)
class DocsPage:
    html: bytes
    assets: dict[str, Asset]  # path -> asset

    @property
    def paths(self) -> frozenset[str]:
        return frozenset({DOCS_PATH, *self.assets})


def swagger_ui_files() -> Path:
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed: the API page needs its files")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@cache
def docs_page() -> DocsPage:
    """Read once per process: package files do not change while it runs."""
    sources = {name: swagger_ui_files() / name for name in SWAGGER_UI_FILES}
    sources |= {
        "api-docs.js": OUR_FILES / "api-docs.js",
        "api-docs.css": OUR_FILES / "api-docs.css",
    }
    bodies = {name: path.read_bytes() for name, path in sorted(sources.items())}
    digest = hashlib.sha256()
    for name, body in bodies.items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
    # Relative to the page, so a path prefix added by a proxy keeps working.
    assets_dir = f"docs/{digest.hexdigest()[:16]}"
    html = (OUR_FILES / "index.html").read_text()
    html = html.replace("{assets}", assets_dir).replace("{spec}", "openapi.json")
    assets = {
        f"/api/v1/{assets_dir}/{name}": Asset(body, CONTENT_TYPES[Path(name).suffix])
        for name, body in bodies.items()
    }
    return DocsPage(html.encode(), assets)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether `Accept-Encoding` admits gzip (RFC 9110 §12.5.3): named, or `*`, with a
    weight above 0, in any case; `gzip;q=0` refuses it."""
    codings = weights(accept_encoding)
    # RFC 9110 §8.4.1.3: x-gzip is gzip.
    named = codings.get("gzip", codings.get("x-gzip"))
    return (named if named is not None else codings.get("*", 0.0)) > 0


def docs_handlers() -> dict[str, Handler]:
    """The page and each of its assets, by exact path (all public)."""
    page = docs_page()

    async def docs(request: web.Request) -> web.Response:
        return web.Response(
            body=page.html,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "Cache-Control": PAGE_CACHING,
            },
        )

    async def asset(request: web.Request) -> web.Response:
        found = page.assets[request.path]
        headers = {"Cache-Control": ASSET_CACHING, "Vary": "Accept-Encoding"}
        if accepts_gzip(request.headers.get("Accept-Encoding", "")) and (
            found.content_type != "image/png"
        ):
            # Compressed once, off the event loop (the bundle is 1.5 MB).
            body = await asyncio.to_thread(found.gzipped)
            headers["Content-Encoding"] = "gzip"
        else:
            body = found.body
        return web.Response(body=body, content_type=found.content_type, headers=headers)

    return {DOCS_PATH: docs, **dict.fromkeys(page.assets, asset)}
