"""`attachments-gateway cluster` (`make cluster`): the scaled-out topology on one machine.

The dev stack's embedded Postgres and S3, PgBouncer in transaction mode in front of that
Postgres, a Redis for the shared rate limits, N gateway processes and HAProxy balancing
over them (round robin, health checks on /readyz), all on loopback, from Debian's
pgbouncer, redis-server and haproxy. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ..core.settings import Settings
from ..data.migrations import apply_migrations
from .demo import ensure_demo
from .haproxy import HAPROXY, haproxy_available, run_haproxy
from .pgbouncer import PGBOUNCER, pgbouncer_available, run_pgbouncer
from .ports import free_port
from .processes import CannotStart, starting_stack
from .redis_server import REDIS_SERVER, redis_available, run_redis
from .stack import DEV_DIR, embedded_postgres, embedded_s3

CLUSTER_DIR = DEV_DIR / "cluster"


class MissingTool(CannotStart):
    """A program the cluster needs is not installed: the message says which."""


def run_cluster(port: int, replicas: int, dev_dir: Path = DEV_DIR) -> None:
    missing = [
        path
        for path, there in (
            (PGBOUNCER, pgbouncer_available()),
            (REDIS_SERVER, redis_available()),
            (HAPROXY, haproxy_available()),
        )
        if not there
    ]
    if missing:
        raise MissingTool(
            f"not installed: {', '.join(missing)} (apt-get install pgbouncer redis-server haproxy)"
        )
    # The embedded S3 knows its own key pair only: a session token would spoil it.
    os.environ.pop("AWS_SESSION_TOKEN", None)
    with contextlib.ExitStack() as stack:
        dev_dir = stack.enter_context(starting_stack(dev_dir, port))
        work = dev_dir / "cluster"
        work.mkdir(parents=True, exist_ok=True)
        print("starting embedded Postgres, S3, PgBouncer and Redis ...", flush=True)
        database_url = stack.enter_context(embedded_postgres(dev_dir / "postgres"))
        bucket = Settings.from_env({}).s3_default_bucket
        s3, kind = stack.enter_context(embedded_s3(dev_dir / "s3", bucket, avoid=port))
        bouncer_url = stack.enter_context(run_pgbouncer(database_url, work / "pgbouncer"))
        redis = stack.enter_context(run_redis(work / "redis"))
        environment = {
            **os.environ,
            "DATABASE_URL": bouncer_url,
            "DATABASE_DIRECT_URL": database_url,
            "DB_STATEMENT_CACHE_SIZE": "0",
            "RATE_LIMIT_BACKEND": "redis",
            "REDIS_URL": redis.url,
            "S3_ENDPOINT_URL": s3.endpoint_url,
            "S3_REGION": s3.region,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        }
        environment.pop("AWS_SESSION_TOKEN", None)
        settings = Settings.from_env(environment)
        asyncio.run(apply_migrations(settings.direct_database_url, settings.migrations_dir))
        os.environ.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key)
        demo = asyncio.run(ensure_demo(settings, dev_dir / "demo.json"))
        taken = frozenset({port})
        ports: list[int] = []
        for _ in range(replicas):
            ports.append(free_port(taken | frozenset(ports)))
        running = stack.enter_context(gateways(ports, environment, work))
        base_url = stack.enter_context(run_haproxy(ports, work / "haproxy", port=port))
        print(
            "\nattachments-gateway cluster\n"
            f"  balancer    {base_url} (HAProxy, round robin over {replicas} gateways: "
            f"{', '.join(map(str, ports))})\n"
            f"  database    {bouncer_url} (PgBouncer, transaction mode) -> {database_url}\n"
            f"  limits      {redis.url} (shared by every gateway)\n"
            f"  s3          {s3.endpoint_url} ({kind})\n"
            f"  read key    {demo.read_token}\n\n"
            f"Download the demo file through the balancer:\n  {demo.curl(base_url)}\n\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                running.check()
                time.sleep(1.0)


# How long the gateways have to answer /readyz once started.
READY_SECONDS = 60.0
# Straight to loopback, whatever proxy the environment names.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Gateways:
    """The gateway processes, by port, with their logs."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def log(self, number: int) -> Path:
        return self.work / f"gateway{number}.log"

    def check(self) -> None:
        """Every gateway still runs: one that ended ends the cluster, saying where to look."""
        for number, (port, process) in enumerate(self.processes.items()):
            if process.poll() is not None:
                raise CannotStart(
                    f"the gateway on port {port} exited with {process.returncode}:"
                    f" see {self.log(number)}"
                )

    def wait_ready(self, timeout: float = READY_SECONDS) -> None:
        """Until each answers /readyz with 200 (the banner promises a working cluster)."""
        deadline = time.monotonic() + timeout
        for port in self.processes:
            while not is_ready(port):
                self.check()
                if time.monotonic() > deadline:
                    raise CannotStart(
                        f"the gateway on port {port} was not ready in {timeout:.0f} s"
                    )
                time.sleep(0.2)


def is_ready(port: int) -> bool:
    try:
        with DIRECT.open(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return int(answer.status) == 200
    except OSError:  # refused, not yet listening, or 503 (HTTPError is an OSError)
        return False


@contextlib.contextmanager
def gateways(ports: list[int], environment: dict[str, str], work: Path) -> Iterator[Gateways]:
    """One `attachments-gateway serve` process a port, logging to work/gatewayN.log;
    yielded once every one is ready."""
    running = Gateways(work)
    processes = running.processes
    try:
        for number, port in enumerate(ports):
            with running.log(number).open("wb") as log:
                processes[port] = subprocess.Popen(  # noqa: S603 - our own interpreter
                    [sys.executable, "-m", "service", "serve", "--port", str(port)],
                    env=environment,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        running.wait_ready()
        yield running
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
