"""The operator CLI, run as operators run it: a real process, real Postgres, real S3."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import pty
import re
import subprocess
import sys
import uuid
from urllib.parse import urlsplit

import pytest
from moto.server import ThreadedMotoServer
from yarl import URL

from service.devstack.ports import free_port
from service.devstack.seaweed import S3Server, ensure_bucket
from service.storage.uploads import PART_SIZE
from service.web.app import create_app
from tests.support.environment import gateway_env, process_env
from tests.support.proxy import RecordingHttpProxy
from tests.support.storage import BUCKET

TOKEN_SHAPE = r"^ixk_[0-9A-Za-z]{38}$"


@pytest.fixture(scope="module")
def moto_s3():
    """moto's server: a fast S3 API where no signature check is needed (uploads)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Server(f"http://127.0.0.1:{port}", "moto-access", "moto-secret")
    ensure_bucket(s3.client(), "uploads")
    yield s3
    server.stop()


def as_json(result):
    return json.loads(result.stdout)


def three_part_file(tmp_path):
    """A file of three parts, the last one short; and its bytes."""
    path = tmp_path / "big.bin"
    body = os.urandom(PART_SIZE * 2 + 12345)
    path.write_bytes(body)
    return path, body


def add_file(cli, workspace, path, *options, **run):
    """`attachment add --json` of `path`: what it printed."""
    return as_json(
        cli("attachment", "add", "--workspace", workspace, str(path), *options, "--json", **run)
    )


def base64_sha256(data):
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def open_uploads(s3, workspace):
    """The workspace's multipart uploads still open in the suite's bucket."""
    uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{workspace}/")
    return uploads.get("Uploads", [])


@pytest.mark.slow
def test_workspace_lifecycle(cli):
    created = as_json(cli("workspace", "create", "Acme", "--json"))
    assert set(created) == {"id", "name", "api_access"}
    assert created["name"] == "Acme" and created["api_access"] is True
    blocked = as_json(cli("workspace", "create", "Blocked", "--no-api-access", "--json"))
    assert blocked["api_access"] is False

    listed = {w["id"]: w for w in as_json(cli("workspace", "list", "--json"))}
    assert listed[created["id"]]["name"] == "Acme"
    assert listed[blocked["id"]]["api_access"] is False

    human = cli("workspace", "set-api-access", blocked["id"], "on").stdout
    assert f"api access on for workspace {blocked['id']}" in human
    listed = {w["id"]: w for w in as_json(cli("workspace", "list", "--json"))}
    assert listed[blocked["id"]]["api_access"] is True
    assert "created workspace" in cli("workspace", "create", "Plain").stdout


@pytest.mark.slow
def test_keys_are_shown_once_and_listed_without_secrets(cli):
    workspace = as_json(cli("workspace", "create", "Keys", "--json"))["id"]
    key = as_json(
        cli(
            "key",
            "create",
            "--workspace",
            workspace,
            "--scope",
            "write",
            "--name",
            "ci",
            "--expires-in",
            "3600",
            "--json",
        )
    )
    assert set(key) == {"id", "token", "prefix", "scope", "expires_at"}
    assert key["scope"] == "write" and key["expires_at"]
    assert key["token"].startswith(key["prefix"]) and len(key["token"]) == 42
    read = as_json(cli("key", "create", "--workspace", workspace, "--json"))
    assert read["scope"] == "read" and read["expires_at"] is None

    listing = cli("key", "list", "--workspace", workspace, "--json").stdout
    assert key["token"] not in listing and read["token"] not in listing
    keys = {k["id"]: k for k in json.loads(listing)}
    assert keys[key["id"]]["status"] == "active" and keys[key["id"]]["name"] == "ci"

    assert f"revoked key {key['id']}" in cli("key", "revoke", key["id"]).stdout
    keys = {k["id"]: k for k in as_json(cli("key", "list", "--workspace", workspace, "--json"))}
    assert keys[key["id"]]["status"] == "revoked"
    assert key["token"] not in cli("key", "list", "--workspace", workspace).stdout
    cli("key", "revoke", key["id"], expect=2)


