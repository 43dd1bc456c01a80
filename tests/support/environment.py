"""The environment of the suite's own process and of every process it starts.

Nothing the tests run may reach the cloud instance-metadata address, nor read a
developer's AWS files: credentials come from the environment only, as the chain says,
and every process that talks to S3 is handed them explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by tests/conftest.py before botocore: keep it out
    from service.devstack.seaweed import S3Server

AWS_ISOLATION = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
# A developer's own profile or region would otherwise leak into what the tests sign.
AWS_DEVELOPER_CHOICES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION")

# For gateways under our own load (faults, fuzzing): that traffic is not abuse, and the
# abuse limits have their own tests (tests/test_rate_limits.py).
NO_ABUSE_LIMITS = {
    "RATE_LIMIT_PER_KEY": "0",
    "RATE_LIMIT_PER_WORKSPACE": "0",
    "FAILED_AUTH_PER_ADDRESS": "0",
    "SECRET_SCANNING_PER_ADDRESS": "0",
}
# Every request goes to the database: no key, attachment or URL is served from memory.
NO_CACHES = {"KEY_CACHE_SIZE": "0", "ATTACHMENT_CACHE_SIZE": "0", "URL_CACHE_SIZE": "0"}


def isolate_this_process() -> None:
    """The suite's own process: what its children inherit when given no environment."""
    os.environ.update(AWS_ISOLATION)
    for name in AWS_DEVELOPER_CHOICES:
        os.environ.pop(name, None)


def process_env(variables: Mapping[str, str] = (), **more: str) -> dict[str, str]:
    """The whole environment of a child process: PATH, the AWS isolation, then
    `variables`; the metadata address stays disabled whatever they say."""
    return {
        "PATH": os.environ["PATH"],
        **AWS_ISOLATION,
        **dict(variables),
        **more,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def gateway_env(database_url: str, s3: S3Server, **variables: str) -> dict[str, str]:
    """What a gateway or the CLI runs with: the database, the S3 endpoint `s3` and its
    identity, given explicitly."""
    return process_env(
        {
            "DATABASE_URL": database_url,
            "S3_ENDPOINT_URL": s3.endpoint_url,
            "S3_REGION": s3.region,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        },
        **variables,
    )
