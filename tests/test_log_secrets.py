"""No log line, at any level, holds a secret: a real download at DEBUG shows it here, and
the check over every line of the suite (tests/support/secrets_in_logs.py) is shown to be
on, and to fail a run that leaks, wherever in the run the line comes from."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.support.environment import process_env
from tests.support.http import fetch
from tests.support.secrets_in_logs import SECRETS_IN_LOGS, SUITE_LOG_CHECK
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent


def access_lines(lines: list[str], request_id: str) -> list[dict[str, object]]:
    parsed = [json.loads(line) for line in lines]
    return [
        line
        for line in parsed
        if line["logger"] == "aiohttp.access" and line.get("request_id") == request_id
    ]


async def test_a_download_at_debug_leaves_no_secret_in_any_line(
    client, make_tenant, make_attachment
):
    assert logging.getLogger().getEffectiveLevel() == logging.DEBUG
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id, body=b"secret-free\n")
    path = f"/api/v1/attachments/{attachment_id}/download"
    with SUITE_LOG_CHECK.watching() as lines:
        # A real token in an Authorization header, and a presigned URL handed out and used.
        headers = {**tenant.auth(), "X-Request-ID": "secrets-1"}
        response = await client.get(path, headers=headers, allow_redirects=False)
        assert response.status == 307
        location = response.headers["Location"]
        assert (await fetch(location))[:2] == (200, b"secret-free\n")
        # The token in the query as well: refused, and still not logged.
        headers = {**tenant.auth(), "X-Request-ID": "secrets-2"}
        refused = await client.get(
            f"{path}?access_token={tenant.read_token}", headers=headers, allow_redirects=False
        )
        assert refused.status == 401
        await eventually(lambda: access_lines(lines, "secrets-2"), timeout=5)

    # The service's own access-log lines are among the lines checked.
    assert [line["status"] for line in access_lines(lines, "secrets-1")] == [307]
    assert [line["status"] for line in access_lines(lines, "secrets-2")] == [401]
    signature = parse_qs(urlsplit(location).query)["X-Amz-Signature"][0]
    for line in lines:
        assert not SECRETS_IN_LOGS.search(line), line
        assert tenant.read_token not in line and signature not in line, line


def test_the_suite_wide_check_is_on(request):
    root = logging.getLogger()
    assert SUITE_LOG_CHECK in root.handlers and root.level == logging.DEBUG
    assert request.config.pluginmanager.has_plugin("tests.support.secrets_in_logs")
    checked = SUITE_LOG_CHECK.lines_checked
    logging.getLogger("tests").debug("a line of no consequence")
    assert SUITE_LOG_CHECK.lines_checked == checked + 1
    # What it looks for: the secrets of this service and of S3's presigned URLs.
    for secret in (
        "ixk_UmAzQFoLjnBLEejadYD7tssghrtvkWgR2vgMTu",
        "Authorization: Bearer x",
        "?X-Amz-Signature=ab12",
        "X-Amz-Credential=AKIA",
        "X-Amz-Security-Token=FQo",
    ):
        assert SECRETS_IN_LOGS.search(secret), secret


def test_a_leak_fails_the_run_wherever_it_is_logged(tmp_path):
    """The same plugin in a run of its own: a line with a secret fails the test phase that
    logged it (call, or a session fixture's teardown), and one logged outside any test
    fails the session; the leaked lines are printed with their secret withheld."""
    (tmp_path / "test_leaks.py").write_text(
        textwrap.dedent("""
            import logging

            import pytest

            TOKEN = "ixk_" + "A" * 38
            logging.getLogger("scratch").info("at collection: Bearer %s", TOKEN)


            @pytest.fixture(scope="session")
            def leaks_at_the_end():
                yield
                logging.getLogger("scratch").debug("X-Amz-Signature=%s", "f" * 64)


            def test_logs_a_token():
                logging.getLogger("scratch").debug("sent %s", TOKEN)


            def test_logs_nothing_secret(leaks_at_the_end):
                logging.getLogger("scratch").debug("nothing to see")
        """)
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.support.secrets_in_logs",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            "--show-capture=no",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "test_leaks.py",
        ],
        cwd=tmp_path,
        env=process_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "FAILED test_leaks.py::test_logs_a_token" in output, output
    # The session fixture is torn down in the last test's teardown: an error there.
    assert "ERROR test_leaks.py::test_logs_nothing_secret" in output, output
    assert "secrets in log lines outside any test" in output, output
    assert '"message": "at collection: Bearer i... (the rest withheld)' in output, output
    assert "A" * 20 not in output and "f" * 20 not in output, output
    assert "secrets check: " in output and ", 3 with a secret" in output, output
