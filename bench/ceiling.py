"""The ceiling: a bare aiohttp app answering the download route with a constant 307.

Same server settings as the gateway (uvloop, no access log at LOG_LEVEL=WARNING);
nothing decided, nothing signed: what aiohttp itself costs per redirect.
"""

from __future__ import annotations

import sys

from aiohttp import web

from service.server import LISTEN_BACKLOG, new_event_loop

LOCATION = "http://127.0.0.1:9/attachments/objects/constant?X-Amz-Signature=0"


async def redirect(request: web.Request) -> web.Response:
    return web.Response(status=307, headers={"Location": LOCATION}, body=b"{}")


def main() -> None:
    app = web.Application()
    app.router.add_get("/api/v1/attachments/{id}/download", redirect)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, backlog=LISTEN_BACKLOG,
                loop=new_event_loop())  # fmt: skip


if __name__ == "__main__":
    main()
