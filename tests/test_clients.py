"""The clients docs/api.md shows ("Clients"), run exactly as written against a real
gateway and SeaweedFS: the bytes, the saved name where the client saves under one, and
whether the client sent the key on to the object store (measured, for the docs' table)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from service.core.disposition import content_disposition
from service.web.app import create_app
from tests.support.environment import process_env
from tests.support.proxy import RecordingHttpProxy

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"
FILENAME = "Résumé 2026.pdf"
# What curl -OJ saves: the ASCII `filename`, as it ignores `filename*`.
ASCII_FILENAME = re.search(r'filename="([^"]+)"', content_disposition(FILENAME))[1]


def documented_samples() -> list[tuple[str, str]]:
    """(language, code) of each fenced block in the "Clients" section, in order."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("\n## Clients\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.DOTALL)


SAMPLES = documented_samples()
# How each runs, the tool it needs, and the file it leaves: None means "named by the
# response", which the sample prints (Python) or the client chooses (curl -OJ).
RUNNERS = {
    "curl -L": (("sh", "sample.sh"), "curl", "report.pdf"),
    "curl -OJ": (("sh", "sample.sh"), "curl", ASCII_FILENAME),
    "requests": (("{python}", "sample.py"), None, FILENAME),
    "node fetch": (("node", "sample.mjs"), "node", "report.pdf"),
    "go net/http": (("go", "run", "sample.go"), "go", "report.pdf"),
    "ruby Net::HTTP": (("ruby", "sample.rb"), "ruby", "report.pdf"),
}


def test_the_docs_show_exactly_these_clients():
    assert [language for language, _ in SAMPLES] == ["sh", "sh", "python", "js", "go", "ruby"]
    assert "-o report.pdf" in SAMPLES[0][1] and "-fLOJ" in SAMPLES[1][1]


@pytest.fixture
async def stack(serve_app, settings, make_tenant, make_attachment, seaweed):
    """A gateway whose presigned URLs point at a recording proxy in front of SeaweedFS."""
    async with RecordingHttpProxy(seaweed.endpoint_url) as proxy:
        client = await serve_app(create_app(replace(settings, s3_public_endpoint_url=proxy.url)))
        tenant = await make_tenant()
        body = os.urandom(300_000)
        attachment_id = await make_attachment(
            tenant.workspace_id, body, filename=FILENAME, content_type="application/pdf"
        )
        yield client, proxy, tenant, attachment_id, body


@pytest.mark.parametrize(
    ("name", "sample"), list(zip(RUNNERS, SAMPLES, strict=True)), ids=list(RUNNERS)
)
async def test_a_documented_client_downloads_the_file(stack, tmp_path, name, sample):
    command, tool, saved_as = RUNNERS[name]
    if tool is not None and shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (.ci/run installs it)")
    client, proxy, tenant, attachment_id, body = stack
    language, code = sample
    Path(tmp_path, command[-1]).write_text(code, encoding="utf-8")
    gateway = f"http://{client.server.host}:{client.server.port}"
    env = process_env(
        GATEWAY=gateway,
        TOKEN=tenant.read_token,
        ID=str(attachment_id),
        HOME=os.environ.get("HOME", str(tmp_path)),
    )
    argv = [part.format(python=sys.executable) for part in command]
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=240)
    assert process.returncode == 0, (out.decode(), err.decode()[-3000:])

    saved = Path(tmp_path, saved_as)
    assert saved.exists(), sorted(p.name for p in tmp_path.iterdir())
    assert saved.read_bytes() == body
    printed = out.decode()
    if saved_as == "report.pdf" and language != "sh":
        # The clients that save where they are told still got the file's own name.
        assert printed.strip() == content_disposition(FILENAME)
    # Measured for the docs: did the key travel to the object store?
    [(method, _, headers)] = proxy.requests
    assert method == "GET"
    assert "Authorization" not in headers, f"{name} sent the key on to S3"
