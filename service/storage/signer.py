"""A SigV4 query signer for S3 URLs: botocore's output, byte for byte, faster.

aiobotocore's `generate_presigned_url` builds a request object, resolves endpoint rules
and derives the signing key for every URL (docs/performance.md has what that costs on the
download path). This signer does only the SigV4
arithmetic (AWS "Authenticating Requests: Using Query Parameters") and leaves everything
else to botocore, asked once per bucket:

- the URL prefix of a bucket (scheme, host, port, path or virtual addressing, endpoint
  path) and its signing scope (region and service: an access point's ARN names its own)
  come from a URL that aiobotocore itself presigned for that bucket;
- credentials come from aiobotocore's credential chain and are re-read before they expire;
- the signing key is derived once per (date, secret, scope), and its HMAC state is
  copied for each URL rather than rebuilt;
- the X-Amz-* parameters, the same for every URL of one second, credentials, expiry and
  set of signed headers, are joined once for that second.

Downloads sign only `host`. Uploads also sign the headers S3 must then see exactly
(Content-Type, Content-Length, x-amz-checksum-sha256), so that S3 refuses other bytes.
`tests/test_signer.py` checks, with Hypothesis, that the output equals botocore's for the
same inputs at the same second, signed headers included.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..core.errors import CredentialsExpiring
from ..core.percent import percent_encode
from .lifetimes import REFRESH_INTERVAL_SECONDS

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# botocore percent-encodes object keys keeping "/" and "~", query values keeping "-._~".
_KEY_SAFE = "/~"
_VALUE_SAFE = "-_.~"
# Re-read credentials this often; refreshable ones also refresh themselves inside botocore
# when they come within its advisory window (15 minutes) of expiry.
CREDENTIALS_RECHECK_SECONDS = 60.0
# After a re-read of the credentials failed, the next waits this long (as UrlLifetime's
# refreshes do).
RETRY_SECONDS = REFRESH_INTERVAL_SECONDS
_PROBE_KEY = "k"
_NEVER = object()
ENCODING_MEMO_SIZE = 200_000
# botocore's query signer leaves this one header value out (it is the type botocore itself
# gives form posts), so a URL for an upload of this type does not bind its Content-Type.
_NEVER_SIGNED = ("content-type", "application/x-www-form-urlencoded; charset=utf-8")
# Every X-Amz-* name sorts at or before this one; lowercase names (response-*) after it.
_LAST_AUTH_NAME = "X-Amz-SignedHeaders"


@dataclass(frozen=True, slots=True)
class _Authentication:
    """The X-Amz-* parameters of URLs signed in one second with one shape."""

    pairs: list[tuple[str, str]]  # in the order botocore puts them in the URL
    query: str  # pairs joined for the URL
    sorted_pairs: str  # pairs sorted and joined for the canonical query


@dataclass(frozen=True, slots=True)
class BucketPrefix:
    """Everything of a presigned URL before the encoded object key."""

    url: str  # "http://127.0.0.1:8333/attachments/"
    path: str  # "/attachments/"
    host: str  # "127.0.0.1:8333", as signed (default ports dropped, like botocore)
    scope: str  # "us-east-1/s3/aws4_request": the credential scope after its date


def bucket_prefix_from(url: str) -> BucketPrefix:
    """Read the prefix off a URL botocore presigned for key `k`."""
    parts = urlsplit(url)
    credential = parse_qs(parts.query).get("X-Amz-Credential")
    if not parts.path.endswith("/" + _PROBE_KEY) or credential is None:
        raise ValueError("unexpected presigned URL shape")
    path = parts.path[: -len(_PROBE_KEY)]
    # "AKID/20261207/us-east-1/s3/aws4_request" (an S3-compatible store's key may hold "/").
    scope = "/".join(credential[0].split("/")[-3:])
    return BucketPrefix(f"{parts.scheme}://{parts.netloc}{path}", path, signed_host(url), scope)


def signed_host(url: str) -> str:
    """The Host botocore signs for `url` (botocore.auth's `_host_from_url`): lowercase, no
    user info, IPv6 in brackets, the port only when it is not the scheme's own. Clients
    send the host lowercase, so a signature over any other spelling would not match."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


class QuerySigner:
    """Presigns S3 URLs; safe to share across a process's tasks."""

    def __init__(self, client: Any, credentials: Any) -> None:
        self._client = client  # aiobotocore: the reference, asked once per bucket
        self._credentials = credentials  # aiobotocore's chain (refreshable or static)
        self._prefixes: dict[str, BucketPrefix] = {}
        self._frozen: Any = None
        self._frozen_expiry: Any = None
        self._recheck_at = 0.0
        self._retry_at = 0.0
        self._failed_expiry: Any = _NEVER  # the chain's expiry when a re-read last failed
        self._reread = asyncio.Lock()
        self._timestamp_of: datetime | None = None
        self._timestamp = ""
        # By scope: (date, secret, the key's HMAC state). The state is copied for each
        # signature, so the key's inner and outer pads are hashed only once.
        self._signing: dict[str, tuple[str, str, Any]] = {}
        self._authentication_second = ""
        self._authentications: dict[tuple[str, str | None, str, int, str], _Authentication] = {}
        # Percent-encodings of keys and response values: the same few recur per attachment.
        self._encoded: dict[tuple[str, str], str] = {}

    async def prepare(self, bucket: str) -> BucketPrefix:
        """The bucket's URL prefix, asked of aiobotocore the first time."""
        prefix = self._prefixes.get(bucket)
        if prefix is None:
            url = await self._client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY}, ExpiresIn=60
            )
            prefix = self._prefixes[bucket] = bucket_prefix_from(url)
        return prefix

    async def credentials(self) -> Any:
        """Frozen credentials, re-read from the chain every minute (refreshing if due), and
        at once after anyone else made the chain refresh (see lifetimes.UrlLifetime).

        One task re-reads them while the others sign with those already frozen (each URL's
        lifetime was bounded by their expiry before it came here). A re-read that fails
        (inside their last ten minutes botocore raises whatever STS or the provider
        raised) is CredentialsExpiring for the request that made it, a 503 as UrlLifetime's
        failed refresh is, and is not tried again for RETRY_SECONDS: each request would
        call STS and fail the same way."""
        now = time.monotonic()
        # Frozen ones are used only while they are the chain's (its expiry unchanged):
        # URLs' lifetimes are bounded by the chain's, so a refresh made elsewhere must
        # reach the signer before the next URL.
        current = getattr(self._credentials, "_expiry_time", None) == self._frozen_expiry
        if (
            self._frozen is not None
            and current
            and (now < self._recheck_at or self._reread.locked())
        ):
            return self._frozen
        async with self._reread:
            now = time.monotonic()
            expiry = getattr(self._credentials, "_expiry_time", None)
            current = expiry == self._frozen_expiry
            if self._frozen is not None and current and now < self._recheck_at:
                return self._frozen  # re-read by the task this one waited for
            # A re-read failed moments ago, and the chain has not changed since.
            if now < self._retry_at and expiry == self._failed_expiry:
                if self._frozen is None or not current:
                    raise CredentialsExpiring("credentials could not be refreshed")
                return self._frozen
            try:
                self._frozen = await self._credentials.get_frozen_credentials()
            except Exception as exc:
                self._retry_at = now + RETRY_SECONDS
                self._failed_expiry = getattr(self._credentials, "_expiry_time", None)
                raise CredentialsExpiring("credentials could not be refreshed") from exc
            self._frozen_expiry = getattr(self._credentials, "_expiry_time", None)
            self._recheck_at = now + CREDENTIALS_RECHECK_SECONDS
            return self._frozen

    async def presign(
        self,
        method: str,
        bucket: str,
        key: str,
        params: Iterable[tuple[str, str]],
        expires: int,
        now: datetime | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> str:
        prefix = await self.prepare(bucket)
        credentials = await self.credentials()
        return self.sign(method, prefix, key, params, expires, credentials, now, headers)

    def sign(
        self,
        method: str,
        prefix: BucketPrefix,
        key: str,
        params: Iterable[tuple[str, str]],
        expires: int,
        credentials: Any,
        now: datetime | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> str:
        """The URL; `headers` (besides Host) are signed too, and the request must carry
        them with exactly these values."""
        now = now or datetime.now(UTC)
        if now != self._timestamp_of:  # the URLs of one second share it
            self._timestamp = now.strftime("%Y%m%dT%H%M%SZ")
            self._timestamp_of = now
        timestamp = self._timestamp
        date = timestamp[:8]
        secret = credentials.secret_key
        signing = self._signing.get(prefix.scope)
        if signing is None or signing[0] != date or signing[1] != secret:
            mac = hmac.new(self._derive_key(secret, date, prefix.scope), digestmod=hashlib.sha256)
            signing = self._signing[prefix.scope] = (date, secret, mac)

        query = [(name, self._quote(value, _VALUE_SAFE)) for name, value in params]
        operation = "&".join(map("=".join, query))
        if headers:
            signed = sorted(
                [
                    (name.lower(), " ".join(value.split()))
                    for name, value in headers
                    if (name.lower(), value) != _NEVER_SIGNED
                ]
                + [("host", prefix.host)]
            )
            signed_names = ";".join(name for name, _ in signed)
            canonical_headers = "".join(f"{name}:{value}\n" for name, value in signed)
        else:  # downloads: only the host
            signed_names = "host"
            canonical_headers = f"host:{prefix.host}\n"
        auth = self._authentication(credentials, date, prefix.scope, expires, signed_names)

        encoded_key = self._quote(key, _KEY_SAFE)
        if all(name > _LAST_AUTH_NAME for name, _ in query):  # the response-* parameters
            query.sort()
            canonical_query = "&".join((auth.sorted_pairs, *map("=".join, query)))
        else:
            canonical_query = "&".join(map("=".join, sorted(query + auth.pairs)))
        canonical_request = (
            f"{method}\n{prefix.path}{encoded_key}\n{canonical_query}\n"
            f"{canonical_headers}\n{signed_names}\n{UNSIGNED_PAYLOAD}"
        )
        string_to_sign = (
            f"{ALGORITHM}\n{timestamp}\n{date}/{prefix.scope}\n"
            + hashlib.sha256(canonical_request.encode()).hexdigest()
        )
        mac = signing[2].copy()
        mac.update(string_to_sign.encode())
        signature = mac.hexdigest()
        query_string = f"{operation}&{auth.query}" if operation else auth.query
        return f"{prefix.url}{encoded_key}?{query_string}&X-Amz-Signature={signature}"

    def _authentication(
        self, credentials: Any, date: str, scope: str, expires: int, signed_names: str
    ) -> _Authentication:
        """The X-Amz-* parameters, the same for every URL of one second and shape."""
        shape = (credentials.access_key, credentials.token, scope, expires, signed_names)
        if self._authentication_second != self._timestamp:
            self._authentications.clear()
            self._authentication_second = self._timestamp
        authentication = self._authentications.get(shape)
        if authentication is None:
            credential = f"{credentials.access_key}/{date}/{scope}"
            pairs = [
                ("X-Amz-Algorithm", ALGORITHM),
                ("X-Amz-Credential", percent_encode(credential, _VALUE_SAFE)),
                ("X-Amz-Date", self._timestamp),
                ("X-Amz-Expires", str(expires)),
                ("X-Amz-SignedHeaders", percent_encode(signed_names, _VALUE_SAFE)),
            ]
            if credentials.token is not None:
                token = percent_encode(credentials.token, _VALUE_SAFE)
                pairs.append(("X-Amz-Security-Token", token))
            authentication = self._authentications[shape] = _Authentication(
                pairs=pairs,
                query="&".join(map("=".join, pairs)),
                sorted_pairs="&".join(map("=".join, sorted(pairs))),
            )
        return authentication

    def _quote(self, value: str, safe: str) -> str:
        encoded = self._encoded.get((value, safe))
        if encoded is None:
            if len(self._encoded) >= ENCODING_MEMO_SIZE:
                self._encoded.clear()  # bounded; refilled by the next requests
            encoded = self._encoded[(value, safe)] = percent_encode(value, safe)
        return encoded

    @staticmethod
    def _derive_key(secret_key: str, date: str, scope: str) -> bytes:
        key = hmac.digest(f"AWS4{secret_key}".encode(), date.encode(), "sha256")
        for part in scope.split("/"):  # region, service, "aws4_request"
            key = hmac.digest(key, part.encode(), "sha256")
        return key
