"""Prometheus metrics, one registry per app (no global state, no label from user input)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from .keys import AUDIT, CACHES, DATABASE, METRICS, SETTINGS, STORAGE

# Redirects take well under a millisecond when warm; outages are bounded by timeouts (~2 s).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


# Methods are labelled as themselves only when known: a client can send any token.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    presigns: Counter
    auth_failures: Counter
    # Labelled children, looked up once: labels() validates and locks on every call.
    _children: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def count_presign(self, method: str, source: str) -> None:
        key = ("presign", method, source)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.presigns.labels(method, source)
        child.inc()

    def count_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, str(status))
        children = self._children.get(key)
        if children is None:
            if method not in KNOWN_METHODS:
                method = "other"
            children = self._children[key] = (
                self.requests.labels(route, method, key[2]),
                self.latency.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)


def create_metrics(app: web.Application) -> Metrics:
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(app))
    return Metrics(
        registry=registry,
        requests=Counter(
            "gateway_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        ),
        latency=Histogram(
            "gateway_request_duration_seconds",
            "Time to answer, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        presigns=Counter(
            "gateway_presigned_urls",
            "Presigned URLs handed out, by method and whether signed now or reused.",
            ["method", "source"],
            registry=registry,
        ),
        auth_failures=Counter(
            "gateway_auth_failures",
            "Requests refused by authentication or authorization, by reason.",
            ["reason"],
            registry=registry,
        ),
    )


def route_label(request: web.Request) -> str:
    """The route's template, never the raw path: label values stay few and secret-free."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class RuntimeCollector(Collector):
    """Reads the pool and the caches when scraped: nothing extra on the request path."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        caches = self.app[CACHES]
        lookups = CounterMetricFamily(
            "gateway_cache_lookups",
            "Cache lookups by cache and result.",
            labels=["cache", "result"],
        )
        entries = GaugeMetricFamily("gateway_cache_entries", "Cached entries.", labels=["cache"])
        for name, cache in (("keys", caches.keys), ("attachments", caches.attachments),
                            ("urls", caches.urls)):  # fmt: skip
            lookups.add_metric([name, "hit"], cache.hits)
            lookups.add_metric([name, "miss"], cache.misses)
            entries.add_metric([name], len(cache))
        live = GaugeMetricFamily("gateway_cache_live", "1 while caches are on (listener up).")
        live.add_metric([], 1 if caches.live else 0)
        flushes = CounterMetricFamily(
            "gateway_cache_flushes", "Whole-cache flushes (invalidation listener lost or back)."
        )
        flushes.add_metric([], caches.flushes)
        yield from (lookups, entries, live, flushes)
        trail = self.app.get(AUDIT)
        if trail is not None:
            written = CounterMetricFamily("gateway_audit_written", "Audit rows written.")
            written.add_metric([], trail.written)
            dropped = CounterMetricFamily(
                "gateway_audit_dropped", "Audit rows dropped: the queue was full."
            )
            dropped.add_metric([], trail.dropped)
            queued = GaugeMetricFamily("gateway_audit_queued", "Audit rows waiting to be written.")
            queued.add_metric([], len(trail))
            yield from (written, dropped, queued)
        storage = self.app.get(STORAGE)
        if storage is not None and storage.client is not None:
            reachable = GaugeMetricFamily(
                "gateway_storage_reachable", "1 while the S3 endpoint accepts connections."
            )
            reachable.add_metric([], 1 if storage.reachable else 0)
            yield reachable
        database = self.app.get(DATABASE)
        if database is None:
            return
        pool = database.pool
        size, idle = pool.get_size(), pool.get_idle_size()
        gauge = GaugeMetricFamily(
            "gateway_db_pool_connections", "Database pool connections by state.", labels=["state"]
        )
        gauge.add_metric(["open"], size)
        gauge.add_metric(["in_use"], size - idle)
        gauge.add_metric(["max"], pool.get_max_size())
        yield gauge


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_PLAIN_0_0_4
    return response


async def metrics_site_context(app: web.Application) -> AsyncIterator[None]:
    """With METRICS_PORT set, `/metrics` is served there alone (same registry), e.g. so
    that it stays off the public port."""
    settings = app[SETTINGS]
    metrics_app = web.Application()
    metrics_app[METRICS] = app[METRICS]
    metrics_app.router.add_get("/metrics", metrics_handler)
    runner = web.AppRunner(metrics_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner, settings.host, settings.metrics_port, reuse_port=settings.workers > 1 or None
    )
    await site.start()
    yield
    await runner.cleanup()
