"""Where a request's time goes in a gateway build: py-spy under wrk.

`python -m bench.profile [--server shipped] [--workload warm|cold] [--connections 64]
[--seconds 15] [--native] [--blocking]`: a workload of `bench.run` (warm: 10,000
attachments; cold: 1,000,000; 100 keys, an embedded Postgres), one server pinned to CPU
0, wrk on CPU 1, and py-spy sampling the server meanwhile (`pip install py-spy`).
`--server ceiling` profiles the bare aiohttp app, so that aiohttp's own functions can be
compared with the gateway's, share by share (docs/performance.md). Prints
the share of samples by the code they were in (its own time, by module and by function)
and leaves the raw samples in bench/.work/profile.txt, which flame-graph tools read
(collapsed stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .run import (
    HERE,
    SERVERS,
    SHARED_LIMITS,
    WARM_UP_SECONDS,
    WORKLOADS,
    database,
    ensure_wrk,
    is_gateway,
    launch,
    pinned,
    run_wrk,
    stop_process,
    wait_listening,
    workload_data,
)


def area(frame: str) -> str:
    """Whose code a collapsed-stack frame `function (path:line)` is."""
    path = frame.rpartition("(")[2]
    for prefix, name in (
        ("service/", "service (the gateway)"),
        ("aiohttp/", "aiohttp"),
        ("multidict/", "multidict, yarl"),
        ("yarl/", "multidict, yarl"),
        ("asyncio/", "asyncio"),
        ("asyncpg/", "asyncpg"),
    ):
        if path.startswith(prefix) or f"/{prefix}" in path:
            return name
    return "other (stdlib)"


def function(frame: str) -> str:
    """`function (path:line)` without its line: one entry per function."""
    name, _, where = frame.rpartition(" (")
    return f"{name} ({where.rpartition(':')[0]})"


def summarize(samples: Path, top: int) -> str:
    """Own time: where the innermost Python frame was. Time in C (uvloop's loop and the
    socket calls, hashlib, json) counts to the Python frame that called it."""
    own: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = 0
    for line in samples.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or not count.isdigit():
            continue
        total += int(count)
        own[function(frames[-1])] += int(count)
        areas[area(frames[-1])] += int(count)
    lines = [f"{total} samples; own time by area:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in areas.most_common()]
    lines.append(f"own time, the top {top} functions:")
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


def find_py_spy() -> str:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        sys.exit("bench.profile: py-spy is missing; pip install py-spy")
    return py_spy


def start_py_spy(
    py_spy: str, pid: int, seconds: int, samples: Path, native: bool, blocking: bool
) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` for `seconds`, on wrk's core, into collapsed stacks; with
    `native`, C frames too (then time in C counts to the C function).

    Without `blocking` py-spy reads the stacks while the process runs. Pausing it for each
    sample (py-spy's default) lands the pauses more often in system calls on this kind of
    VM, so frames that make them (the socket writes, the loop's getpid check) show several
    times their share of `perf record`'s; the non-blocking samples agree with perf.
    """
    command = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
    if native:
        command.append("--native")
    if not blocking:
        command.append("--nonblocking")
    command += ["--duration", str(seconds), "-o", str(samples)]
    return subprocess.Popen(
        pinned(1, command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def profile(args: argparse.Namespace, py_spy: str) -> str:
    wrk = ensure_wrk()
    workdir = HERE / ".work"
    workdir.mkdir(exist_ok=True)
    args.database_url = None
    database_url, stop_database = await database(args, workdir)
    try:
        data = await workload_data(database_url, workdir, args.workload)
        port, process = launch(args.server, database_url)
        try:
            await wait_listening(port, process)
            run_wrk(wrk, port, 64, WARM_UP_SECONDS[args.workload], data)
            samples = workdir / "profile.txt"
            spy = start_py_spy(
                py_spy, process.pid, args.seconds, samples, args.native, args.blocking
            )
            stats = run_wrk(wrk, port, args.connections, args.seconds, data)
            spy.wait(args.seconds + 30)
        finally:
            stop_process(process)
    finally:
        stop_database()
    header = (
        f"{args.server}, {args.workload}, {args.connections} connections: {stats['rps']:,} req/s"
    )
    return header + "\n" + summarize(samples, args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    builds = [
        "ceiling",
        *(name for name in SERVERS if is_gateway(name) and name not in SHARED_LIMITS),
    ]
    parser.add_argument("--server", choices=builds, default="shipped")
    parser.add_argument("--workload", choices=[w.name for w in WORKLOADS], default="warm")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--native", action="store_true", help="sample C frames too (uvloop, CPython, asyncpg)"
    )
    parser.add_argument("--blocking", action="store_true", help="pause the server for each sample")
    args = parser.parse_args()
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    print(asyncio.run(profile(args, find_py_spy())))


if __name__ == "__main__":
    main()
