"""The access log: one JSON line per request that never carries a secret.

aiohttp's default access log format (`%r`) includes the query string; ours logs
the path only, and never a header, so tokens and presigned URLs stay out.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .auth import PRINCIPAL
from .request_ids import REQUEST_ID


class AccessLogger(AbstractAccessLogger):
    @property
    def enabled(self) -> bool:
        # aiohttp asks before every request: below INFO, no log record is even built.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        principal = request.get(PRINCIPAL)
        self.logger.info(
            "request",
            extra={
                "request_id": request.get(REQUEST_ID),
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(time * 1000, 3),
                "workspace_id": str(principal.workspace_id) if principal else None,
                "key_prefix": principal.key_prefix if principal else None,
            },
        )
