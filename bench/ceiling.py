"""The ceiling: a bare aiohttp app answering the download route with a constant 307.

Same server settings as the gateway (service.server.processes.run_app: uvloop, its listener and
backlog, no access log);
nothing decided, nothing signed: what aiohttp itself costs per redirect.
"""

from __future__ import annotations

import sys

from aiohttp import web

from service.server.processes import run_app

LOCATION = "http://127.0.0.1:9/attachments/objects/constant?X-Amz-Signature=0"


async def redirect(request: web.Request) -> web.Response:
    return web.Response(status=307, headers={"Location": LOCATION}, body=b"{}")


def main() -> None:
    """`ceiling.py PORT [reuse]`: with "reuse", several of them can share the port
    (SO_REUSEPORT), as the gateway's workers do (bench/workers.py)."""
    app = web.Application()
    app.router.add_get("/api/v1/attachments/{id}/download", redirect)
    reuse_port = sys.argv[2:] == ["reuse"]
    run_app(
        app,
        "127.0.0.1",
        int(sys.argv[1]),
        shutdown_timeout=1,
        access_log=False,
        reuse_port=reuse_port,
    )


if __name__ == "__main__":
    main()
