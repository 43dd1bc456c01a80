"""HAProxy (Debian's package) round robin over gateways, health checks on /readyz: for
`make cluster` and the tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .ports import free_port
from .processes import refuse_taken_port, stop, wait_for_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def haproxy_available() -> bool:
    return Path(HAPROXY).exists()


def haproxy_config(port: int, backends: Sequence[int]) -> str:
    servers = "".join(
        f"    server gateway{n} 127.0.0.1:{backend} check\n" for n, backend in enumerate(backends)
    )
    return (
        "global\n"
        "    maxconn 8192\n"
        "defaults\n"
        "    mode http\n"
        "    timeout connect 1s\n"
        "    timeout client 30s\n"
        "    timeout server 30s\n"
        # A replica that refuses the connection (killed, restarting) costs no request:
        # the balancer tries another. Requests a replica had already taken fail with it.
        "    retries 3\n"
        "    option redispatch 1\n"
        "    retry-on conn-failure\n"
        "frontend gateways\n"
        f"    bind 127.0.0.1:{port}\n"
        "    default_backend gateways\n"
        "backend gateways\n"
        "    balance roundrobin\n"
        "    option httpchk GET /readyz\n"
        "    http-check expect status 200\n"
        "    default-server inter 300ms fall 2 rise 2\n" + servers
    )


@contextmanager
def run_haproxy(backends: Sequence[int], workdir: Path, port: int | None = None) -> Iterator[str]:
    """HAProxy on loopback (`port`, or a free one) in front of `backends`; yields its URL."""
    if port is not None:
        refuse_taken_port(port)
    port = port or free_port(frozenset(backends))
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "haproxy.cfg"
    config.write_text(haproxy_config(port, backends))
    log = (workdir / "haproxy.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own binary and arguments
        [HAPROXY, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
        log.close()
