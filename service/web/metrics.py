"""Prometheus metrics, one registry per app (no global state, no label from user input)."""

from __future__ import annotations

import gc
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..data.caches import TTLCache
from .audit import AUDIT
from .caches import CACHES, LISTENER_STATUS
from .config import SETTINGS
from .database import DATABASE
from .limits import RATE_LIMITS
from .storage import STORAGE

# Redirects take well under a millisecond when warm; outages are bounded by timeouts (~2 s).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


# Methods are labelled as themselves only when known: a client can send any token.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestCounts(Collector):
    """Requests by route, method and status, their latency by route, and presigned URLs by
    method and source: what every download updates, counted in plain dicts and lists.

    prometheus_client's metrics take a lock on every update, several times the cost of
    these dict updates (docs/performance.md). Only the event loop's thread writes them,
    and scrapes read them on that loop. Exposed as a Counter and a Histogram would be
    (tests/test_operability.py compares)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        # route -> observations per bucket (not cumulative), the last one past every bound
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = {}
        self.presigns: dict[tuple[str, str], int] = {}

    def count_request(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in KNOWN_METHODS:
            method = "other"
        key = (route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        buckets = self.latency.get(route)
        if buckets is None:
            buckets = self.latency[route] = [0] * (len(LATENCY_BUCKETS) + 1)
            self.latency_sum[route] = 0.0
        # Prometheus buckets count observations <= their bound: bisect_left finds it.
        buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum[route] += seconds

    def count_presign(self, method: str, source: str) -> None:
        key = (method, source)
        self.presigns[key] = self.presigns.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "gateway_requests",
            "HTTP requests answered, by route template, method and status.",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in list(self.requests.items()):
            requests.add_metric([route, method, str(status)], count)
        latency = HistogramMetricFamily(
            "gateway_request_duration_seconds",
            "Time to answer, by route template.",
            labels=["route"],
        )
        bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
        for route, counts in list(self.latency.items()):
            cumulative = list(accumulate(counts))
            latency.add_metric(
                [route], list(zip(bounds, cumulative, strict=True)), self.latency_sum[route]
            )
        presigns = CounterMetricFamily(
            "gateway_presigned_urls",
            "Presigned URLs handed out, by method and whether signed now or reused.",
            labels=["method", "source"],
        )
        for (method, source), count in list(self.presigns.items()):
            presigns.add_metric([method, source], count)
        yield from (requests, latency, presigns)


# A young collection takes well under a millisecond; a full one over a large heap, far more.
PAUSE_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 1)


class CollectorPauses(Collector):
    """The garbage collector's collections, by generation, and how long each paused the
    process: a pause holds up every request in flight, so it shows in the tail of the
    latency, but not as any handler's time. Fed by `gc.callbacks`, which run in the thread
    that triggered the collection; a rare lost update there is harmless."""

    def __init__(self) -> None:
        self._started = 0.0
        self.pauses = [[0] * (len(PAUSE_BUCKETS) + 1) for _ in range(3)]
        self.seconds = [0.0, 0.0, 0.0]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = info["generation"]
        self.pauses[generation][bisect_left(PAUSE_BUCKETS, pause)] += 1
        self.seconds[generation] += pause

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "gateway_gc_pause_seconds",
            "Garbage collections by generation (2: full), and how long each paused the process.",
            labels=["generation"],
        )
        bounds = [*map(floatToGoString, PAUSE_BUCKETS), "+Inf"]
        for generation, counts in enumerate(self.pauses):
            cumulative = list(accumulate(counts))
            family.add_metric(
                [str(generation)],
                list(zip(bounds, cumulative, strict=True)),
                self.seconds[generation],
            )
        yield family


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    counts: RequestCounts
    auth_failures: Counter  # refusals only: off the download's hot path
    collector_pauses: CollectorPauses


METRICS = web.AppKey("metrics", Metrics)


def create_metrics(app: web.Application) -> Metrics:
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(app))
    counts = RequestCounts()
    registry.register(counts)
    collector_pauses = CollectorPauses()
    registry.register(collector_pauses)
    return Metrics(
        registry=registry,
        counts=counts,
        auth_failures=Counter(
            "gateway_auth_failures",
            "Requests refused by authentication or authorization, by reason.",
            ["reason"],
            registry=registry,
        ),
        collector_pauses=collector_pauses,
    )


async def collector_pauses_context(app: web.Application) -> AsyncIterator[None]:
    """The collector's pauses are counted while the app runs (`gc.callbacks` is the
    process's: each app takes its own hook out when it stops)."""
    hook = app[METRICS].collector_pauses
    gc.callbacks.append(hook)
    yield
    gc.callbacks.remove(hook)


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
        named_caches: dict[str, TTLCache[Any, Any]] = {
            "keys": caches.keys,
            "attachments": caches.attachments,
            "urls": caches.urls,
        }
        for name, cache in named_caches.items():
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
        listener = self.app.get(LISTENER_STATUS)
        if listener is not None:
            delivering = GaugeMetricFamily(
                "gateway_invalidation_delivering",
                "1 while the listener hears its own probe NOTIFY (0: caches off).",
            )
            delivering.add_metric([], 1 if listener.delivering else 0)
            yield delivering
        trail = self.app.get(AUDIT)
        if trail is not None:
            written = CounterMetricFamily("gateway_audit_written", "Audit rows written.")
            written.add_metric([], trail.written)
            dropped = CounterMetricFamily(
                "gateway_audit_dropped",
                "Audit rows dropped: the queue was full, or Postgres refused their batch.",
            )
            dropped.add_metric([], trail.dropped)
            queued = GaugeMetricFamily("gateway_audit_queued", "Audit rows waiting to be written.")
            queued.add_metric([], len(trail))
            yield from (written, dropped, queued)
        shared = self.app[RATE_LIMITS].shared
        if shared is not None:
            up = GaugeMetricFamily(
                "gateway_rate_limit_shared",
                "1 while the rate limits are Redis' (cluster-wide); 0: each process's own.",
            )
            up.add_metric([], 1 if shared.up else 0)
            fallbacks = CounterMetricFamily(
                "gateway_rate_limit_fallbacks",
                "Requests limited by the process's own buckets because Redis did not answer.",
            )
            fallbacks.add_metric([], shared.fallbacks)
            yield from (up, fallbacks)
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
