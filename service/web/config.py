"""What every part of the web layer shares: the app's settings and the handler type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ..core.settings import Settings

SETTINGS = web.AppKey("settings", Settings)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
