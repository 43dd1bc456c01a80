"""A real PgBouncer (Debian's package) in transaction mode, in front of a Postgres: for `make
cluster` and the tests."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from .ports import free_port
from .processes import stop, wait_for_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def pgbouncer_available() -> bool:
    return Path(PGBOUNCER).exists()


def _upstream(dsn: str) -> tuple[str, int, str]:
    """Host (or socket directory), port and user of a libpq-style URL."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    return host, parts.port or 5432, parts.username or "postgres"


def _run_as(host: str) -> str:
    """PgBouncer refuses to run as root: the owner of a socket directory (which it must
    enter), else nobody."""
    if host.startswith("/"):
        return pwd.getpwuid(os.stat(host).st_uid).pw_name
    return "nobody"


@contextmanager
def run_pgbouncer(dsn: str, workdir: Path, pool_mode: str = "transaction") -> Iterator[str]:
    """PgBouncer on a free loopback port in front of `dsn`'s server, for any database
    name there; yields `dsn` with its host and port replaced by PgBouncer's."""
    host, port, user = _upstream(dsn)
    listen_port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    users = workdir / "users.txt"
    users.write_text(f'"{user}" ""\n')
    config = workdir / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={host} port={port}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {listen_port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {users}\n"
        f"pool_mode = {pool_mode}\n"
        "max_client_conn = 2000\n"
        "default_pool_size = 20\n"
        # asyncpg sends it at connect; PgBouncer would refuse the connection otherwise.
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for path in (users, config):
        path.chmod(0o644)
    log = (workdir / "pgbouncer.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own binary and arguments
        [PGBOUNCER, "-u", _run_as(host), str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(listen_port, process)
        parts = urlsplit(dsn)
        database = parts.path or "/postgres"
        yield urlunsplit(("postgresql", f"{user}@127.0.0.1:{listen_port}", database, "", ""))
    finally:
        stop(process)
        log.close()
