"""`python -m bench.workers`: the gateway as shipped with `--workers 1` and `--workers 2`,
against the ceiling in one and in two processes sharing the port (SO_REUSEPORT).

The servers and wrk are not pinned, so that two workers can use two cores (the embedded
Postgres is pinned to CPU 1, as in `make bench`). On a 2-core machine this shows how much
a second worker gains while the load generator needs CPU too, not what two cores serve
alone (that needs the load from another machine). Warm workload,
one wrk run per build; results in bench/results/workers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

from service.devstack.ports import free_port

from .run import (
    HERE,
    RESULTS,
    WARM_UP_SECONDS,
    build_env,
    database,
    prepare_to_load,
    run_wrk,
    start_process,
    stop_process,
    wait_listening,
    workload_data,
)

BUILDS = (("ceiling", 1), ("ceiling", 2), ("shipped", 1), ("shipped", 2))


def start(name: str, processes: int, port: int, database_url: str) -> list[subprocess.Popen[bytes]]:
    if name == "ceiling":
        command = [sys.executable, str(HERE / "ceiling.py"), str(port), "reuse"]
        return [start_process(command) for _ in range(processes)]
    command = [sys.executable, "-m", "service", "serve", "--port", str(port)]
    command += ["--workers", str(processes)]
    return [start_process(command, build_env("shipped", database_url))]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    wrk, workdir = prepare_to_load()
    database_url, stop_database = await database(args, workdir)
    runs = []
    try:
        data = await workload_data(database_url, workdir)
        for name, processes in BUILDS:
            port = free_port()
            started = start(name, processes, port, database_url)
            try:
                await wait_listening(port, started[0])
                run_wrk(wrk, port, 64, WARM_UP_SECONDS["warm"], data, pin=False)
                stats = run_wrk(wrk, port, args.connections, args.seconds, data, pin=False)
            finally:
                for process in started:
                    process.terminate()
                for process in started:
                    stop_process(process)
            run = {"build": name, "processes": processes, **stats}
            runs.append(run)
            print(f"  {name:8} x{processes}  {stats}", flush=True)
    finally:
        stop_database()
    by = {(run["build"], run["processes"]): run["rps"] for run in runs}
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "connections": args.connections,
        "seconds": args.seconds,
        "runs": runs,
        "gain_ceiling": round(by[("ceiling", 2)] / by[("ceiling", 1)], 2),
        "gain_shipped": round(by[("shipped", 2)] / by[("shipped", 1)], 2),
        "shipped_vs_ceiling_1": round(by[("shipped", 1)] / by[("ceiling", 1)], 2),
        "shipped_vs_ceiling_2": round(by[("shipped", 2)] / by[("ceiling", 2)], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--database-url", help="use this Postgres instead of an embedded one")
    args = parser.parse_args()
    results = asyncio.run(measure(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "workers.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
