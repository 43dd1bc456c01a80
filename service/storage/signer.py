"""A SigV4 query signer for S3 URLs: botocore's output, byte for byte, faster.

aiobotocore's `generate_presigned_url` builds a request object, resolves endpoint rules
and derives the signing key for every URL (docs/performance.md has what that costs on the
download path). This signer does only the SigV4
arithmetic (AWS "Authenticating Requests: Using Query Parameters") and leaves everything
else to botocore, asked once per bucket:

- the URL prefix of a bucket (scheme, host, port, path or virtual addressing, endpoint
  path) comes from a URL that aiobotocore itself presigned for that bucket;
- credentials come from aiobotocore's credential chain and are re-read before they expire;
- the signing key is derived once per (date, region, service), and its HMAC state is
  copied for each URL rather than rebuilt;
- the X-Amz-* parameters, the same for every URL of one second, credentials, expiry and
  set of signed headers, are joined once for that second.

Downloads sign only `host`. Uploads also sign the headers S3 must then see exactly
(Content-Type, Content-Length, x-amz-checksum-sha256), so that S3 refuses other bytes.
`tests/test_signer.py` checks, with Hypothesis, that the output equals botocore's for the
same inputs at the same second, signed headers included.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ..core.percent import percent_encode

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# botocore percent-encodes object keys keeping "/" and "~", query values keeping "-._~".
_KEY_SAFE = "/~"
_VALUE_SAFE = "-_.~"
# Re-read credentials this often; refreshable ones also refresh themselves inside botocore
# when they come within its advisory window (15 minutes) of expiry.
CREDENTIALS_RECHECK_SECONDS = 60.0
_PROBE_KEY = "k"
ENCODING_MEMO_SIZE = 200_000
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


def bucket_prefix_from(url: str) -> BucketPrefix:
    """Read the prefix off a URL botocore presigned for key `k`."""
    parts = urlsplit(url)
    if not parts.path.endswith("/" + _PROBE_KEY):
        raise ValueError("unexpected presigned URL shape")
    path = parts.path[: -len(_PROBE_KEY)]
    host = parts.netloc
    default_port = {"http": ":80", "https": ":443"}.get(parts.scheme)
    if default_port and host.endswith(default_port):
        host = host[: -len(default_port)]
    return BucketPrefix(f"{parts.scheme}://{parts.netloc}{path}", path, host)


class QuerySigner:
    """Presigns S3 URLs for one region; safe to share across a process's tasks."""

    def __init__(self, client: Any, credentials: Any, region: str) -> None:
        self._client = client  # aiobotocore: the reference, asked once per bucket
        self._credentials = credentials  # aiobotocore's chain (refreshable or static)
        self._region = region
        self._prefixes: dict[str, BucketPrefix] = {}
        self._frozen: Any = None
        self._frozen_expiry: Any = None
        self._recheck_at = 0.0
        self._timestamp_of: datetime | None = None
        self._timestamp = ""
        self._signing_date = ""
        self._signing_secret = ""
        self._signing_key = b""
        # Copied for each signature: the key's inner and outer pads are hashed only once.
        self._signing_mac = hmac.new(b"", digestmod=hashlib.sha256)
        self._authentication_second = ""
        self._authentications: dict[tuple[str, str | None, int, str], _Authentication] = {}
        self._scope_tail = f"/{region}/s3/aws4_request"
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
        at once after anyone else made the chain refresh (see credentials.UrlLifetime)."""
        now = time.monotonic()
        if (
            self._frozen is None
            or now >= self._recheck_at
            or getattr(self._credentials, "_expiry_time", None) != self._frozen_expiry
        ):
            self._frozen = await self._credentials.get_frozen_credentials()
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
        if date != self._signing_date or credentials.secret_key != self._signing_secret:
            self._signing_key = self._derive_key(credentials.secret_key, date)
            self._signing_mac = hmac.new(self._signing_key, digestmod=hashlib.sha256)
            self._signing_date = date
            self._signing_secret = credentials.secret_key

        query = [(name, self._quote(value, _VALUE_SAFE)) for name, value in params]
        operation = "&".join(map("=".join, query))
        if headers:
            signed = sorted(
                [(name.lower(), " ".join(value.split())) for name, value in headers]
                + [("host", prefix.host)]
            )
            signed_names = ";".join(name for name, _ in signed)
            canonical_headers = "".join(f"{name}:{value}\n" for name, value in signed)
        else:  # downloads: only the host
            signed_names = "host"
            canonical_headers = f"host:{prefix.host}\n"
        auth = self._authentication(credentials, date, expires, signed_names)

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
            f"{ALGORITHM}\n{timestamp}\n{date}{self._scope_tail}\n"
            + hashlib.sha256(canonical_request.encode()).hexdigest()
        )
        mac = self._signing_mac.copy()
        mac.update(string_to_sign.encode())
        signature = mac.hexdigest()
        query_string = f"{operation}&{auth.query}" if operation else auth.query
        return f"{prefix.url}{encoded_key}?{query_string}&X-Amz-Signature={signature}"

    def _authentication(
        self, credentials: Any, date: str, expires: int, signed_names: str
    ) -> _Authentication:
        """The X-Amz-* parameters, the same for every URL of one second and shape."""
        shape = (credentials.access_key, credentials.token, expires, signed_names)
        if self._authentication_second != self._timestamp:
            self._authentications.clear()
            self._authentication_second = self._timestamp
        authentication = self._authentications.get(shape)
        if authentication is None:
            scope = f"{credentials.access_key}/{date}{self._scope_tail}"
            pairs = [
                ("X-Amz-Algorithm", ALGORITHM),
                ("X-Amz-Credential", percent_encode(scope, _VALUE_SAFE)),
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

    def _derive_key(self, secret_key: str, date: str) -> bytes:
        key = hmac.digest(f"AWS4{secret_key}".encode(), date.encode(), "sha256")
        for part in (self._region, "s3", "aws4_request"):
            key = hmac.digest(key, part.encode(), "sha256")
        return key
