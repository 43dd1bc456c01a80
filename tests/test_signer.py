"""The fast signer against botocore: byte-identical URLs for the same inputs and second."""

from __future__ import annotations

import base64
from datetime import datetime
from functools import cache

import botocore.auth
import botocore.session
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.disposition import content_disposition
from service.storage.signer import QuerySigner, bucket_prefix_from

ACCESS_KEY = "AKIAEXAMPLEEXAMPLE01"
SECRETS = ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "an+other/secret=")
TOKENS = (None, "FQoGZXIvYXdzEXAMPLE//////////wEaDPv5GPAhRW8pw=", "tok+en/with=signs")
ENDPOINTS = (
    None,
    "http://127.0.0.1:8333",
    "https://s3.example.test",
    "https://minio.example.test:8443",
    "http://localhost:80",
    "https://objects.example.test:443",
    # Signed as clients send the Host: lowercase, IPv6 in brackets.
    "https://S3.Example.TEST",
    "http://[fd00::1]:9000",
)
REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2")
BUCKETS = (
    "attachments",
    "bkt-1",
    "my-tenant-files",
    # Access points sign for the region (and the service) their ARN names.
    "arn:aws:s3:us-west-2:123456789012:accesspoint/ap1",
    "arn:aws:s3-object-lambda:eu-west-1:123456789012:accesspoint/o",
)
CONTENT_TYPES = (
    "text/plain",
    "application/pdf",
    "image/png",
    'text/plain; charset="utf-8"',
    "application/x-www-form-urlencoded; charset=utf-8",  # one botocore never signs
)

keys = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60),
    st.text(st.sampled_from("ab /+~%é😀.-_=&?#"), min_size=1, max_size=30),
)


# Where and with what a URL is signed: every combination must match botocore's.
SIGNING = {
    "endpoint": st.sampled_from(ENDPOINTS),
    "region": st.sampled_from(REGIONS),
    "style": st.sampled_from(["path", "virtual"]),
    "secret": st.sampled_from(SECRETS),
    "token": st.sampled_from(TOKENS),
    "expires": st.integers(1, 604_800),
    "at": st.datetimes(datetime(2020, 1, 1), datetime(2035, 12, 31)),
}


# One signer for every example: its signing keys must follow changes of date, secret and
# scope (region, and an access point's service).
SIGNER = QuerySigner(client=None, credentials=None)


@cache
def botocore_client(endpoint, region, style, secret, token):
    return botocore.session.get_session().create_client(
        "s3",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(signature_version="s3v4", s3={"addressing_style": style}),
    )


def botocore_presign(client, method, bucket, key, params, expires, at):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.auth, "get_current_datetime", lambda: at)
        return client.generate_presigned_url(
            "get_object" if method == "GET" else "head_object",
            Params={"Bucket": bucket, "Key": key, **params},
            ExpiresIn=expires,
        )


@pytest.mark.slow  # hundreds of generated cases
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "HEAD"]),
    bucket=st.sampled_from(BUCKETS),
    key=keys,
    filename=st.text(max_size=80),
    content_type=st.sampled_from(CONTENT_TYPES),
    **SIGNING,
)
def test_urls_are_byte_identical_to_botocore(
    method, bucket, key, filename, content_type, endpoint, region, style, secret, token, expires, at
):
    client = botocore_client(endpoint, region, style, secret, token)
    params = {
        "ResponseContentDisposition": content_disposition(filename),
        "ResponseContentType": content_type,
    }
    expected = botocore_presign(client, method, bucket, key, params, expires, at)

    prefix = bucket_prefix_from(botocore_presign(client, "GET", bucket, "k", {}, 60, at))
    signer = SIGNER
    query = {
        "response-content-disposition": params["ResponseContentDisposition"],
        "response-content-type": content_type,
    }
    credentials = ReadOnlyCredentials(ACCESS_KEY, secret, token)
    assert signer.sign(method, prefix, key, query.items(), expires, credentials, at) == expected


