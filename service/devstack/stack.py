"""`attachments-gateway dev`: the whole stack on one machine, with nothing configured.

An embedded Postgres (pgserver) and an embedded S3 (SeaweedFS, which checks signatures
like S3; moto's server where no `weed` binary exists), both keeping their data under
`./.dev/`, then migrations, the demo tenant, and the gateway on 127.0.0.1. Ctrl-C (or
SIGTERM, or SIGHUP) stops the gateway first, then everything this command started; what
a stack killed outright left running is stopped by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path

from ..core.settings import Settings
from ..data.migrations import apply_migrations
from ..server.processes import serve
from .demo import ensure_demo
from .ports import free_port, port_is_free
from .processes import ignore_further_signals, starting_stack
from .seaweed import S3Server, run_seaweedfs, weed_binary

DEV_DIR = Path(".dev")
# Credentials of the embedded S3 only; it listens on loopback and holds demo data.
DEV_ACCESS_KEY = "dev-gateway-access-key"
DEV_SECRET_KEY = "dev-gateway-secret-key"  # noqa: S105 - the embedded S3's local identity
PREFERRED_S3_PORT = 8333


def run_dev_stack(port: int, configured: Settings | None = None, dev_dir: Path = DEV_DIR) -> None:
    """`configured`: the environment's settings, all kept but where the stack's own
    database and S3 are (DATABASE_*, S3_*), its port and its CORS."""
    with contextlib.ExitStack() as stack:
        dev_dir = stack.enter_context(starting_stack(dev_dir, port))
        print("starting embedded Postgres ...", flush=True)
        database_url = stack.enter_context(embedded_postgres(dev_dir / "postgres"))
        print("starting embedded S3 ...", flush=True)
        bucket = Settings.from_env({}).s3_default_bucket
        s3, kind = stack.enter_context(embedded_s3(dev_dir / "s3", bucket, avoid=port))
        os.environ["AWS_ACCESS_KEY_ID"] = s3.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = s3.secret_key
        os.environ.pop("AWS_SESSION_TOKEN", None)
        settings = replace(
            without_stack_settings(configured or Settings()),
            database_url=database_url,
            s3_endpoint_url=s3.endpoint_url,
            s3_region=s3.region,
            port=port,
            # Any page may call the dev gateway (docs/api.md, "From a browser").
            cors_allowed_origins="*",
        )
        settings.check_listeners()
        asyncio.run(apply_migrations(settings.direct_database_url, settings.migrations_dir))
        demo = asyncio.run(ensure_demo(settings, dev_dir / "demo.json"))
        base_url = f"http://127.0.0.1:{port}"
        banner = (
            "\nattachments-gateway dev stack\n"
            f"  gateway     {base_url}\n"
            f"  api page    {base_url}/api/v1/docs\n"
            f"  postgres    {database_url}\n"
            f"  s3          {s3.endpoint_url} ({kind})\n"
            f"  workspace   {demo.workspace_id}\n"
            f"  read key    {demo.read_token}\n"
            f"  write key   {demo.write_token}\n"
            f"  attachment  {demo.attachment_id}\n\n"
            f"Download the demo file:\n  {demo.curl(base_url)}\n\n"
            "Ctrl-C stops everything.\n"
        )
        try:
            serve(settings, "127.0.0.1", port, on_listening=lambda: print(banner, flush=True))
        finally:
            # The gateway's shutdown put its signals back: the cleanup that follows must
            # not be cut short by another.
            ignore_further_signals()


# Settings the stack sets itself: its database and S3.
STACK_SETTINGS = ("database_", "s3_")


def without_stack_settings(configured: Settings) -> Settings:
    defaults = Settings()
    return replace(
        configured,
        **{
            field.name: getattr(defaults, field.name)
            for field in fields(Settings)
            if field.name.startswith(STACK_SETTINGS)
        },
    )


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Postgres on `data_dir`, stopped on the way out. pgserver would stop it only when
    no other process it remembers is alive, and it remembers a stack killed outright for
    good; the caller holds the folder (`holding`), so no one else is using it."""
    import pgserver

    server = pgserver.get_server(data_dir, cleanup_mode=None)  # type: ignore[attr-defined]
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()  # forgets this process
        if (data_dir / "postmaster.pid").exists():
            try:
                pgserver.pg_ctl(  # type: ignore[attr-defined]
                    ["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user
                )
            except subprocess.CalledProcessError:
                # Already gone, its pid file left behind (the next start clears it), or
                # refusing: either way, say so rather than hide why the stack stopped.
                print(f"Postgres did not stop cleanly: see {data_dir / 'log'}", flush=True)


@contextlib.contextmanager
def embedded_s3(data_dir: Path, bucket: str, avoid: int) -> Iterator[tuple[S3Server, str]]:
    """`avoid`: the gateway's port, chosen but not bound yet."""
    taken = frozenset({avoid})
    usable = PREFERRED_S3_PORT != avoid and port_is_free(PREFERRED_S3_PORT)
    port = PREFERRED_S3_PORT if usable else free_port(taken)
    if weed_binary() is not None:
        with run_seaweedfs(
            data_dir,
            DEV_ACCESS_KEY,
            DEV_SECRET_KEY,
            buckets=(bucket,),
            s3_port=port,
            avoid_ports=taken,
        ) as server:
            yield server, "SeaweedFS, checks signatures"
        return
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    moto.start()
    try:
        server = S3Server(f"http://127.0.0.1:{port}", DEV_ACCESS_KEY, DEV_SECRET_KEY)
        yield server, "moto, does not check signatures: no weed binary for this platform"
    finally:
        moto.stop()
