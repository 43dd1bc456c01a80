"""Starting and stopping the servers the dev stack (and the tests) run beside the gateway,
and what keeps a stack from outliving its command or another stack on its folder."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from .ports import port_is_free


class CannotStart(RuntimeError):
    """The stack cannot start as asked; the message says why, in one line."""


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Until something accepts connections on loopback `port`; the process must not exit."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.args!r} did not listen on {port}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: object) -> None:
    ignore_further_signals()
    raise KeyboardInterrupt


def _stopping_already(signum: int, frame: object) -> None:
    print("stopping already (SIGKILL ends it at once)", file=sys.stderr, flush=True)


def ignore_further_signals() -> None:
    """The stack is stopping: another signal would cut a cleanup short, and leave a server
    running that the cleanup was stopping."""
    for sig in ENDING_SIGNALS:
        signal.signal(sig, _stopping_already)


@contextlib.contextmanager
def ended_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (a `kill`, a closed terminal) end the stack as Ctrl-C does,
    through every cleanup, which no later signal interrupts. By default they end Python
    at once, and the servers that run in sessions of their own (SeaweedFS, Postgres)
    would outlive it."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in ENDING_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def refuse_taken_port(port: int) -> None:
    """Before anything starts: otherwise the stack would come up whole, then fail to
    listen (HAProxy would exit, and the port's other listener answer in its place)."""
    if not port_is_free(port):
        raise CannotStart(f"port {port} is in use: choose another with --port")


@contextlib.contextmanager
def starting_stack(dev_dir: Path, port: int) -> Iterator[Path]:
    """What a stack on `dev_dir` serving `port` does before starting anything: the folder
    held, signals made to stop it cleanly, the port checked. Yields the folder, absolute:
    the servers' command lines then say whose folder they serve."""
    # The embedded stack never needs the cloud metadata service: never let botocore try it.
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    folder = dev_dir.resolve()
    with holding(folder), ended_by_signals():
        refuse_taken_port(port)
        yield folder


@contextlib.contextmanager
def holding(folder: Path) -> Iterator[None]:
    """One stack at a time on `folder` (its servers' data): a second would start a second
    SeaweedFS on the same files, which fails on their lock halfway through. The kernel
    drops the lock with its holder, however that ends, so whoever holds it may take what
    is still running on the folder for a leftover."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = (folder / "lock").open("a+")
    except OSError as exc:
        raise CannotStart(f"{folder} cannot be used: {exc.strerror}") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise CannotStart(
                f"{folder} is in use by another `dev` or `cluster` (pid {holder})"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def stop_leftover(pid_file: Path, marker: str, grace: float = 5.0) -> None:
    """Stop the process group `pid_file` names if it still runs with `marker` (its data
    folder) on its command line: one an earlier stack left when it was killed outright."""
    try:
        leftover = psutil.Process(int(pid_file.read_text()))
        if marker not in leftover.cmdline():
            return  # its pid now someone else's
        os.killpg(leftover.pid, signal.SIGTERM)
        try:
            leftover.wait(grace)
        except psutil.TimeoutExpired:
            os.killpg(leftover.pid, signal.SIGKILL)
            leftover.wait(grace)
    except (OSError, ValueError, psutil.Error):
        return  # no pid file, or the process is gone