def test_the_signer_without_response_parameters():
    at = datetime(2026, 11, 27, 12, 0, 0)
    client = botocore_client("http://127.0.0.1:9000", "us-east-1", "path", SECRETS[0], None)
    expected = botocore_presign(client, "GET", "attachments", "a b/c", {}, 900, at)
    prefix = bucket_prefix_from(botocore_presign(client, "GET", "attachments", "k", {}, 60, at))
    credentials = ReadOnlyCredentials(ACCESS_KEY, SECRETS[0], None)
    signer = QuerySigner(client=None, credentials=None)
    assert signer.sign("GET", prefix, "a b/c", (), 900, credentials, at) == expected


def botocore_presign_upload(client, bucket, key, params, expires, at):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.auth, "get_current_datetime", lambda: at)
        operation = "upload_part" if "PartNumber" in params else "put_object"
        return client.generate_presigned_url(
            operation, Params={"Bucket": bucket, "Key": key, **params}, ExpiresIn=expires
        )


@pytest.mark.slow  # hundreds of generated cases
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bucket=st.sampled_from(BUCKETS),
    key=keys,
    content_type=st.sampled_from(CONTENT_TYPES),
    size=st.integers(0, 5 * 1024**4),
    digest=st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
    part=st.one_of(st.none(), st.tuples(st.integers(1, 10_000), st.text(min_size=1))),
    **SIGNING,
)
def test_upload_urls_with_signed_headers_are_byte_identical_to_botocore(
    bucket, key, content_type, size, digest, part, endpoint, region, style, secret, token,
    expires, at,
):  # fmt: skip
    """PUT URLs (Content-Type, Content-Length and the SHA-256 checksum signed) and
    UploadPart URLs (Content-Length and the part's checksum signed)."""
    client = botocore_client(endpoint, region, style, secret, token)
    params: dict[str, object] = {"ContentLength": size}
    headers = [("Content-Length", str(size))]
    query: list[tuple[str, str]] = []
    if part is None:
        params["ContentType"] = content_type
        headers.append(("Content-Type", content_type))
    else:
        number, upload_id = part
        params |= {"UploadId": upload_id, "PartNumber": number}
        query = [("uploadId", upload_id), ("partNumber", str(number))]
    if digest is not None:
        checksum = base64.b64encode(digest).decode()
        params["ChecksumSHA256"] = checksum
        headers.append(("x-amz-checksum-sha256", checksum))
    expected = botocore_presign_upload(client, bucket, key, params, expires, at)

    prefix = bucket_prefix_from(botocore_presign(client, "GET", bucket, "k", {}, 60, at))
    credentials = ReadOnlyCredentials(ACCESS_KEY, secret, token)
    signed = SIGNER.sign("PUT", prefix, key, query, expires, credentials, at, headers)
    assert signed == expected


def botocore_sign_query(url, params, expires, credentials, region, at):
    """botocore's SigV4 query signing of any parameters, names below X-Amz-* included."""
    request = AWSRequest(method="GET", url=url, params=dict(params))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.auth, "get_current_datetime", lambda: at)
        botocore.auth.S3SigV4QueryAuth(credentials, "s3", region, expires).add_auth(request)
    return request.url


def test_urls_of_one_second_in_many_shapes_and_any_parameter_names():
    """The X-Amz-* part is reused within a second per (key, token, expiry, signed headers),
    and parameters that sort among or before the X-Amz-* ones still sort with them."""
    at = datetime(2026, 12, 5, 9, 30, 15)
    region = "eu-west-1"
    signer = QuerySigner(client=None, credentials=None)
    prefix = bucket_prefix_from(
        "http://127.0.0.1:8333/attachments/k"
        f"?X-Amz-Credential={ACCESS_KEY}%2F20261205%2F{region}%2Fs3%2Faws4_request"
    )
    shapes = [
        (secret, token, expires, params)
        for secret in SECRETS
        for token in TOKENS
        for expires in (60, 900)
        for params in (
            [("response-content-type", "text/plain")],
            [("A-first", "1"), ("response-content-type", "image/png")],
            [("X-Amz-Between", "b c"), ("Y", "")],
            [],
        )
    ]
    for secret, token, expires, params in shapes * 2:  # the second round hits the cache
        credentials = ReadOnlyCredentials(ACCESS_KEY, secret, token)
        expected = botocore_sign_query(
            prefix.url + "a%20b", params, expires, credentials, region, at
        )
        signed = signer.sign("GET", prefix, "a b", params, expires, credentials, at)
        assert signed == expected
