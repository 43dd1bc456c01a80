"""Runs last: no log line of the whole suite, at any level, holds a secret."""

from __future__ import annotations

from tests.conftest import SECRETS_IN_LOGS, SUITE_LOGS


def test_no_secret_reached_any_log_line_of_the_suite():
    # The capture saw the suite: the service's own access log lines are among them.
    assert any('"message": "request"' in line for line in SUITE_LOGS.lines)
    leaks = [line for line in SUITE_LOGS.lines if SECRETS_IN_LOGS.search(line)]
    assert leaks == []
