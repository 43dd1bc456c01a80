"""Settings come from the environment and are validated once."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.settings import Settings, SettingsError


def test_defaults():
    settings = Settings.from_env({})
    assert settings.presign_expires_seconds == 900
    assert settings.s3_addressing_style == "path"
    assert settings.signing_endpoint_url is None


def test_values_are_read_and_converted():
    settings = Settings.from_env(
        {
            "PRESIGN_EXPIRES_SECONDS": "60",
            "DB_ACQUIRE_TIMEOUT": "0.5",
            "S3_ENDPOINT_URL": "http://minio:9000",
            "MIGRATIONS_DIR": "/srv/migrations",
            "S3_REGION": "",
        }
    )
    assert settings.presign_expires_seconds == 60
    assert settings.db_acquire_timeout == 0.5
    assert settings.migrations_dir == Path("/srv/migrations")
    assert settings.s3_region is None
    assert settings.signing_endpoint_url == "http://minio:9000"


def test_the_public_endpoint_is_what_gets_signed():
    settings = Settings.from_env(
        {"S3_ENDPOINT_URL": "http://s3:8333", "S3_PUBLIC_ENDPOINT_URL": "http://localhost:8333"}
    )
    assert settings.signing_endpoint_url == "http://localhost:8333"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PRESIGN_EXPIRES_SECONDS", "0"),
        ("PRESIGN_EXPIRES_SECONDS", "604801"),
        ("PRESIGN_EXPIRES_SECONDS", "soon"),
        ("S3_ADDRESSING_STYLE", "dns"),
        ("DB_POOL_MAX_SIZE", "0"),
        ("DB_ACQUIRE_TIMEOUT", "-1"),
        ("PRESIGN_MAX_EXPIRES_SECONDS", "604801"),
        ("PRESIGN_EXPIRES_SECONDS", "3601"),  # over PRESIGN_MAX_EXPIRES_SECONDS' default
        ("RATE_LIMIT_PER_KEY", "-1"),
        ("RATE_LIMIT_BURST_PER_WORKSPACE", "0"),
        ("FAILED_AUTH_PER_ADDRESS", "-0.5"),
        ("S3_PROBE_INTERVAL_SECONDS", "-1"),
    ],
)
def test_bad_values_name_the_setting(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
