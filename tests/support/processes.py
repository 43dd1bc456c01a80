"""The gateway as a real process, for tests that need one (or two)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from service.devstack.ports import free_port


class Gateway:
    def __init__(self, env: dict[str, str], *args: str, log: Path, port: int | None = None) -> None:
        # Built with tests.support.environment: never a chance at the metadata address.
        assert env.get("AWS_EC2_METADATA_DISABLED") == "true", "use process_env/gateway_env"
        self.port = port or free_port()
        self.log = log
        with log.open("wb") as output:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--port", str(self.port), *args],
                env=env,
                # Beside its log, not in the checkout: a developer's .env there would
                # give it settings the test did not choose.
                cwd=log.parent,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.process.poll() is None, self.log.read_text()
                try:
                    async with session.get(self.url + "/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, self.log.read_text()
                await asyncio.sleep(0.1)

    def json_lines(self) -> list[dict[str, object]]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()  # a failed test must not leave it running
            self.process.wait()
            raise


async def metric(gateway: Gateway, name: str) -> float:
    """One sample of the gateway's /metrics, by its full name with labels."""
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/metrics") as response:
            for line in (await response.text()).splitlines():
                if line.startswith(name + " "):
                    return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


def error_lines(gateway: Gateway) -> list[dict[str, object]]:
    return [line for line in gateway.json_lines() if line["level"] in ("error", "critical")]