@pytest.mark.slow
async def test_attachment_add_uploads_and_the_gateway_serves_it(
    cli, serve_app, settings, seaweed_client, tmp_path
):
    workspace = as_json(cli("workspace", "create", "Files", "--json"))["id"]
    token = as_json(cli("key", "create", "--workspace", workspace, "--json"))["token"]
    path = tmp_path / "résumé.pdf"
    body = os.urandom(100_000)
    path.write_bytes(body)
    added = add_file(cli, workspace, path)
    assert added["filename"] == "résumé.pdf"
    assert added["content_type"] == "application/pdf"
    assert added["size_bytes"] == len(body)
    assert added["bucket"] == BUCKET
    assert added["sha256"] == hashlib.sha256(body).hexdigest()
    head = seaweed_client.head_object(Bucket=BUCKET, Key=added["key"], ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64_sha256(body)  # sent with the PUT, and checked

    client = await serve_app(create_app(settings))
    response = await client.get(
        f"/api/v1/attachments/{added['id']}/download",
        headers={"Authorization": f"Bearer {token}"},
        allow_redirects=False,
    )
    assert response.status == 307
    metadata = await client.get(
        f"/api/v1/attachments/{added['id']}", headers={"Authorization": f"Bearer {token}"}
    )
    assert (await metadata.json())["digest"] == "sha256:" + added["sha256"]
    import aiohttp

    async with aiohttp.ClientSession() as session:
        location = URL(response.headers["Location"], encoded=True)
        async with session.get(location) as s3_response:
            assert s3_response.status == 200
            assert await s3_response.read() == body
            assert (
                "filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
                in s3_response.headers["Content-Disposition"]
            )

    assert f"deleted attachment {added['id']}" in cli("attachment", "delete", added["id"]).stdout
    response = await client.get(
        f"/api/v1/attachments/{added['id']}/download",
        headers={"Authorization": f"Bearer {token}"},
        allow_redirects=False,
    )
    assert response.status == 404
    cli("attachment", "delete", added["id"], expect=2)


@pytest.mark.slow
def test_large_files_go_up_in_parts(cli, moto_s3, tmp_path):
    workspace = as_json(cli("workspace", "create", "Big", "--json"))["id"]
    path, body = three_part_file(tmp_path)
    options = ("--bucket", "uploads", "--content-type", "application/x-big")
    added = add_file(cli, workspace, path, *options, s3=moto_s3)
    s3 = moto_s3.client()
    head = s3.head_object(Bucket="uploads", Key=added["key"])
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert head["ContentLength"] == len(body)
    assert s3.get_object(Bucket="uploads", Key=added["key"])["Body"].read() == body
    assert s3.list_multipart_uploads(Bucket="uploads").get("Uploads", []) == []


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["1", "4"])
def test_parts_go_up_in_parallel_and_seaweedfs_verifies_each(
    cli, seaweed_client, tmp_path, parallel
):
    workspace = as_json(cli("workspace", "create", "Parallel", "--json"))["id"]
    path, body = three_part_file(tmp_path)
    added = add_file(cli, workspace, path, "--parallel", parallel)
    assert added["size_bytes"] == len(body)
    assert added["sha256"] == hashlib.sha256(body).hexdigest()
    s3 = seaweed_client
    assert s3.get_object(Bucket=BUCKET, Key=added["key"])["Body"].read() == body
    # S3's composite checksum: the SHA-256 of the parts' SHA-256s, in part order.
    parts = [body[start : start + PART_SIZE] for start in range(0, len(body), PART_SIZE)]
    composite = base64_sha256(b"".join(hashlib.sha256(part).digest() for part in parts))
    head = s3.head_object(Bucket=BUCKET, Key=added["key"], ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == f"{composite}-3"
    assert open_uploads(s3, workspace) == []


@pytest.mark.slow
async def test_a_part_damaged_on_the_way_is_refused_and_the_upload_aborted(
    cli, conn, seaweed, seaweed_client, tmp_path
):
    workspace = as_json(cli("workspace", "create", "Damaged", "--json"))["id"]
    path, _ = three_part_file(tmp_path)
    async with RecordingHttpProxy(seaweed.endpoint_url, damaged_part=2) as proxy:
        through_proxy = S3Server(proxy.url, seaweed.access_key, seaweed.secret_key)
        # In a thread: the proxy serves on this test's event loop meanwhile.
        failed = await asyncio.to_thread(
            cli,
            "attachment",
            "add",
            "--workspace",
            workspace,
            str(path),
            s3=through_proxy,
            expect=1,
        )
    assert failed.stderr.startswith("attachments-gateway: error: upload failed: ")
    assert "BadDigest" in failed.stderr and failed.stderr.count("\n") == 1
    methods = [(method, path_qs) for method, path_qs, _ in proxy.requests]
    aborts = [i for i, (method, path_qs) in enumerate(methods) if method == "DELETE"]
    assert len(aborts) == 1 and aborts[0] == len(methods) - 1  # no part sent after the abort
    assert any("partNumber=2" in path_qs for _, path_qs in methods)
    assert open_uploads(seaweed_client, workspace) == []
    assert seaweed_client.list_objects_v2(Bucket=BUCKET, Prefix=f"{workspace}/")["KeyCount"] == 0
    registered = "SELECT count(*) FROM attachments WHERE workspace_id = $1"
    assert await conn.fetchval(registered, uuid.UUID(workspace)) == 0


def add_refused(cli, tmp_path, workspace_name, *options):
    """`attachment add` of a small file to a new workspace with these options, refused
    (exit 2): the workspace's id and the result."""
    workspace = as_json(cli("workspace", "create", workspace_name, "--json"))["id"]
    path = tmp_path / "small.bin"
    path.write_bytes(b"data")
    refused = cli("attachment", "add", "--workspace", workspace, str(path), *options, expect=2)
    return workspace, refused


@pytest.mark.parametrize("filename", ["x" * 1025, "tab\there.txt"])
@pytest.mark.slow
def test_a_filename_the_table_would_refuse_is_refused_before_any_upload(
    cli, seaweed_client, tmp_path, filename
):
    workspace, refused = add_refused(cli, tmp_path, "Long names", "--filename", filename)
    assert "the filename must be 1 to 1,024 characters" in refused.stderr
    assert seaweed_client.list_objects_v2(Bucket=BUCKET, Prefix=f"{workspace}/")["KeyCount"] == 0
    args = ("--workspace", workspace, "--bucket", BUCKET, "--key", "k", "--filename", filename)
    cli("attachment", "register", *args, expect=2)


@pytest.mark.slow
def test_a_bucket_name_the_table_would_refuse_is_one_line_and_exit_2(cli, tmp_path):
    workspace, refused = add_refused(cli, tmp_path, "Short buckets", "--bucket", "ab")
    assert "a bucket's name is 3 to 63 characters" in refused.stderr
    args = ("--workspace", workspace, "--bucket", "b" * 64, "--key", "k", "--filename", "f")
    refused = cli("attachment", "register", *args, expect=2)
    assert "a bucket's name is 3 to 63 characters" in refused.stderr


@pytest.mark.parametrize("key", ["a/../b", "./x", "..", "x/.", "k" * 1025])
@pytest.mark.slow
def test_an_object_key_no_url_could_name_is_refused(cli, key):
    """Clients resolve `.` and `..` in a URL's path before sending it: the URL presigned
    for `a/../b` asks for `b`, and S3 refuses its signature."""
    workspace = as_json(cli("workspace", "create", "Dotted keys", "--json"))["id"]
    args = ("--workspace", workspace, "--bucket", BUCKET, "--key", key, "--filename", "f")
    refused = cli("attachment", "register", *args, expect=2)
    assert "an object key is 1 to 1,024 characters, with no path segment" in refused.stderr
    assert refused.stderr.count("\n") == 1


@pytest.mark.parametrize("value", ["0", "17", "many"])
@pytest.mark.slow
def test_a_bad_parallel_value_is_one_line_and_exit_2(cli, tmp_path, value):
    _, refused = add_refused(cli, tmp_path, "Bad parallel", "--parallel", value)
    assert "--parallel" in refused.stderr


@pytest.mark.slow
def test_the_progress_bar_advances_as_parts_finish(cli, database_url, moto_s3, tmp_path):
    workspace = as_json(cli("workspace", "create", "Progress", "--json"))["id"]
    path, _ = three_part_file(tmp_path)
    # The bar is drawn only on a terminal: stderr is one here.
    terminal, stderr = pty.openpty()
    try:
        add = [*("attachment", "add", "--workspace", workspace, str(path)), "--bucket", "uploads"]
        result = subprocess.run(
            [sys.executable, "-m", "service", *add],
            env=gateway_env(database_url, moto_s3),
            stdout=subprocess.PIPE,
            stderr=stderr,
            timeout=120,
        )
        drawn = os.read(terminal, 65536).decode()
    finally:
        os.close(terminal)
        os.close(stderr)
    assert result.returncode == 0
    shares = [float(share) for share in re.findall(r"\] +([\d.]+)%", drawn)]
    # Once per part as it finishes, in whatever order they finish (the short last part
    # often first): 0.1% for it alone, 50.0% for a full part (or one and the short one).
    assert len(shares) == 3 and shares == sorted(shares) and shares[-1] == 100.0
    assert set(shares) <= {0.1, 50.0, 99.9, 100.0}
    assert drawn.endswith("100.0% 16.0/16.0 MiB\r\n")


@pytest.mark.slow
def test_register_an_existing_object(cli, seaweed):
    workspace = as_json(cli("workspace", "create", "Existing", "--json"))["id"]
    key = f"imported/{uuid.uuid4()}"
    seaweed.client().put_object(Bucket=BUCKET, Key=key, Body=b"old data")
    registered = as_json(
        cli(
            "attachment",
            "register",
            "--workspace",
            workspace,
            "--bucket",
            BUCKET,
            "--key",
            key,
            "--filename",
            "old.txt",
            "--content-type",
            "text/plain",
            "--size",
            "8",
            "--json",
        )
    )
    assert registered["key"] == key and registered["size_bytes"] == 8
    assert uuid.UUID(registered["id"])


@pytest.mark.parametrize(
    "args",
    [
        ("workspace", "set-api-access", "not-a-uuid", "on"),
        ("workspace", "set-api-access", str(uuid.uuid4()), "on"),
        ("workspace", "set-api-access", str(uuid.uuid4()), "maybe"),
        ("workspace", "create", ""),
        ("key", "create", "--workspace", str(uuid.uuid4())),
        ("key", "create", "--workspace", "nope"),
        ("key", "create", "--workspace", str(uuid.uuid4()), "--scope", "admin"),
        ("key", "revoke", str(uuid.uuid4())),
        ("attachment", "add", "--workspace", str(uuid.uuid4()), "/nonexistent/file"),
        ("attachment", "delete", str(uuid.uuid4())),
        (
            "attachment",
            "register",
            "--workspace",
            str(uuid.uuid4()),
            "--bucket",
            BUCKET,
            "--key",
            "k",
            "--filename",
            "f",
        ),
        # Past what a date can hold: the option's line, not a traceback.
        ("audit", "--workspace", str(uuid.uuid4()), "--since", "999999999d"),
        ("purge", "--older-than", "999999999d", "--dry-run"),
        ("key", "create", "--workspace", str(uuid.uuid4()), "--expires-in", "10" * 10),
        ("nonsense",),
        (),
        # Each once a traceback, or silently ignored (0 read as "not given").
        ("serve", "--port", "99999"),
        ("serve", "--port", "0"),
        ("serve", "--workers", "0"),
        ("healthcheck", "--url", "localhost/healthz"),
    ],
)
@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_2(cli, args):
    cli(*args, expect=2)


@pytest.mark.slow
def test_serve_refuses_its_metrics_on_its_own_port(cli):
    """With workers, both listeners took the port: /metrics answered public requests."""
    result = cli(
        "serve", "--port", "9109", "--workers", "2", expect=2, env={"METRICS_PORT": "9109"}
    )
    assert "METRICS_PORT must differ from the port served (9109)" in result.stderr


@pytest.mark.slow
def test_bad_media_type_and_expiry_are_refused(cli, tmp_path):
    workspace = as_json(cli("workspace", "create", "Strict", "--json"))["id"]
    cli("key", "create", "--workspace", workspace, "--expires-in", "0", expect=2)
    cli(
        "attachment",
        "register",
        "--workspace",
        workspace,
        "--bucket",
        BUCKET,
        "--key",
        "k",
        "--filename",
        "f",
        "--content-type",
        "text/html\r\nX: y",
        expect=2,
    )


def test_an_unreachable_database_is_exit_1_in_one_line(cli):
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    result = cli("workspace", "list", expect=1, env={"DATABASE_URL": closed})
    assert result.stderr.startswith("attachments-gateway: error: database unreachable")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_settings_come_from_a_dotenv_file_below_the_environment(cli, tmp_path, database_url):
    created = json.loads(cli("workspace", "create", "From dotenv", "--json").stdout)
    (tmp_path / ".env").write_text(f"DATABASE_URL={database_url}\n")
    result = subprocess.run(
        [sys.executable, "-m", "service", "workspace", "list", "--json"],
        cwd=tmp_path,
        env=process_env(PYTHONPATH=str(os.getcwd())),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # The test's own database, not the default one (127.0.0.1:5432) on a machine that has it.
    assert created["id"] in [workspace["id"] for workspace in json.loads(result.stdout)]
    closed = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    result = subprocess.run(
        [sys.executable, "-m", "service", "workspace", "list"],
        cwd=tmp_path,
        env=process_env(PYTHONPATH=str(os.getcwd()), DATABASE_URL=closed),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "database unreachable" in result.stderr
    assert urlsplit(database_url).scheme == "postgresql"


def test_the_entry_point_stays_callable_once_the_commands_are_imported():
    """`service.cli:main` (the console script's) imports the commands only when called; no
    submodule of the package may share its name, or importing it would rebind
    `service.cli.main` to the module."""
    import service.cli
    import service.cli.command_line  # what main() imports

    assert callable(service.cli.main)
    assert service.cli.main.__module__ == "service.cli"
