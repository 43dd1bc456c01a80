"""`attachments-gateway`, the operator's command line.

Only the entry point lives here, so that it can install its one early signal handler
before the imports the commands need (most of a second) have begun.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from types import FrameType

# How a shell reports a process that SIGTERM ended (128 + 15).
TERMINATED = 128 + signal.SIGTERM


def main(argv: Sequence[str] | None = None) -> int:
    exit_on_sigterm_while_starting()
    from .command_line import main as run_command

    return run_command(argv)


def exit_on_sigterm_while_starting() -> None:
    """As a container's first process (PID 1) the kernel drops every signal the process
    has no handler for, so a SIGTERM (`docker stop`, a rolling update) that came before
    the server installed its own would be lost, and the container killed only at the end
    of its grace period. Until the server's handlers replace this one, SIGTERM ends the
    process as it ends any other. Anywhere but PID 1 the default already does."""
    if os.getpid() == 1:
        signal.signal(signal.SIGTERM, _exit_terminated)


def _exit_terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(TERMINATED)
