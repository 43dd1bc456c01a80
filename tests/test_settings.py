"""Settings come from the environment and are validated once."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

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
        ("SECRET_SCANNING_PER_ADDRESS", "-1"),
        ("SECRET_SCANNING_BURST_PER_ADDRESS", "0"),
        # `nan` and `inf` parse as floats and slipped past every range check.
        ("RATE_LIMIT_PER_KEY", "nan"),
        ("AUDIT_FLUSH_SECONDS", "nan"),
        ("DB_STATEMENT_TIMEOUT", "inf"),
        ("LOG_LEVEL", "VERBOSE"),
        ("PORT", "99999"),
        ("PORT", "0"),
        ("METRICS_PORT", "70000"),
        ("RATE_LIMIT_BACKEND", "memcached"),
        # With the backend left local, each replica would grant the limits anew, silently.
        ("REDIS_URL", "redis://127.0.0.1:6379/0"),
        # The column refuses these: every upload's INSERT would have been a 500.
        ("S3_DEFAULT_BUCKET", "ab"),
        ("S3_DEFAULT_BUCKET", "b" * 64),
    ],
)
def test_bad_values_name_the_setting(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def _public_pem(private_key) -> str:
    return (
        private_key.public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_secret_scanning_keys_are_read_by_identifier():
    pem = _public_pem(ec.generate_private_key(ec.SECP256R1()))
    settings = Settings.from_env({"SECRET_SCANNING_PUBLIC_KEYS": json.dumps({"abc": pem})})
    assert list(settings.secret_scanning_keys) == ["abc"]
    assert Settings.from_env({}).secret_scanning_keys == {}


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        "{}",
        '["a PEM"]',
        '{"abc": 5}',
        '{"abc": "-----BEGIN PUBLIC KEY-----\\ngarbage\\n-----END PUBLIC KEY-----\\n"}',
        "rsa",
        "p384",
    ],
)
def test_bad_secret_scanning_keys_stop_the_start_with_one_line(value):
    if value == "rsa":
        value = json.dumps({"abc": _public_pem(rsa.generate_private_key(65537, 2048))})
    elif value == "p384":
        value = json.dumps({"abc": _public_pem(ec.generate_private_key(ec.SECP384R1()))})
    with pytest.raises(SettingsError, match=r"^SECRET_SCANNING_PUBLIC_KEYS ") as raised:
        Settings.from_env({"SECRET_SCANNING_PUBLIC_KEYS": value})
    assert "\n" not in str(raised.value) and "BEGIN" not in str(raised.value)


def test_a_bad_boolean_says_what_a_boolean_is():
    with pytest.raises(SettingsError, match="AUDIT_ENABLED must be true or false, got 'maybe'"):
        Settings.from_env({"AUDIT_ENABLED": "maybe"})


def test_log_levels_are_read_in_any_case():
    assert Settings.from_env({"LOG_LEVEL": "debug"}).log_level == "debug"


def test_a_dotenv_that_is_not_utf8_stops_the_start_with_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_bytes(b"LOG_LEVEL=\xff\xfe\n")
    with pytest.raises(SettingsError, match=r"\.env is not UTF-8 text"):
        Settings.from_env()


def test_metrics_need_a_port_of_their_own_once_the_served_port_is_known():
    """Checked where the port is final: `serve --port 9000` with METRICS_PORT=8080 (PORT's
    default) is fine, and commands that serve nothing never care."""
    settings = Settings.from_env({"METRICS_PORT": "8080"})
    with pytest.raises(SettingsError, match="METRICS_PORT must differ"):
        settings.check_listeners()
    replace(settings, port=9000).check_listeners()


@pytest.mark.parametrize(
    ("lifetime", "reuse", "window"),
    [("900", "60", 60), ("240", "60", 60), ("239", "60", 0), ("60", "60", 0), ("900", "0", 0)],
)
def test_urls_are_reused_only_if_three_quarters_of_their_lifetime_remain(lifetime, reuse, window):
    settings = Settings.from_env({"PRESIGN_EXPIRES_SECONDS": lifetime, "URL_REUSE_SECONDS": reuse})
    assert settings.url_reuse_window == window
