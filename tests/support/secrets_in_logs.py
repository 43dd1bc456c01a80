"""No log line of the suite, at any level, holds a secret: a pytest plugin.

tests/conftest.py loads it (`pytest_plugins`). For the whole session a handler on the root
logger, at DEBUG, renders every record as the service renders it (a JSON line, the access
log's included) and checks it there and then, keeping only the lines that hold a secret:
memory does not grow with the suite. A phase of a test (setup, call, teardown) whose lines
hold one fails, whatever it asserted itself: session fixtures set up and torn down inside
those phases too. A line logged outside any test (at collection, say) fails the session.
Nothing depends on the order of the tests; tests/test_log_secrets.py checks it all.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

import pytest

from service.web.logs import JsonFormatter

SECRETS_IN_LOGS = re.compile(
    r"ixk_[0-9A-Za-z]{20,}|X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token"
    r"|Bearer\s+\S|Authorization"
)


def withheld(line: str) -> str:
    """A leaked line fit to print: everything from the first secret on is withheld."""
    match = SECRETS_IN_LOGS.search(line)
    if match is None:
        return line
    return f"{line[: match.start()]}{match.group()[:13]}... (the rest withheld)"


class SecretsInLogs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines_checked = 0
        self.access_lines_checked = 0  # the service's own access log (logger aiohttp.access)
        self.leaks: list[str] = []
        self.reported = 0  # leaks[:reported] are accounted for
        self.outside: list[str] = []  # those logged outside any test's phases
        self._watchers: list[list[str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        self.lines_checked += 1
        if record.name == "aiohttp.access":
            self.access_lines_checked += 1
        if SECRETS_IN_LOGS.search(line):
            self.leaks.append(line)
        for lines in self._watchers:
            lines.append(line)

    def unreported(self) -> list[str]:
        leaks = self.leaks[self.reported :]
        self.reported = len(self.leaks)
        return leaks

    @contextlib.contextmanager
    def watching(self) -> Iterator[list[str]]:
        """Every line rendered inside the block, for a test that looks at them itself."""
        lines: list[str] = []
        self._watchers.append(lines)
        try:
            yield lines
        finally:
            self._watchers.remove(lines)


SUITE_LOG_CHECK = SecretsInLogs()


def pytest_configure(config: pytest.Config) -> None:
    root = logging.getLogger()
    root.addHandler(SUITE_LOG_CHECK)
    root.setLevel(logging.DEBUG)


def pytest_unconfigure(config: pytest.Config) -> None:
    logging.getLogger().removeHandler(SUITE_LOG_CHECK)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    leaks = SUITE_LOG_CHECK.unreported()
    if leaks:
        text = "\n".join(
            [f"{len(leaks)} log line(s) of this {call.when} hold a secret:"]
            + [withheld(line) for line in leaks]
        )
        report.sections.append(("secrets in log lines", text))
        if report.passed:
            report.outcome = "failed"
            report.longrepr = text
    return report


def pytest_runtest_logstart() -> None:
    # Whatever leaked since the last test's teardown (at collection, say) was no test's.
    SUITE_LOG_CHECK.outside += SUITE_LOG_CHECK.unreported()


def pytest_sessionfinish(session: pytest.Session) -> None:
    SUITE_LOG_CHECK.outside += SUITE_LOG_CHECK.unreported()
    if SUITE_LOG_CHECK.outside:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUITE_LOG_CHECK.outside:
        terminalreporter.section("secrets in log lines outside any test", red=True)
        for line in SUITE_LOG_CHECK.outside:
            terminalreporter.line(withheld(line))
    terminalreporter.line(
        f"secrets check: {SUITE_LOG_CHECK.lines_checked} log lines checked"
        f" ({SUITE_LOG_CHECK.access_lines_checked} of the access log),"
        f" {len(SUITE_LOG_CHECK.leaks)} with a secret"
    )
