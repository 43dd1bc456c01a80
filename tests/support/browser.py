"""Headless Chromium (Debian's chromium and chromium-driver) through selenium, and a page
server on a second loopback origin."""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from service.devstack.ports import free_port

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = None if CHROMIUM and CHROMEDRIVER else "Debian's chromium and chromium-driver"


@contextlib.contextmanager
def chromium(downloads: Path) -> Iterator[object]:
    """A headless Chromium that saves downloads into `downloads` and logs every request
    it sends (the DevTools protocol's Network events)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # At DEBUG selenium logs every command with its arguments: keys handed to a page.
    logging.getLogger("selenium").setLevel(logging.INFO)

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespaces for the sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",  # no update checks, no field trials
        "--disable-component-update",
        "--disable-sync",
        "--metrics-recording-only",
        f"--user-data-dir={downloads.parent / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # The driver's path is given, so selenium's manager never looks for one online.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": True},
        )
        yield driver
    finally:
        driver.quit()


def requested_urls(driver: object) -> list[str]:
    """Every URL the browser asked for since the last call, from its performance log."""
    urls = []
    for entry in driver.get_log("performance"):  # type: ignore[attr-defined]
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def console_errors(driver: object) -> list[str]:
    """What the page logged as an error (CSP violations among them)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")  # type: ignore[attr-defined]
        if entry["level"] == "SEVERE"
    ]


def wait_for_download(downloads: Path, timeout: float = 20) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in downloads.iterdir() if not p.name.endswith(".crdownload")]
        if done and not any(p.name.endswith(".crdownload") for p in downloads.iterdir()):
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"nothing downloaded into {downloads}: {list(downloads.iterdir())}")


@contextlib.contextmanager
def page_server(directory: Path) -> Iterator[str]:
    """A static file server for `directory` on its own loopback origin."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), partial(Quiet, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
