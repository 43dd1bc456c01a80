"""The container image, built from the Dockerfile with podman and run as shipped: read-only
root, uid 10001, every capability dropped. `migrate`, `seed`, `serve` and `healthcheck`
run from it against the tests' Postgres (through PgBouncer, on TCP) and SeaweedFS, and the
seeded file comes back byte for byte through the containerised gateway."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from service.devstack.demo import DEMO_BODY
from service.devstack.pgbouncer import pgbouncer_available, run_pgbouncer
from service.devstack.ports import free_port
from tests.support.environment import AWS_ISOLATION
from tests.support.podman import Podman, why_podman_cannot_run

ROOT = Path(__file__).resolve().parent.parent
UNPRIVILEGED = "10001:10001"
REASON = why_podman_cannot_run() or (None if pgbouncer_available() else "no pgbouncer")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=str(REASON))]


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    return Podman(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="module")
def image(podman):
    podman.ensure_base_image()
    tag = "localhost/attachments-gateway:test"
    podman.build(ROOT, tag)
    return tag


@pytest.fixture
def container_env(database_url, seaweed, tmp_path):
    """The container reaches the host's loopback (--network host): the database through
    PgBouncer on TCP (transaction mode for the pools, session mode as the direct URL),
    since the embedded Postgres listens on a socket only its own user may enter."""
    with (
        run_pgbouncer(database_url, tmp_path / "transaction") as pooled,
        run_pgbouncer(database_url, tmp_path / "session", pool_mode="session") as direct,
    ):
        yield {
            "DATABASE_URL": pooled,
            "DATABASE_DIRECT_URL": direct,
            "DB_STATEMENT_CACHE_SIZE": "0",
            "S3_ENDPOINT_URL": seaweed.endpoint_url,
            "S3_REGION": seaweed.region,
            "AWS_ACCESS_KEY_ID": seaweed.access_key,
            "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
            **AWS_ISOLATION,
        }


def run_options(env, *extra):
    options = ["--network", "host", "--read-only", "--user", UNPRIVILEGED, "--cap-drop", "ALL"]
    for name, value in env.items():
        options += ["-e", f"{name}={value}"]
    return [*options, *extra]


def test_the_image_migrates_seeds_serves_and_is_healthy(podman, image, container_env, tmp_path):
    migrated = podman.run("run", "--rm", *run_options(container_env), image, "migrate")
    assert "migration(s)" in migrated.stdout

    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 10001, 10001)
    seeded = podman.run(
        "run",
        "--rm",
        *run_options(container_env, "-v", f"{state}:/state"),
        image,
        "seed",
        "--state-file",
        "/state/demo.json",
        "--json",
    )
    demo = json.loads(seeded.stdout)
    assert json.loads((state / "demo.json").read_text())["read_token"] == demo["read_token"]

    port = free_port()
    name = "gateway-test-" + secrets.token_hex(4)
    podman.run(
        "run", "-d", "--name", name, *run_options(container_env | {"PORT": str(port)}), image
    )
    try:
        deadline = time.monotonic() + 60
        while podman.run(
            "exec", name, "attachments-gateway", "healthcheck", check=False
        ).returncode:
            assert time.monotonic() < deadline, podman.run("logs", name).stdout[-3000:]
            time.sleep(0.5)
        downloaded = tmp_path / "downloaded"
        curl = subprocess.run(
            [
                "curl",
                "-sS",
                "-L",
                "-o",
                str(downloaded),
                "-w",
                "%{http_code}",
                "-H",
                f"Authorization: Bearer {demo['read_token']}",
                f"http://127.0.0.1:{port}/api/v1/attachments/{demo['attachment_id']}/download",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert curl.stdout == "200", curl.stderr
        assert downloaded.read_bytes() == DEMO_BODY
        # SIGTERM: in-flight requests drained, pools closed, exit 0.
        podman.run("stop", "-t", "15", name, timeout=60)
        exited = podman.run("inspect", "--format", "{{.State.ExitCode}}", name)
        assert exited.stdout.strip() == "0"
        logged = podman.run("logs", name).stdout.splitlines()
        lines = [json.loads(line) for line in logged if line.startswith("{")]
        assert any(line.get("message") == "stopped" for line in lines)
    finally:
        podman.run("rm", "-f", name, check=False)
