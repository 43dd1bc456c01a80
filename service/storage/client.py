"""Object storage: one aiobotocore S3 client for the app's life, used to presign.

The client is built for the *public* endpoint (`S3_PUBLIC_ENDPOINT_URL`), because
the host is part of what SigV4 signs: a URL signed for an internal name cannot be
rewritten for clients afterwards. Presigning needs no network round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from ..core.attachment import AttachmentTarget, PresignedUrl
from ..core.errors import StorageNotConfigured, StorageUnavailable
from ..core.options import PLAIN, DownloadOptions
from ..core.settings import Settings
from ..core.uploads import Part, checksum_header
from .lifetimes import UrlLifetime
from .signer import QuerySigner

log = logging.getLogger(__name__)

# What S3 answers to CreateBucket for a bucket that is already there.
BUCKET_ALREADY_THERE = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")

# The S3 operation whose signature each HTTP method needs: S3 checks the method,
# so a GET-signed URL answers 403 to HEAD.
OPERATION_FOR_METHOD = {"GET": "get_object", "HEAD": "head_object"}

# How long an API client has to start its upload (the 15 minutes), and to send
# each part of a multipart one (many gigabytes may go before the last part starts).
UPLOAD_URL_SECONDS = 900
PART_URL_SECONDS = 24 * 3600
# Part URLs signed between two turns of the event loop (about a millisecond's work).
PARTS_PER_TURN = 64

# How the botocore parameters of a PUT appear in the request the fast signer signs.
SIGNED_HEADER_FOR = {
    "ContentType": "Content-Type",
    "ContentLength": "Content-Length",
    "ChecksumSHA256": "x-amz-checksum-sha256",
}
QUERY_FOR = {"UploadId": "uploadId", "PartNumber": "partNumber"}
# botocore's own default.
DEFAULT_CONNECTIONS = 10


@dataclass(slots=True)
class Storage:
    """The signing client, or the reason there is none (then every presign is a 503)."""

    client: Any | None
    unavailable_reason: str | None
    expires_seconds: int
    signer: QuerySigner | None = None
    lifetime: UrlLifetime | None = None
    # False while the storage probe cannot reach the endpoint: a URL would not work.
    reachable: bool = True
    # For calls the gateway itself makes (HEAD), on the internal endpoint.
    internal: Any | None = None

    async def presign(
        self, method: str, target: AttachmentTarget, options: DownloadOptions = PLAIN
    ) -> PresignedUrl:
        if self.client is None:
            raise StorageNotConfigured(self.unavailable_reason or "not configured")
        try:
            asked = options.expires_in or self.expires_seconds
            expires = await self.lifetime.seconds(asked) if self.lifetime else asked
            shortened = expires < asked
            response = target.response(options.inline)
            if self.signer is not None:
                now = datetime.now(UTC).replace(microsecond=0)
                url = await self.signer.presign(
                    method, target.bucket, target.key, response, expires, now
                )
                return PresignedUrl.of(url, now + timedelta(seconds=expires), shortened)
            return await self.presign_with_botocore(method, target, response, expires, shortened)
        except (BotoCoreError, ClientError) as exc:
            # Credentials that could not be refreshed (botocore passes on what the provider
            # raised: STS's ClientError, a credential_process's BotoCoreError); presigning
            # itself calls nothing. The text stays in our log.
            log.warning("presigning failed: %s", type(exc).__name__)
            raise StorageUnavailable(type(exc).__name__) from exc

    async def presign_with_botocore(
        self,
        method: str,
        target: AttachmentTarget,
        response: tuple[tuple[str, str], tuple[str, str]],
        expires: int,
        shortened: bool = False,
    ) -> PresignedUrl:
        """aiobotocore's own presigning: the reference the fast signer is held to."""
        assert self.client is not None
        (_, disposition), (_, content_type) = response
        params = {
            "Bucket": target.bucket,
            "Key": target.key,
            "ResponseContentDisposition": disposition,
            "ResponseContentType": content_type,
        }
        url: str = await self.client.generate_presigned_url(
            OPERATION_FOR_METHOD[method], Params=params, ExpiresIn=expires
        )
        return PresignedUrl.of(url, signed_at(url) + timedelta(seconds=expires), shortened)

    def internal_client(self) -> Any:
        """The client for the gateway's own S3 calls (storage/objects.py)."""
        if self.internal is None:
            raise StorageNotConfigured(self.unavailable_reason or "not configured")
        return self.internal

    async def presign_upload(
        self, bucket: str, key: str, content_type: str, size: int, sha256: bytes | None = None
    ) -> PresignedUrl:
        """A PUT URL for exactly this object: its Content-Type, Content-Length and (when
        declared) SHA-256 are signed, so S3 refuses (403) a body of any other size or type,
        and a checking S3 (400) any other bytes."""
        params: dict[str, Any] = {"ContentType": content_type, "ContentLength": size}
        if sha256 is not None:
            params["ChecksumSHA256"] = checksum_header(sha256)
        return await self.presign_put("put_object", bucket, key, params, UPLOAD_URL_SECONDS)

    async def presign_parts(
        self, bucket: str, key: str, upload_id: str, parts: list[Part]
    ) -> list[PresignedUrl]:
        """An UploadPart URL for each part, its size signed. The fast signer never waits,
        so up to 10,000 URLs would hold the loop from every other request: it is let go
        every PARTS_PER_TURN."""
        urls: list[PresignedUrl] = []
        for part in parts:
            if urls and len(urls) % PARTS_PER_TURN == 0:
                await asyncio.sleep(0)
            urls.append(
                await self.presign_put(
                    "upload_part",
                    bucket,
                    key,
                    {"UploadId": upload_id, "PartNumber": part.number, "ContentLength": part.size},
                    PART_URL_SECONDS,
                )
            )
        return urls

    async def presign_put(
        self, operation: str, bucket: str, key: str, params: dict[str, Any], seconds: int
    ) -> PresignedUrl:
        """`operation`'s URL for these botocore parameters, signed by the fast signer (the
        headers and query it names, SIGNED_HEADER_FOR and QUERY_FOR) or by aiobotocore."""
        if self.client is None:
            raise StorageNotConfigured(self.unavailable_reason or "not configured")
        if not self.reachable:
            raise StorageUnavailable("unreachable")
        try:
            expires = await self.lifetime.seconds(seconds) if self.lifetime else seconds
            if self.signer is not None:
                now = datetime.now(UTC).replace(microsecond=0)
                query = [
                    (QUERY_FOR[name], str(v)) for name, v in params.items() if name in QUERY_FOR
                ]
                headers = [
                    (SIGNED_HEADER_FOR[name], str(v))
                    for name, v in params.items()
                    if name in SIGNED_HEADER_FOR
                ]
                url = await self.signer.presign("PUT", bucket, key, query, expires, now, headers)
                signed = now  # its X-Amz-Date: read back from the URL, it cost 100 µs a part
            else:
                url = await self.client.generate_presigned_url(
                    operation, Params={"Bucket": bucket, "Key": key, **params}, ExpiresIn=expires
                )
                signed = signed_at(url)
        except (BotoCoreError, ClientError) as exc:  # as in presign
            log.warning("presigning an upload failed: %s", type(exc).__name__)
            raise StorageUnavailable(type(exc).__name__) from exc
        return PresignedUrl.of(url, signed + timedelta(seconds=expires), expires < seconds)


