"""Settings: one frozen dataclass, read from the environment and validated once."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from .secret_scanning import PublicKeys, load_public_keys
from .text import BUCKET_RULE, is_storable_bucket

DEFAULT_MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

# SigV4 refuses an X-Amz-Expires outside 1..604800 (seven days).
MAX_PRESIGN_EXPIRES_SECONDS = 604_800
# S3 takes at most 5 GiB in one PUT, and 5 TiB in a multipart upload.
MAX_SINGLE_PUT_BYTES = 5 * 1024**3
MAX_UPLOAD_BYTES = 5 * 1024**4
MIN_PART_BYTES = 5 * 1024**2
# CORS_ALLOWED_ORIGINS's value for "every origin".
ANY_ORIGIN = "*"
# `logging`'s own names, in any case.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# An origin as browsers serialize it: scheme, host and an optional port, nothing more.
_ORIGIN = re.compile(
    r"(?P<scheme>https?)://(?:(?P<name>[a-z0-9.\-]+)|\[(?P<ipv6>[0-9a-f:.]+)\])(?::(?P<port>[0-9]{1,5}))?"
)


# A URL is handed out again only if it lives at least this many reuse windows: whoever
# gets it then still has three quarters of the lifetime the URL was asked for.
LIFETIME_PER_REUSE_WINDOW = 4


def reusable_for(lifetime: float, reuse_window: float) -> bool:
    """Whether a URL of `lifetime` seconds may be reused for `reuse_window` seconds."""
    return reuse_window > 0 and lifetime >= LIFETIME_PER_REUSE_WINDOW * reuse_window


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    # Postgres itself, not a transaction pooler: for what needs a session of its own
    # (the invalidation LISTEN, the migrations' advisory lock). Default: DATABASE_URL.
    database_direct_url: str | None = None
    # asyncpg's prepared-statement cache per connection; 0 behind PgBouncer in
    # transaction mode (before 1.21, or without max_prepared_statements).
    db_statement_cache_size: int = 100
    db_pool_min_size: int = 0
    db_pool_max_size: int = 32
    db_connect_timeout: float = 2.0
    db_acquire_timeout: float = 2.0
    db_statement_timeout: float = 2.0

    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_addressing_style: str = "path"
    s3_default_bucket: str = "attachments"
    # How often the S3 endpoint is checked for a listener (0: never); see storage/probe.py.
    s3_probe_interval_seconds: float = 5.0

    # The largest upload POST /api/v1/attachments offers (S3's 5 TiB), and the largest
    # it offers as one PUT; above that, a multipart upload of parts of about
    # UPLOAD_PART_BYTES. `complete` reads an object itself to check its SHA-256 only up
    # to UPLOAD_VERIFY_MAX_BYTES (when the storage did not check it).
    upload_max_bytes: int = MAX_UPLOAD_BYTES
    upload_single_put_max_bytes: int = MAX_SINGLE_PUT_BYTES
    upload_part_bytes: int = 64 * 1024**2
    upload_verify_max_bytes: int = 1024**3

    presign_expires_seconds: int = 900
    # The longest `?expires_in=` a download may ask for.
    presign_max_expires_seconds: int = 3600
    # "fast": our SigV4 signer (tests/test_signer.py proves it equal to botocore);
    # "botocore": aiobotocore's generate_presigned_url, the reference.
    presigner: str = "fast"
    # A URL may be handed out again for this long (0: never); see docs/api.md, "URL reuse".
    url_reuse_seconds: int = 60
    url_cache_size: int = 50_000
    key_cache_size: int = 10_000
    attachment_cache_size: int = 50_000
    cache_ttl_seconds: float = 30.0

    # Abuse limits (requests per second, burst); a rate of 0 turns a limit off. Per process.
    rate_limit_per_key: float = 50.0
    rate_limit_burst_per_key: int = 100
    rate_limit_per_workspace: float = 200.0
    rate_limit_burst_per_workspace: int = 400
    failed_auth_per_address: float = 1.0
    failed_auth_burst_per_address: int = 20
    # Where the buckets live: "local" (each process its own) or "redis" (REDIS_URL, shared
    # by every replica; local again while Redis does not answer within the timeout).
    # Secret-scanning reports per second and burst per client address (web/secret_scanning.py).
    secret_scanning_per_address: float = 1.0
    secret_scanning_burst_per_address: int = 30
    rate_limit_backend: str = "local"
    redis_url: str | None = None
    redis_timeout_seconds: float = 0.1

    # The download audit trail (see data/audit/trail.py).
    audit_enabled: bool = True
    audit_queue_size: int = 100_000
    audit_flush_seconds: float = 1.0
    audit_retention_days: int = 400
    # Comma-separated addresses or networks whose X-Forwarded-For is believed.
    trusted_proxies: str = ""
    # Browser pages allowed to call /api/v1 (comma-separated origins, or "*"); empty: CORS off.
    cors_allowed_origins: str = ""
    # How long a browser may reuse a preflight's answer, in seconds.
    cors_max_age: int = 7200
    # GitHub's secret-scanning public keys, `{"<key identifier>": "<PEM>"}`; empty: the
    # report route is off (core/secret_scanning.py).
    secret_scanning_public_keys: str = ""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    metrics_port: int | None = None
    shutdown_grace_seconds: float = 10.0
    log_level: str = "INFO"
    migrations_dir: Path = DEFAULT_MIGRATIONS_DIR

    def __post_init__(self) -> None:
        if not is_storable_bucket(self.s3_default_bucket):
            raise SettingsError(f"S3_DEFAULT_BUCKET must be {BUCKET_RULE}")
        if not 1 <= self.presign_expires_seconds <= MAX_PRESIGN_EXPIRES_SECONDS:
            raise SettingsError(f"PRESIGN_EXPIRES_SECONDS must be 1..{MAX_PRESIGN_EXPIRES_SECONDS}")
        if not 1 <= self.presign_max_expires_seconds <= MAX_PRESIGN_EXPIRES_SECONDS:
            raise SettingsError(
                f"PRESIGN_MAX_EXPIRES_SECONDS must be 1..{MAX_PRESIGN_EXPIRES_SECONDS}"
            )
        if self.presign_expires_seconds > self.presign_max_expires_seconds:
            raise SettingsError(
                "PRESIGN_EXPIRES_SECONDS must not exceed PRESIGN_MAX_EXPIRES_SECONDS"
            )
        if not 0 <= self.upload_max_bytes <= MAX_UPLOAD_BYTES:
            raise SettingsError(f"UPLOAD_MAX_BYTES must be 0..{MAX_UPLOAD_BYTES}")
        if not MIN_PART_BYTES <= self.upload_single_put_max_bytes <= MAX_SINGLE_PUT_BYTES:
            raise SettingsError(
                f"UPLOAD_SINGLE_PUT_MAX_BYTES must be {MIN_PART_BYTES}..{MAX_SINGLE_PUT_BYTES}"
            )
        if not MIN_PART_BYTES <= self.upload_part_bytes <= MAX_SINGLE_PUT_BYTES:
            raise SettingsError(
                f"UPLOAD_PART_BYTES must be {MIN_PART_BYTES}..{MAX_SINGLE_PUT_BYTES}"
            )
        if self.upload_verify_max_bytes < 0:
            raise SettingsError("UPLOAD_VERIFY_MAX_BYTES must be >= 0")
        if self.presigner not in ("fast", "botocore"):
            raise SettingsError("PRESIGNER must be 'fast' or 'botocore'")
        if self.url_reuse_seconds < 0:
            raise SettingsError("URL_REUSE_SECONDS must be >= 0")
        for name in ("url_cache_size", "key_cache_size", "attachment_cache_size"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name.upper()} must be >= 0")
        for name in (
            "rate_limit_per_key",
            "rate_limit_per_workspace",
            "failed_auth_per_address",
            "secret_scanning_per_address",
        ):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name.upper()} must be 0 or more")
        for name in (
            "rate_limit_burst_per_key",
            "rate_limit_burst_per_workspace",
            "failed_auth_burst_per_address",
            "secret_scanning_burst_per_address",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.upper()} must be 1 or more")
        if self.rate_limit_backend not in ("local", "redis"):
            raise SettingsError("RATE_LIMIT_BACKEND must be 'local' or 'redis'")
        if self.rate_limit_backend == "redis" and not self.redis_url:
            raise SettingsError("RATE_LIMIT_BACKEND=redis needs REDIS_URL")
        # Half a configuration would leave each replica granting the limits anew, silently.
        if self.redis_url and self.rate_limit_backend != "redis":
            raise SettingsError("REDIS_URL is only read with RATE_LIMIT_BACKEND=redis: set both")
        if self.redis_timeout_seconds <= 0:
            raise SettingsError("REDIS_TIMEOUT_SECONDS must be positive")
        try:
            _networks(self.trusted_proxies)
        except ValueError:
            raise SettingsError("TRUSTED_PROXIES must be addresses or networks") from None
        try:
            _origins(self.cors_allowed_origins)
        except ValueError as bad:
            raise SettingsError(f"CORS_ALLOWED_ORIGINS: {bad}") from None
        if self.cors_max_age < 0:
            raise SettingsError("CORS_MAX_AGE must be 0 or more")
        try:
            _report_keys(self.secret_scanning_public_keys)
        except ValueError as bad:
            raise SettingsError(f"SECRET_SCANNING_PUBLIC_KEYS {bad}") from None
        if self.audit_queue_size < 1 or self.audit_flush_seconds <= 0:
            raise SettingsError("AUDIT_QUEUE_SIZE and AUDIT_FLUSH_SECONDS must be positive")
        if self.audit_retention_days < 1:
            raise SettingsError("AUDIT_RETENTION_DAYS must be 1 or more")
        if self.s3_probe_interval_seconds < 0:
            raise SettingsError("S3_PROBE_INTERVAL_SECONDS must be 0 or more")
        if self.cache_ttl_seconds < 0:
            raise SettingsError("CACHE_TTL_SECONDS must be >= 0")
        if self.s3_addressing_style not in ("path", "virtual"):
            raise SettingsError("S3_ADDRESSING_STYLE must be 'path' or 'virtual'")
        if self.db_pool_max_size < 1 or self.db_pool_min_size < 0:
            raise SettingsError("DB_POOL_MAX_SIZE must be >= 1 and DB_POOL_MIN_SIZE >= 0")
        if self.db_pool_min_size > self.db_pool_max_size:
            raise SettingsError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")
        if self.workers < 1:
            raise SettingsError("WORKERS must be >= 1")
        for name in ("port", "metrics_port"):
            port = getattr(self, name)
            if port is not None and not 1 <= port <= 65535:
                raise SettingsError(f"{name.upper()} must be a port, 1 to 65535")
        if self.log_level.upper() not in LOG_LEVELS:
            raise SettingsError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        if self.db_statement_cache_size < 0:
            raise SettingsError("DB_STATEMENT_CACHE_SIZE must be 0 or more")
        for name in ("db_connect_timeout", "db_acquire_timeout", "db_statement_timeout"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.upper()} must be > 0")

    def check_listeners(self) -> None:
        """For a server about to listen, once its port is final (serve's --port wins over
        PORT): the metrics listener needs a port of its own, else both would take it
        (SO_REUSEPORT with workers) and the kernel hand public connections to /metrics."""
        if self.metrics_port == self.port:
            raise SettingsError(f"METRICS_PORT must differ from the port served ({self.port})")

    @property
    def trusted_proxy_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        return _networks(self.trusted_proxies)

    @property
    def cors_origins(self) -> frozenset[str]:
        """The allowed origins, lowercased; {ANY_ORIGIN} for all, empty when CORS is off."""
        return _origins(self.cors_allowed_origins)

    @property
    def secret_scanning_keys(self) -> PublicKeys:
        """GitHub's public keys by identifier; empty when the report route is off."""
        return _report_keys(self.secret_scanning_public_keys)

    @property
    def direct_database_url(self) -> str:
        """Where sessions are real: DATABASE_DIRECT_URL, else DATABASE_URL."""
        return self.database_direct_url or self.database_url

    @property
    def url_reuse_window(self) -> int:
        """Seconds a URL may be handed out again: 0 when URLs of the default lifetime
        would fall too short for it (`reusable_for`)."""
        if not reusable_for(self.presign_expires_seconds, self.url_reuse_seconds):
            return 0
        return self.url_reuse_seconds

    @property
    def signing_endpoint_url(self) -> str | None:
        """The S3 address put into URLs handed to clients."""
        return self.s3_public_endpoint_url or self.s3_endpoint_url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from `environ` (default: os.environ plus an optional `.env` in the
        working directory, whose values never override the real environment); an empty
        value means unset."""
        if environ is None:
            try:
                from_file = {k: v for k, v in dotenv_values(".env").items() if v is not None}
            except UnicodeDecodeError:
                raise SettingsError(".env is not UTF-8 text") from None
            environ = {**from_file, **os.environ}
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = environ.get(field.name.upper(), "").strip()
            if not raw:
                continue
            values[field.name] = _convert(field.name, field.type, raw)
        values.update(overrides)
        return cls(**values)


def _convert(name: str, type_name: Any, raw: str) -> Any:
    kind = str(type_name).removesuffix(" | None")
    if kind == "bool":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name.upper()} must be true or false, got {raw!r}")
    if kind == "Path":
        return Path(raw)
    if kind not in ("int", "float"):
        return raw
    try:
        number = int(raw) if kind == "int" else float(raw)
    except ValueError:
        raise SettingsError(f"{name.upper()} must be a number, got {raw!r}") from None
    # `nan` and `inf` parse, and would pass every range check below: a limit of
    # RATE_LIMIT_PER_KEY=nan would be off, a timeout of inf never end.
    if not math.isfinite(number):
        raise SettingsError(f"{name.upper()} must be a finite number, got {raw!r}")
    return number


@lru_cache(maxsize=8)
def _networks(spec: str) -> tuple[IPv4Network | IPv6Network, ...]:
    return tuple(ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip())


# Ports a browser leaves out of an origin it sends.
_DEFAULT_PORTS = {"http": 80, "https": 443}


@lru_cache(maxsize=8)
def _origins(spec: str) -> frozenset[str]:
    given = {part.strip().lower() for part in spec.split(",") if part.strip()}
    if ANY_ORIGIN in given and len(given) > 1:
        raise ValueError('"*" stands alone')
    return frozenset(origin if origin == ANY_ORIGIN else _as_sent(origin) for origin in given)


def _as_sent(origin: str) -> str:
    """The origin as a browser serializes it in `Origin`, which is compared as a string:
    `https://a.example:443` or `http://[0::1]` as written would never match."""
    match = _ORIGIN.fullmatch(origin)
    if match is None:
        raise ValueError(f"{origin!r} is not an origin like https://app.example.com[:port]")
    scheme, host, port = match["scheme"], match["name"], match["port"]
    if host is None:
        try:
            host = f"[{IPv6Address(match['ipv6']).compressed}]"
        except ValueError:
            raise ValueError(f"{origin!r}: not an IPv6 address") from None
    if port is None or int(port) == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"{origin!r}: the port is out of range")
    return f"{scheme}://{host}:{int(port)}"


@lru_cache(maxsize=8)
def _report_keys(spec: str) -> PublicKeys:
    return load_public_keys(spec) if spec else {}
