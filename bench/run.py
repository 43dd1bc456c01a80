"""`make bench`: the gateway against its ceiling and a naive build, on this machine.

One run starts, one at a time and on the same data: (1) the ceiling, bare aiohttp
answering the route with a constant 307; (2) the naive build (two queries and aiobotocore
per request); (3) the gateway. Servers are pinned to CPU 0, wrk (when taskset exists) and
the embedded Postgres to CPU 1. Workloads: warm (10,000 attachments, 100 keys) and cold
(1,000,000 attachments), each at 64 and 1,024 connections; then 5,000 idle keep-alive
connections held against the gateway; then a microbenchmark of presigning alone. A sample
of every server's Locations is checked against botocore's own signer. Results go to
bench/results/.

Everything listens on 127.0.0.1; no request leaves the machine. Presigning needs no S3
server: the URLs point at an address nothing listens on and are verified by recomputing
them, not by fetching them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import botocore.auth
import botocore.session
import psutil
from botocore.config import Config

from service.core.disposition import content_disposition
from service.core.settings import DEFAULT_MIGRATIONS_DIR, Settings
from service.core.tokens import digest, display_prefix, generate_token
from service.data.migrations import apply_migrations
from service.devstack.ports import free_port
from service.devstack.processes import stop, wait_for_port
from service.devstack.redis_server import REDIS_SERVER, redis_available

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# The bench's own directory: its data files, its Postgres, and the servers' working
# directory. The gateway reads a `.env` in the directory it starts in, and one left in the
# checkout (as the README's setup makes) would change the builds measured.
WORKDIR = HERE / ".work"
ENDPOINT = "http://127.0.0.1:9"  # discard port: URLs are verified, never fetched
REGION = "us-east-1"
ACCESS_KEY, SECRET_KEY = "AKIABENCHMARK0000001", "bench-secret-key-not-a-real-one-000000000"
ID_FORMAT = "00000000-0000-4000-8000-{:012x}"


@dataclass(frozen=True)
class Workload:
    name: str
    attachments: int
    workspaces: int  # one key each

    @property
    def per_workspace(self) -> int:
        return self.attachments // self.workspaces


WORKLOADS = (Workload("warm", 10_000, 100), Workload("cold", 1_000_000, 100))
# "shipped" is the gateway as a user gets it: the defaults (access log at INFO, the audit
# trail, the abuse limits), the limits raised only as far as the bench's 100 keys at tens
# of thousands of requests a second need. The rest are its breakdown: "gateway" runs,
# like the ceiling and the naive build, without access log (LOG_LEVEL=WARNING), audit
# trail or limits; "gateway+audit" adds the audit trail; "gateway+redis" is "gateway"
# with its limits shared through a local redis-server (on, far above the load), warm only;
# "shipped-quiet" is "shipped" without its access log (LOG_LEVEL=WARNING): what that costs.
SERVERS = (
    "ceiling",
    "naive",
    "shipped",
    "shipped-quiet",
    "gateway",
    "gateway+audit",
    "gateway+redis",
)
SHARED_LIMITS = ("gateway+redis",)
AUDITED = ("shipped", "shipped-quiet", "gateway+audit")
AS_SHIPPED = ("shipped", "shipped-quiet")
# Each key and each workspace may take this many requests a second (and as a burst):
# ten times what one of the 100 gets when the gateway answers 50,000 a second.
SHIPPED_LIMIT = "5000"
# The shipped gateway is also driven past its 1,024 connections, warm: overload.
OVERLOAD_CONNECTIONS = 5000
WARM_UP_SECONDS = {"warm": 15, "cold": 3}  # warm: until (nearly) every id has been seen
# Two costs are measured again from several launches of the builds that differ by them, in
# turn: one launch of a server can run 10 % faster or slower than the next for its whole
# life (fresh processes of the same build, each measured for 10 s after its warm-up, used
# 75-88 µs of CPU a request), so one full run of each cannot resolve a 10 % cost.
PAIRED_COSTS = {
    "audit_cost": ("gateway", "gateway+audit"),  # the audit trail's
    "access_log_cost": ("shipped-quiet", "shipped"),  # the access log's
}
LAUNCHES = 5
# The counters of failed requests in wrk.lua's BENCH line.
ERROR_KINDS = ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")


def server_env(database_url: str, log_level: str, audit: bool) -> dict[str, str]:
    return {
        "AUDIT_ENABLED": "true" if audit else "false",
        "PATH": os.environ["PATH"],
        "HOST": "127.0.0.1",
        "DATABASE_URL": database_url,
        "S3_ENDPOINT_URL": ENDPOINT,
        "S3_REGION": REGION,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_EC2_METADATA_DISABLED": "true",
        "S3_PROBE_INTERVAL_SECONDS": "0",  # nothing listens at ENDPOINT, by design
        # 100 keys share ~10k req/s here: the abuse limits would be the thing measured.
        "RATE_LIMIT_PER_KEY": "0",
        "RATE_LIMIT_PER_WORKSPACE": "0",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "LOG_LEVEL": log_level,
        "PYTHONPATH": str(HERE.parent),
    }


def pinned(cpu: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if shutil.which("taskset") else command


def prepare_to_load() -> tuple[str, Path]:
    """wrk, and the bench's work directory; enough file descriptors for its connections."""
    wrk = ensure_wrk()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    WORKDIR.mkdir(exist_ok=True)
    return wrk, WORKDIR


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (Debian package) ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
        found = shutil.which("wrk")
    if not found:
        sys.exit("bench: wrk is missing; install it (Debian/Ubuntu: apt-get install wrk)")
    return found