def signed_at(url: str) -> datetime:
    """The X-Amz-Date a SigV4 query signature carries: the start of its validity."""
    (amz_date,) = parse_qs(urlsplit(url).query)["X-Amz-Date"]
    return datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


async def _client_context(
    settings: Settings,
    endpoint: str | None,
    session: Any = None,
    connections: int = DEFAULT_CONNECTIONS,
) -> Any:
    """An aiobotocore S3 client context for `endpoint`, SigV4, with the configured addressing,
    keeping up to `connections` connections open."""
    session = session or get_session()
    region = settings.s3_region or session.get_config_variable("region")
    if not endpoint and not region:
        raise StorageNotConfigured("no S3 endpoint or region configured")
    if await session.get_credentials() is None:
        raise StorageNotConfigured("no S3 credentials found")
    config = AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": settings.s3_addressing_style},
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=connections,
    )
    return session.create_client(
        "s3", region_name=region or "us-east-1", endpoint_url=endpoint, config=config
    )


async def open_storage(settings: Settings, stack: contextlib.AsyncExitStack) -> Storage:
    """A Storage whose signing client lives as long as `stack`; none if S3 is not configured."""
    session = get_session()
    try:
        context = await _client_context(settings, settings.signing_endpoint_url, session)
    except StorageNotConfigured as exc:
        return Storage(None, str(exc), settings.presign_expires_seconds)
    client = await stack.enter_async_context(context)
    # The same credential chain the client uses (refreshable ones refresh themselves).
    credentials = await session.get_credentials()
    signer = None
    if settings.presigner == "fast":
        signer = QuerySigner(client, credentials)
    expires = settings.presign_expires_seconds
    internal = client
    if settings.s3_endpoint_url and settings.s3_endpoint_url != settings.signing_endpoint_url:
        internal = await stack.enter_async_context(
            await _client_context(settings, settings.s3_endpoint_url, session)
        )
    return Storage(client, None, expires, signer, UrlLifetime(credentials), internal=internal)


@contextlib.asynccontextmanager
async def internal_client(
    settings: Settings, connections: int = DEFAULT_CONNECTIONS
) -> AsyncIterator[Any]:
    """A client for S3 API calls (uploads, bucket set-up) on the internal endpoint."""
    context = await _client_context(settings, settings.s3_endpoint_url, connections=connections)
    async with context as client:
        yield client
