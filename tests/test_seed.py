"""`attachments-gateway seed`: the demo data docker compose's `seed` service creates, run
like every other command (it had crashed on its own output, and called an unwritable
state file a database outage)."""

from __future__ import annotations

import json
import stat


def test_seed_creates_the_demo_once_and_reuses_it(cli, tmp_path):
    state_file = tmp_path / "state" / "demo.json"
    first = cli("seed", "--state-file", str(state_file), "--json")
    demo = json.loads(first.stdout)
    assert set(demo) == {"workspace_id", "read_token", "write_token", "attachment_id", "curl"}
    assert demo["read_token"].startswith("ixk_") and demo["write_token"].startswith("ixk_")
    assert demo["curl"] == (
        f'curl -L -H "Authorization: Bearer {demo["read_token"]}" '
        f"http://127.0.0.1:8080/api/v1/attachments/{demo['attachment_id']}/download"
    )
    # The state file holds the tokens, for the owner only.
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert json.loads(state_file.read_text())["read_token"] == demo["read_token"]
    # The second run reuses all of it, and says so in plain text without --json.
    second = cli("seed", "--state-file", str(state_file), "--base-url", "http://gw.example")
    assert f"demo workspace {demo['workspace_id']}" in second.stdout
    assert f"read key       {demo['read_token']}" in second.stdout
    assert f"attachment     {demo['attachment_id']}" in second.stdout
    assert f"http://gw.example/api/v1/attachments/{demo['attachment_id']}/download" in (
        second.stdout
    )


async def test_an_unwritable_state_file_is_reported_as_such_and_creates_nothing(
    cli, tmp_path, conn
):
    """What the container's read-only root gave (there, as an unprivileged user): a state
    file that cannot be written. Here its parent is a file, which stops root too."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    count_demos = "SELECT count(*) FROM workspaces WHERE name = 'demo'"
    before = await conn.fetchval(count_demos)
    result = cli("seed", "--state-file", str(blocker / "demo.json"), expect=2)
    assert "cannot write the state file" in result.stderr
    assert "database" not in result.stderr
    assert await conn.fetchval(count_demos) == before