async def workload_data(database_url: str, workdir: Path, name: str = "warm") -> Path:
    """A workload (by default the warm one) in a migrated database, and wrk's data file
    for it."""
    await apply_migrations(database_url, DEFAULT_MIGRATIONS_DIR)
    workload = next(w for w in WORKLOADS if w.name == name)
    tokens = await load_data(database_url, workload)
    data = workdir / f"{name}.lua"
    lua_data(data, workload, tokens)
    return data


async def load_data(dsn: str, workload: Workload) -> list[str]:
    """Fresh rows with predictable ids; returns the keys' tokens, one per workspace.

    The tables are emptied first: a database holding workspaces of anyone else is
    refused (`--database-url` may name one in use)."""
    await refuse_database_in_use(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        # Bulk load without the invalidation triggers (no gateway listens yet).
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("TRUNCATE workspaces CASCADE")
        await conn.execute(
            """INSERT INTO workspaces (id, name)
               SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(w), 12, '0'))::uuid,
                      'bench ' || w FROM generate_series(0, $1 - 1) w""",
            workload.workspaces,
        )
        await conn.execute(
            """INSERT INTO attachments (id, workspace_id, bucket, object_key, filename,
                                        content_type, size_bytes)
               SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
                      ('00000000-0000-4000-9000-' || lpad(to_hex(i / $2), 12, '0'))::uuid,
                      'attachments', 'objects/' || i, 'report ' || i || '.pdf',
                      'application/pdf', 1000
               FROM generate_series(0, $1 - 1) i""",
            workload.attachments,
            workload.per_workspace,
        )
        tokens = [generate_token() for _ in range(workload.workspaces)]
        await conn.executemany(
            """INSERT INTO api_keys (workspace_id, display_prefix, token_digest, scope)
               VALUES (('00000000-0000-4000-9000-' || lpad(to_hex($1::int), 12, '0'))::uuid,
                       $2, $3, 'read')""",
            [(w, display_prefix(t), digest(t)) for w, t in enumerate(tokens)],
        )
        await conn.execute("SET session_replication_role = DEFAULT")
        # Settle the fresh table now (hint bits, visibility map, statistics, a checkpoint)
        # rather than under autovacuum in the middle of a measured run.
        await conn.execute("VACUUM (ANALYZE) attachments, api_keys, workspaces")
        await conn.execute("CHECKPOINT")
        return tokens
    finally:
        await conn.close()


async def refuse_database_in_use(dsn: str) -> None:
    """Exit unless the database is empty or holds only the bench's own workspaces: the
    bench migrates it and empties its tables. (Called before migrating, too.)"""
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('workspaces') IS NULL"):
            return
        others = await conn.fetchval(
            "SELECT count(*) FROM workspaces WHERE name NOT LIKE 'bench %'"
        )
    finally:
        await conn.close()
    if others:
        raise SystemExit(
            f"bench: the database holds {others} workspaces the bench did not make, and "
            "the bench empties its tables: give it a database of its own"
        )


def lua_data(path: Path, workload: Workload, tokens: list[str]) -> None:
    keys = ", ".join(f'"{t}"' for t in tokens)
    path.write_text(
        f"return {{ keys = {{ {keys} }}, count = {workload.attachments}, "
        f"per_workspace = {workload.per_workspace} }}\n"
    )


# Settings given with --set NAME=VALUE, for every gateway build: to try a change.
EXTRA_SETTINGS: dict[str, str] = {}


def launch(
    name: str, database_url: str, redis_url: str | None = None
) -> tuple[int, subprocess.Popen[bytes]]:
    """One of SERVERS on a free port, configured as its name says (and by --set)."""
    port = free_port()
    return port, start_server(name, port, build_env(name, database_url, redis_url))


def build_env(name: str, database_url: str, redis_url: str | None = None) -> dict[str, str]:
    """The environment one of SERVERS runs with."""
    level = "INFO" if name == "shipped" else "WARNING"
    env = server_env(database_url, level, audit=name in AUDITED)
    if name in AS_SHIPPED:
        for setting in ("RATE_LIMIT", "RATE_LIMIT_BURST"):
            env[f"{setting}_PER_KEY"] = env[f"{setting}_PER_WORKSPACE"] = SHIPPED_LIMIT
    if name in SHARED_LIMITS:
        assert redis_url is not None
        env |= {
            "RATE_LIMIT_BACKEND": "redis",
            "REDIS_URL": redis_url,
            # Limits on, so that each request asks Redis for its key's and workspace's
            # buckets, but never reached: what is measured is the round trip.
            "RATE_LIMIT_PER_KEY": "1000000",
            "RATE_LIMIT_BURST_PER_KEY": "1000000",
            "RATE_LIMIT_PER_WORKSPACE": "1000000",
            "RATE_LIMIT_BURST_PER_WORKSPACE": "1000000",
        }
    if is_gateway(name):
        env |= EXTRA_SETTINGS
    return env


def start_redis(workdir: Path) -> tuple[str, Callable[[], None]]:
    """A redis-server of the bench's own on a free port, on wrk's core like Postgres,
    answering before it is used: a gateway whose Redis is away falls back to local limits
    and would be measured as the shared ones."""
    if not redis_available():
        sys.exit("bench: redis-server is missing (Debian/Ubuntu: apt-get install redis-server)")
    port = free_port()
    command = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    command += ["--appendonly", "no", "--dir", str(workdir)]
    process = start_process(pinned(1, command))
    try:
        wait_for_port(port, process)
    except RuntimeError as error:
        stop_process(process)
        sys.exit(f"bench: redis-server did not start: {error}")
    return f"redis://127.0.0.1:{port}/0", lambda: stop_process(process)


def start_process(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A server of the bench's, quiet, in the bench's directory (see WORKDIR)."""
    WORKDIR.mkdir(exist_ok=True)
    return subprocess.Popen(
        command, env=env, cwd=WORKDIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still there after 20 s (a gateway writes its last
    audit rows first)."""
    stop(process, grace=20)


def is_gateway(name: str) -> bool:
    """Every build but the ceiling and the naive one runs the service itself."""
    return name not in ("ceiling", "naive")


def start_server(name: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    if is_gateway(name):
        command = [sys.executable, "-m", "service", "serve", "--port", str(port)]
    else:
        command = [sys.executable, str(HERE / f"{name}.py"), str(port)]
    return start_process(pinned(0, command), env)


async def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await asyncio.sleep(1.0)  # let the gateway's listener switch the caches on
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not start")


def rss_mb(pid: int) -> float:
    """Resident memory of the server (the python process under taskset)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The embedded Postgres' data directory (None: --database-url's, whose CPU is not read).
EMBEDDED_POSTGRES: list[Path] = []


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """The Postgres server started on `data_dir` and its backends: no other Postgres of the
    machine (a test suite's, the system's) is counted or pinned."""
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or ()
        if process.info["name"] == "postgres" and str(data_dir) in " ".join(cmdline):
            with contextlib.suppress(psutil.Error):
                return [process, *process.children(recursive=True)]
    return []


def postgres_cpu_seconds() -> float | None:
    """CPU time of the embedded Postgres' processes, its exited backends' included."""
    if not EMBEDDED_POSTGRES:
        return None
    total = 0.0
    for process in postgres_processes(EMBEDDED_POSTGRES[0]):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def run_wrk(
    wrk: str, port: int, connections: int, seconds: int, data: Path, pin: bool = True
) -> dict[str, Any]:
    """wrk on CPU 1 (`pin`), or with two threads wherever a core is free (bench/workers.py,
    whose servers use both cores)."""
    threads = 1 if connections <= 64 and pin else 2
    load = [f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    script = ["-s", str(HERE / "wrk.lua")]
    command = [wrk, *load, *script, f"http://127.0.0.1:{port}"]
    if pin:
        command = pinned(1, command)
    output = subprocess.run(
        command,
        env={**os.environ, "BENCH_DATA": str(data)},
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    line = next(x for x in output.splitlines() if x.startswith("BENCH "))
    stats = json.loads(line[6:])
    seconds_measured = stats["duration_us"] / 1e6
    errors = sum(stats[k] for k in ERROR_KINDS)
    return {
        "rps": round(stats["requests"] / seconds_measured),
        "p50_ms": stats["p50_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "errors": errors,
        "error_kinds": {k: stats[k] for k in ERROR_KINDS if stats[k]},
        "requests": stats["requests"],
    }


def botocore_client() -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        region_name=REGION,
        endpoint_url=ENDPOINT,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


async def metric_value(port: int, sample: str) -> float | None:
    """One sample of the gateway's /metrics, e.g. 'gateway_audit_queued'."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            for line in (await response.text()).splitlines():
                if line.startswith(sample + " "):
                    return float(line.split()[1])
    return None


async def collector_seconds(port: int) -> float:
    """How long the gateway's garbage collector has paused it so far, all generations."""
    total = 0.0
    for generation in range(3):
        sample = f'gateway_gc_pause_seconds_sum{{generation="{generation}"}}'
        total += await metric_value(port, sample) or 0.0
    return total


async def audit_queued(port: int) -> int:
    """The gateway's audit rows not yet written."""
    queued = await metric_value(port, "gateway_audit_queued")
    if queued is None:
        raise RuntimeError("no gateway_audit_queued metric: is the audit trail on?")
    return int(queued)


# The caches a cold load can fill (the bench has 100 keys: the key cache stays small).
DEFAULTS = Settings()
FILLED_CACHES = {"attachments": DEFAULTS.attachment_cache_size, "urls": DEFAULTS.url_cache_size}


async def fill_caches(wrk: str, port: int, data: Path) -> dict[str, int]:
    """More cold load until the attachment and URL caches hold their default sizes (or a
    minute of it has passed: the entries say which)."""
    for _ in range(12):
        entries = await cache_entries(port)
        if all(entries[name] >= size for name, size in FILLED_CACHES.items()):
            return entries
        run_wrk(wrk, port, 64, 5, data)
    return await cache_entries(port)


async def cache_entries(port: int) -> dict[str, int]:
    return {
        name: int(await metric_value(port, f'gateway_cache_entries{{cache="{name}"}}') or 0)
        for name in FILLED_CACHES
    }


async def audit_drained(port: int, give_up_after: float = 60.0) -> float:
    """Seconds until the audit queue is empty after the load stopped."""
    started = time.monotonic()
    while await audit_queued(port):
        if time.monotonic() - started > give_up_after:
            raise RuntimeError(f"audit queue not drained in {give_up_after:.0f} s")
        await asyncio.sleep(0.05)
    return round(time.monotonic() - started, 2)


async def measured_run(
    wrk: str,
    name: str,
    port: int,
    process: subprocess.Popen[bytes],
    connections: int,
    seconds: int,
    data: Path,
) -> dict[str, Any]:
    """One wrk run against a warm server, with the server's and Postgres' CPU per request:
    what a request costs whatever else the machine is doing (its speed drifts)."""
    collector_before = await collector_seconds(port) if is_gateway(name) else None
    cpu_before, db_before = cpu_seconds(process.pid), postgres_cpu_seconds()
    stats = run_wrk(wrk, port, connections, seconds, data)
    requests = max(stats["requests"], 1)
    if collector_before is not None:  # part of the server's CPU, read from its /metrics
        collected = await collector_seconds(port) - collector_before
        stats["gc_us"] = round(collected / requests * 1e6, 1)
    if name in AUDITED:
        # Rows still queued when the load stops are this run's cost too: the CPU is read
        # once they are written, not left to the next run.
        stats["audit_backlog"] = await audit_queued(port)
        stats["audit_drain_s"] = await audit_drained(port)
    stats["cpu_us"] = round((cpu_seconds(process.pid) - cpu_before) / requests * 1e6, 1)
    db_after = postgres_cpu_seconds()
    if db_before is not None and db_after is not None:
        stats["db_cpu_us"] = round((db_after - db_before) / requests * 1e6, 1)
    stats.update(server=name, connections=connections, rss_mb=round(rss_mb(process.pid), 1))
    return stats


async def paired_cost(
    wrk: str,
    database_url: str,
    data: Path,
    builds: tuple[str, str],
    connections: tuple[int, ...],
    launches: int,
    seconds: int,
) -> dict[str, dict[str, Any]]:
    """What the second of `builds` costs over the first on the warm path, from `launches`
    fresh processes of each, measured as the full runs are (warm-up, then each connection
    count) and alternated, who goes first alternating too. The figure is the ratio of the
    builds' median req/s; each build's range says how much one launch alone would have
    said."""
    rps: dict[str, dict[int, list[int]]] = {
        name: {count: [] for count in connections} for name in builds
    }
    cpu: dict[str, dict[int, list[float]]] = {
        name: {count: [] for count in connections} for name in builds
    }
    for turn in range(launches):
        for name in builds if turn % 2 == 0 else reversed(builds):
            port, process = launch(name, database_url)
            try:
                await wait_listening(port, process)
                run_wrk(wrk, port, 64, WARM_UP_SECONDS["warm"], data)
                for count in connections:
                    stats = await measured_run(wrk, name, port, process, count, seconds, data)
                    rps[name][count].append(stats["rps"])
                    cpu[name][count].append(stats["cpu_us"])
                    print(
                        f"  {name:13} launch {turn + 1} c={count:<5} {stats['rps']:,} req/s "
                        f"{stats['cpu_us']} µs/req",
                        flush=True,
                    )
            finally:
                stop_process(process)
    without, with_ = builds
    results = {}
    for count in connections:
        base, added = (statistics.median(rps[name][count]) for name in builds)
        base_cpu, added_cpu = (statistics.median(cpu[name][count]) for name in builds)
        results[str(count)] = {
            "builds": list(builds),
            "launches": launches,
            "seconds": seconds,
            "rps": rps[without][count],
            "rps_with": rps[with_][count],
            "rps_ratio_of_medians": round(added / base, 3),
            "cpu_us_median": round(base_cpu, 1),
            "cpu_us_added_median": round(added_cpu - base_cpu, 1),
        }
        print(f"  {with_} / {without}, c={count}: {results[str(count)]}", flush=True)
    return results


async def verify_locations(port: int, workload: Workload, tokens: list[str], n: int) -> int:
    """Fetch n redirects and recompute each Location with botocore: mismatches."""
    from urllib.parse import parse_qs, urlsplit

    import aiohttp

    client = botocore_client()
    bad = 0
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            i = random.randrange(workload.attachments)
            token = tokens[i // workload.per_workspace]
            url = f"http://127.0.0.1:{port}/api/v1/attachments/{ID_FORMAT.format(i)}/download"
            async with session.get(
                url, headers={"Authorization": f"Bearer {token}"}, allow_redirects=False
            ) as response:
                location = response.headers.get("Location", "")
            amz_date = parse_qs(urlsplit(location).query).get("X-Amz-Date", [""])[0]
            if response.status != 307 or not amz_date:
                bad += 1
                continue
            at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
            original = botocore.auth.get_current_datetime
            botocore.auth.get_current_datetime = lambda at=at: at
            try:
                expected = client.generate_presigned_url(
                    "get_object",
                    Params={
                        "Bucket": "attachments",
                        "Key": f"objects/{i}",
                        "ResponseContentDisposition": content_disposition(f"report {i}.pdf"),
                        "ResponseContentType": "application/pdf",
                    },
                    ExpiresIn=900,
                )
            finally:
                botocore.auth.get_current_datetime = original
            bad += location != expected
    return bad


async def hold_idle_connections(port: int, count: int) -> int:
    """Open `count` keep-alive connections, one request each, and keep them open."""
    writers = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
            await writer.drain()
            await reader.readuntil(b'{"status": "ok"}')
            writers.append(writer)
        await asyncio.sleep(1.0)
        return len(writers)
    finally:
        for writer in writers:
            writer.close()


async def presign_microbenchmark() -> dict[str, float]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    from service.storage.signer import QuerySigner

    os.environ.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
    session = get_session()
    config = AioConfig(signature_version="s3v4", s3={"addressing_style": "path"})
    response = {
        "response-content-disposition": content_disposition("report 1.pdf"),
        "response-content-type": "application/pdf",
    }
    params = {
        "Bucket": "attachments",
        "Key": "objects/1",
        "ResponseContentDisposition": response["response-content-disposition"],
        "ResponseContentType": "application/pdf",
    }
    async with session.create_client(
        "s3", region_name=REGION, endpoint_url=ENDPOINT, config=config
    ) as client:
        signer = QuerySigner(client, await session.get_credentials())
        await signer.presign("GET", "attachments", "objects/1", response.items(), 900)
        n = 2000
        started = time.perf_counter()
        for _ in range(n):
            await client.generate_presigned_url("get_object", Params=params, ExpiresIn=900)
        aiobotocore_us = (time.perf_counter() - started) / n * 1e6
        n = 50_000
        started = time.perf_counter()
        for _ in range(n):
            await signer.presign("GET", "attachments", "objects/1", response.items(), 900)
        fast_us = (time.perf_counter() - started) / n * 1e6
        # Never-seen keys and filenames: nothing memoized.
        targets = [
            (
                f"objects/{i}",
                {
                    "response-content-disposition": content_disposition(f"r{i}.pdf"),
                    "response-content-type": "application/pdf",
                },
            )
            for i in range(n)
        ]
        started = time.perf_counter()
        for key, fresh in targets:
            await signer.presign("GET", "attachments", key, fresh.items(), 900)
        fresh_us = (time.perf_counter() - started) / n * 1e6
    return {
        "aiobotocore_us": round(aiobotocore_us, 1),
        "gateway_us": round(fast_us, 2),
        "gateway_unseen_us": round(fresh_us, 2),
        "speedup": round(aiobotocore_us / fast_us, 1),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    wrk, workdir = prepare_to_load()
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{machine}, Python {platform.python_version()}",
        "seconds_per_run": args.seconds,
        "runs": [],
    }
    if args.presign:
        print("presign microbenchmark ...", flush=True)
        results["presign"] = await presign_microbenchmark()
        print(f"  {results['presign']}", flush=True)

    database_url, stop_database = await database(args, workdir)
    redis_url: str | None = None
    stop_redis: Callable[[], None] = lambda: None  # noqa: E731 - nothing to stop
    try:
        if set(SHARED_LIMITS) & set(args.servers):
            redis_url, stop_redis = start_redis(workdir)
        await apply_migrations(database_url, DEFAULT_MIGRATIONS_DIR)
        for workload in (w for w in WORKLOADS if w.name in args.workloads):
            print(f"loading {workload.name}: {workload.attachments:,} attachments ...", flush=True)
            tokens = await load_data(database_url, workload)
            data = workdir / f"{workload.name}.lua"
            lua_data(data, workload, tokens)
            for name in args.servers:
                if name in SHARED_LIMITS and workload.name != "warm":
                    continue
                port, process = launch(name, database_url, redis_url)
                try:
                    await wait_listening(port, process)
                    # Warm-up: pools, caches, code paths.
                    run_wrk(wrk, port, 64, WARM_UP_SECONDS[workload.name], data)
                    mismatches = 0
                    if name != "ceiling":
                        mismatches = await verify_locations(port, workload, tokens, args.verify)
                    counts = list(args.connections)
                    if name == "shipped" and workload.name == "warm" and args.overload:
                        counts.append(args.overload)
                    for connections in counts:
                        stats = await measured_run(
                            wrk, name, port, process, connections, args.seconds, data
                        )
                        stats.update(workload=workload.name, location_mismatches=mismatches)
                        results["runs"].append(stats)
                        print(f"  {name:8} {workload.name} c={connections:<5} {stats}", flush=True)
                    if name == "gateway" and workload.name == "cold":
                        entries = await fill_caches(wrk, port, data)
                        results["full_caches"] = {
                            "entries": entries,
                            "sizes": FILLED_CACHES,
                            "rss_mb": round(rss_mb(process.pid), 1),
                        }
                        print(f"  caches filled: {results['full_caches']}", flush=True)
                    if name == "gateway" and workload.name == "cold" and args.idle:
                        before = rss_mb(process.pid)
                        held = await hold_idle_connections(port, args.idle)
                        results["idle"] = {
                            "connections": held,
                            "rss_before_mb": round(before, 1),
                            "rss_after_mb": round(rss_mb(process.pid), 1),
                        }
                        print(f"  idle keep-alive: {results['idle']}", flush=True)
                    if name in SHARED_LIMITS:
                        # Local buckets stood in for Redis: not the build named.
                        fell_back = await metric_value(port, "gateway_rate_limit_fallbacks_total")
                        if fell_back:
                            raise RuntimeError(f"{name}: local limits {fell_back:.0f} times")
                finally:
                    stop_process(process)
            for cost, builds in PAIRED_COSTS.items():
                if workload.name == "warm" and args.launches and set(builds) <= set(args.servers):
                    print(f"{builds[1]} against {builds[0]}, launches in turn ...", flush=True)
                    results[cost] = await paired_cost(
                        wrk,
                        database_url,
                        data,
                        builds,
                        args.connections,
                        args.launches,
                        args.seconds,
                    )
    finally:
        stop_redis()
        stop_database()
    return results


async def database(args: argparse.Namespace, workdir: Path) -> tuple[str, Callable[[], None]]:
    if args.database_url:
        await refuse_database_in_use(args.database_url)
        return args.database_url, lambda: None
    import pgserver

    shutil.rmtree(workdir / "pg", ignore_errors=True)
    server = pgserver.get_server(workdir / "pg", cleanup_mode="delete")  # type: ignore[attr-defined]
    EMBEDDED_POSTGRES[:] = [workdir / "pg"]
    pin_postgres(workdir / "pg", cpu=1)
    return server.get_uri(), server.cleanup


def pin_postgres(data_dir: Path, cpu: int) -> None:
    """Postgres on wrk's core: the server under test keeps CPU 0 to itself, as it would
    with its database on another machine (Postgres writing audit rows, vacuuming them,
    once took turns on the server's core). Backends started later inherit the affinity."""
    for process in postgres_processes(data_dir):
        process.cpu_affinity([cpu])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--verify", type=int, default=200, help="Locations checked per server")
    parser.add_argument("--idle", type=int, default=5000, help="idle keep-alive connections")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every gateway build (repeatable), e.g. CACHE_TTL_SECONDS=3600",
    )
    parser.add_argument(
        "--overload",
        type=int,
        default=OVERLOAD_CONNECTIONS,
        help="connections of the shipped gateway's extra warm run (0: none)",
    )
    parser.add_argument(
        "--database-url",
        help="a Postgres of the bench's own instead of an embedded one: it is migrated and its "
        "tables emptied (refused if it holds others' workspaces), and its CPU is not read",
    )
    # A partial run (for profiling one change) prints its table but leaves results/ alone.
    parser.add_argument("--servers", type=_names(SERVERS), default=SERVERS)
    workloads = tuple(w.name for w in WORKLOADS)
    parser.add_argument("--workloads", type=_names(workloads), default=workloads)
    parser.add_argument(
        "--connections", type=lambda v: tuple(map(int, v.split(","))), default=(64, 1024)
    )
    parser.add_argument("--no-presign", dest="presign", action="store_false")
    parser.add_argument(
        "--launches",
        type=int,
        default=LAUNCHES,
        help="launches of each build of PAIRED_COSTS' pairs, in turn (0: none)",
    )
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    for setting in args.set:
        name, sep, value = setting.partition("=")
        if not sep:
            parser.error(f"--set {setting}: expected NAME=VALUE")
        EXTRA_SETTINGS[name] = value
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    results = asyncio.run(bench(args))
    from bench.report import write_reports

    if not is_full_run(parser, args):
        for run in results["runs"]:
            print(
                f"{run['workload']:5} c={run['connections']:<5} {run['server']:12} "
                f"{run['rps']:>7,} req/s  p50 {run['p50_ms']:.1f} ms  p99 {run['p99_ms']:.1f} ms  "
                f"CPU {run['cpu_us']} µs/req (GC {run.get('gc_us', 'n/a')})  "
                f"Postgres {run.get('db_cpu_us', 'n/a')} µs/req  {run['error_kinds']}"
            )
        for connections, cost in results.get("audit_cost", {}).items():
            print(f"audit cost c={connections}: {cost}")
        return

    RESULTS.mkdir(exist_ok=True)
    print(write_reports(results, RESULTS))


def is_full_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> bool:
    """Only a run with every default (every build, workload and check, no --set) writes
    bench/results/: anything less would stand there as the shipped configuration's."""
    return all(value == parser.get_default(name) for name, value in vars(args).items())


def _names(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(value: str) -> tuple[str, ...]:
        names = tuple(value.split(","))
        if unknown := set(names) - set(allowed):
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(sorted(unknown))}")
        return names

    return parse


if __name__ == "__main__":
    main()
