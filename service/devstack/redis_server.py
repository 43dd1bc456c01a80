"""A redis-server (Debian's package) of our own on a free loopback port, for `make cluster`
and the tests. (A Redis already on 6379 is never used.)"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .ports import free_port
from .processes import stop, wait_for_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_available() -> bool:
    return Path(REDIS_SERVER).exists()


@dataclass
class RedisServer:
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.workdir / "redis.log").open("ab")
        options = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "save": "",  # nothing on disk: the tests' buckets are throwaway
            "appendonly": "no",
            "dir": str(self.workdir),
            "enable-debug-command": "local",  # DEBUG SLEEP: a slow Redis, on demand
        }
        arguments = [part for name, value in options.items() for part in (f"--{name}", value)]
        self.process = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            [REDIS_SERVER, *arguments],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, grace=10)
            self.process = None


@contextmanager
def run_redis(workdir: Path) -> Iterator[RedisServer]:
    workdir.mkdir(parents=True, exist_ok=True)
    server = RedisServer(free_port(), workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
