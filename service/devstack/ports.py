"""Free ports on loopback, for the servers the dev stack (and the tests) start."""

from __future__ import annotations

import socket


def free_port(avoid: frozenset[int] = frozenset()) -> int:
    """A port the kernel says is free now, other than `avoid` (ports promised elsewhere
    but not bound yet: the kernel would happily hand those out again)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As servers bind: a port in TIME_WAIT from our last run counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
