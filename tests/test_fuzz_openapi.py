"""Schemathesis against the served OpenAPI document: every check it has, a few hundred
generated requests, zero failures."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support.environment import AWS_ISOLATION, NO_ABUSE_LIMITS
from tests.support.processes import Gateway

pytestmark = pytest.mark.slow  # a few hundred generated requests against a real process

# Fixed so that CI is repeatable; set SCHEMATHESIS_SEED to explore other examples.
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261127")
MAX_EXAMPLES = "100"  # per operation and phase


async def test_schemathesis_finds_nothing(gateway_env, make_tenant, make_attachment, tmp_path):
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    # CORS on, so the documented preflights meet the 204 they describe; secret scanning on
    # with a key of our own, so its route is there to meet unsigned and badly signed bodies.
    github_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = github_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    env = {
        **gateway_env,
        **NO_ABUSE_LIMITS,
        "CORS_ALLOWED_ORIGINS": "*",
        "SECRET_SCANNING_PUBLIC_KEYS": json.dumps({"f" * 64: pem}),
    }
    gateway = Gateway(env, log=tmp_path / "gateway.log")
    try:
        await gateway.wait_ready()
        # Twice: ids as generated (a 404 path), then the tenant's real attachment, so the
        # 307 path meets generated headers and methods too.
        # An OPTIONS without the preflight headers is no preflight but any other method,
        # answered as docs/api.md says: 401 without a key, then 405. A preflight is about
        # the route, not the resource: it answers 204 for a deleted id too (no key, so it
        # must not tell which ids exist), so the stateful phase leaves it out.
        not_a_preflight = (
            '[[operations]]\ninclude-method = "OPTIONS"\n'
            'checks.missing_required_header.expected-statuses = ["401", "405"]\n'
            "phases.stateful.enabled = false\n"
        )
        # More than 100 ids (negative data) soon overflow the 8,190-byte request line,
        # which the HTTP parser refuses with its plain 400 before the app runs
        # (docs/api.md); test_download_links.py tests those refusals instead.
        not_a_preflight += (
            '[[operations]]\ninclude-path = "/api/v1/attachments/download-links"\n'
            'generation.mode = "positive"\n'
        )
        config = tmp_path / "schemathesis.toml"
        config.write_text(not_a_preflight)
        download_config = tmp_path / "schemathesis-download.toml"
        download_config.write_text(
            not_a_preflight
            + '[[operations]]\ninclude-path = "/api/v1/attachments/{id}/download"\n'
            + f'parameters = {{ id = "{attachment_id}" }}\n'
            # The first pass fuzzes DELETE; here its links would delete the attachment
            # before the downloads ran.
            + '[[operations]]\ninclude-method = "DELETE"\nenabled = false\n'
        )
        generated = 0
        for config_args in (
            ["--config-file", str(config)],
            ["--config-file", str(download_config)],
        ):
            generated += await run_schemathesis(
                gateway.url, tenant.write_token, config_args, tmp_path
            )
        assert generated >= 300  # a few hundred cases, not just a loaded document
        answered = [line.get("status") for line in gateway.json_lines()]
        assert answered.count(307) >= 50 and answered.count(404) >= 50
        # The attachments API was reached too, not only refused: created (201), read (200),
        # deleted (204), and a download or confirmation of a pending upload (409).
        assert {200, 201, 204, 409} <= set(answered)
        # The reports route met both its refusals: headers missing, and a signature not ours.
        reports = {
            line["status"]
            for line in gateway.json_lines()
            if line.get("path") == "/api/v1/secret-scanning/reports"
        }
        assert {400, 403} <= reports
        preflights = [line for line in gateway.json_lines() if line.get("method") == "OPTIONS"]
        assert any(line["status"] == 204 for line in preflights)
    finally:
        gateway.stop()


async def run_schemathesis(url, token, config_args, report_dir) -> int:
    """Exit 0 or fail with its report; returns how many cases it generated."""
    schemathesis = Path(sys.executable).with_name("schemathesis")
    # Not formatted: each option beside its value, as on a command line.
    command = [
        str(schemathesis), *config_args, "run", f"{url}/api/v1/openapi.json",
        "--checks", "all",
        "--header", f"Authorization: Bearer {token}",
        "--max-examples", MAX_EXAMPLES, "--seed", SEED,
        "--max-redirects", "0",  # a 307 is the answer, not a hop to S3
        "--request-timeout", "10", "--workers", "1",
        "--report", "junit", "--report-dir", str(report_dir),
    ]  # fmt: skip
    result = await asyncio.to_thread(
        subprocess.run,
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **AWS_ISOLATION, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated, output[-3000:]
    return int(generated[1])
