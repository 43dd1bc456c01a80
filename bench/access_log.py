"""`python -m bench.access_log`: what the access log costs the shipped gateway under load,
measured inside one process, so that one launch's speed against another's drops out.

Two launches of the same build differ by up to a tenth in speed (bench/run.py's
paired_cost needs five of each to resolve 10 %). Here one gateway, as shipped (`make
bench`'s `shipped` build), takes turns every PHASE_SECONDS between its access log and no
line at all (AccessLogger.log doing nothing), while wrk keeps it saturated on the warm
workload; the process's CPU time and requests are summed for each turn. The difference of
CPU per request is the access log's cost: the work of each line, deferred or not, and
the writes (the lines a turn of the access log leaves waiting are written before it
closes). (aiohttp's own part, a clock read and a call per request while the access log
is enabled, is in both.) Results in bench/results/access_log.json.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.devstack.ports import free_port

from .run import (
    HERE,
    RESULTS,
    WARM_UP_SECONDS,
    build_env,
    database,
    pinned,
    prepare_to_load,
    run_wrk,
    start_process,
    stop_process,
    wait_listening,
    workload_data,
)

PHASE_SECONDS = 0.05
TURNS = ("access log", "no line")
COUNTS_FILE = HERE / ".work" / "access_log_counts.json"  # in prepare_to_load's workdir


def serve_taking_turns(port: int, counts_file: Path) -> int:
    """The gateway, its access log on and off by turns; on SIGUSR1 it writes each turn's
    requests and CPU seconds so far to `counts_file`."""
    from service.cli import main
    from service.web.access_log import AccessLogger

    shipped = AccessLogger.log

    def no_line(self: AccessLogger, request: Any, response: Any, time: float) -> None:
        pass

    implementations = (shipped, no_line)
    counts = {turn: [0, 0.0] for turn in TURNS}  # requests, CPU seconds
    turn, requests = 0, 0
    started, cpu_started = time.perf_counter(), time.process_time()

    def close_turn() -> None:
        nonlocal requests, cpu_started
        cpu = time.process_time()
        totals = counts[TURNS[turn]]
        totals[0] += requests
        totals[1] += cpu - cpu_started
        requests, cpu_started = 0, cpu

    def taking_turns(self: AccessLogger, request: Any, response: Any, time_: float) -> None:
        nonlocal turn, requests, started
        now = time.perf_counter()
        if now - started >= PHASE_SECONDS:
            if TURNS[turn] == "access log" and self._deferred is not None:
                # The turn's lines are made and written in it: left waiting, the timer's
                # flush would do it in whichever turn it fell, often the other one.
                self._deferred.handler.write_deferred()
            close_turn()
            turn, started = 1 - turn, now
        requests += 1
        implementations[turn](self, request, response, time_)

    def write_counts(*_: object) -> None:
        if TURNS[turn] == "access log":  # (as at the end of a turn)
            for handler in logging.getLogger().handlers:
                handler.flush()
        close_turn()
        counts_file.write_text(json.dumps(counts))

    AccessLogger.log = taking_turns  # type: ignore[method-assign,assignment]
    signal.signal(signal.SIGUSR1, write_counts)
    atexit.register(counts_file.unlink, missing_ok=True)
    return main(["serve", "--port", str(port)])


def start_taking_turns(port: int, database_url: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bench.access_log", "--serve", str(port)]
    return start_process(pinned(0, command), build_env("shipped", database_url))


def counts_now(process: subprocess.Popen[bytes], counts_file: Path) -> dict[str, Any]:
    counts_file.unlink(missing_ok=True)
    process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if counts_file.exists():
            return dict(json.loads(counts_file.read_text()))
        time.sleep(0.05)
    raise RuntimeError("the gateway did not write its counts")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    wrk, workdir = prepare_to_load()
    database_url, stop_database = await database(args, workdir)
    runs = []
    try:
        data = await workload_data(database_url, workdir)
        for launch in range(args.launches):
            port = free_port()
            process = start_taking_turns(port, database_url)
            try:
                await wait_listening(port, process)
                run_wrk(wrk, port, 64, WARM_UP_SECONDS["warm"], data)
                for connections in args.connections:
                    before = counts_now(process, COUNTS_FILE)
                    run_wrk(wrk, port, connections, args.seconds, data)
                    after = counts_now(process, COUNTS_FILE)
                    run = turns_compared(before, after)
                    run.update(launch=launch + 1, connections=connections)
                    runs.append(run)
                    print(f"  launch {launch + 1} c={connections:<5} {run}", flush=True)
            finally:
                stop_process(process)
    finally:
        stop_database()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "phase_seconds": PHASE_SECONDS,
        "seconds": args.seconds,
        "runs": runs,
    }


def turns_compared(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    per_request = {}
    for turn in TURNS:
        requests = after[turn][0] - before[turn][0]
        cpu = after[turn][1] - before[turn][1]
        per_request[turn] = cpu / max(requests, 1) * 1e6
    logged, unlogged = per_request["access log"], per_request["no line"]
    return {
        "cpu_us_with_access_log": round(logged, 1),
        "cpu_us_without": round(unlogged, 1),
        "added_us": round(logged - unlogged, 1),
        "cost": round(logged / unlogged - 1, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=int, default=20, help="length of each wrk run")
    parser.add_argument("--launches", type=int, default=3)
    parser.add_argument("--connections", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--database-url", help="use this Postgres instead of an embedded one")
    args = parser.parse_args()
    if args.serve:
        raise SystemExit(serve_taking_turns(args.serve, COUNTS_FILE))
    results = asyncio.run(measure(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "access_log.json").write_text(json.dumps(results, indent=2) + "\n")
    for connections in args.connections:
        runs = [run for run in results["runs"] if run["connections"] == connections]
        added = sorted(run["added_us"] for run in runs)
        costs = sorted(run["cost"] for run in runs)
        print(
            f"c={connections}: added {added} µs a request, cost {costs} "
            f"(median {costs[len(costs) // 2]:.1%})"
        )


if __name__ == "__main__":
    main()
