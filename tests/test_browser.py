"""A real browser (headless Chromium) against a real gateway process and SeaweedFS: the
documented recipe from a page on another origin, CORS as the browser enforces it, and the
API page at /api/v1/docs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import urllib.request
import uuid
from pathlib import Path

import pytest

from service.core.disposition import content_disposition
from service.core.tokens import display_prefix
from service.devstack.demo import BROWSER_CORS
from tests.support.browser import (
    MISSING,
    chromium,
    console_errors,
    page_server,
    requested_urls,
    wait_for_download,
)
from tests.support.environment import NO_ABUSE_LIMITS
from tests.support.processes import Gateway
from tests.support.proxy import RecordingHttpProxy
from tests.support.storage import BUCKET
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(MISSING is not None, reason=f"{MISSING} not installed"),
]

PAGES = Path(__file__).resolve().parent / "pages"


@pytest.fixture
def pages(tmp_path):
    """Two page origins: one the gateway allows, one it does not."""
    directory = tmp_path / "pages"
    shutil.copytree(PAGES, directory)
    with page_server(directory) as allowed, page_server(directory) as refused:
        yield allowed, refused


@pytest.fixture
async def storage(seaweed):
    """SeaweedFS behind a proxy that records what the browser sends it."""
    async with RecordingHttpProxy(seaweed.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
async def gateway(gateway_env, pages, storage, tmp_path):
    allowed, _ = pages
    env = {
        **gateway_env,
        **NO_ABUSE_LIMITS,
        "CORS_ALLOWED_ORIGINS": allowed,
        "S3_PUBLIC_ENDPOINT_URL": storage.url,
    }
    process = Gateway(env, log=tmp_path / "gateway.log")
    try:
        await process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def browser(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with chromium(downloads) as driver:
        driver.set_script_timeout(20)
        yield driver, downloads


async def test_the_docs_show_the_recipe_this_browser_runs():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text(encoding="utf-8")
    section = docs.split("\n## From a browser\n", 1)[1]
    [recipe] = re.findall(r"```js\n(.*?)```", section.split("\n### ", 1)[0], flags=re.DOTALL)
    assert recipe in (PAGES / "download.js").read_text(encoding="utf-8")


async def call(driver, function, *args):
    """Run one of tests/pages/download.js's functions in the page and return its result
    (in a thread: the proxy in front of S3 runs on this loop)."""
    return await asyncio.to_thread(
        driver.execute_async_script,
        "const done = arguments[arguments.length - 1];"
        f"{function}(...Array.from(arguments).slice(0, -1))"
        ".then(done, (error) => done({ error: String(error) }));",
        *args,
    )


def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def exposed_headers(url):
    """Whether the object store's answer to a redirected fetch exposes
    Content-Disposition (the dev stack's rule does, SeaweedFS's default does not)."""
    request = urllib.request.Request(url, headers={"Origin": "null"})
    with urllib.request.urlopen(request, timeout=10) as response:
        exposed = response.headers.get("Access-Control-Expose-Headers", "")
    return "content-disposition" in exposed.lower()


def access_lines(gateway, path):
    return [
        line
        for line in gateway.json_lines()
        if line.get("message") == "request" and line.get("path") == path
    ]


async def test_a_page_on_another_origin_gets_the_link_and_saves_the_file(
    gateway, storage, pages, browser, make_tenant, make_attachment
):
    driver, downloads = browser
    allowed, _ = pages
    tenant = await make_tenant()
    body = os.urandom(64 * 1024)
    attachment_id = await make_attachment(
        tenant.workspace_id, body, filename="Résumé 2026.pdf", content_type="application/pdf"
    )
    driver.get(f"{allowed}/index.html")
    result = await call(
        driver, "downloadAttachment", gateway.url, tenant.read_token, str(attachment_id)
    )
    assert result["status"] == 200, result
    saved = await asyncio.to_thread(wait_for_download, downloads)
    assert saved.name == "Résumé 2026.pdf"
    assert saved.read_bytes() == body
    # The navigation carried no key to the object store: only the presigned query.
    [(method, _, sent)] = storage.requests
    assert method == "GET" and "Authorization" not in sent

    path = f"/api/v1/attachments/{attachment_id}/download"
    await eventually(lambda: len(access_lines(gateway, path)) >= 2)  # flushed in batches
    lines = access_lines(gateway, path)
    # The browser's own preflight, answered without a key, then the GET with it.
    assert [(line["method"], line["status"]) for line in lines] == [("OPTIONS", 204), ("GET", 200)]
    assert "key_prefix" not in lines[0] and lines[1]["key_prefix"] == display_prefix(
        tenant.read_token
    )
    # The page read the exposed X-Request-ID: the same id the gateway logged.
    assert result["requestId"] == lines[1]["request_id"]


async def test_a_refused_origin_stays_refused(
    gateway, pages, browser, make_tenant, make_attachment
):
    driver, downloads = browser
    _, refused = pages
    tenant = await make_tenant()
    attachment_id = await make_attachment(tenant.workspace_id)
    driver.get(f"{refused}/index.html")
    result = await call(
        driver, "downloadAttachment", gateway.url, tenant.read_token, str(attachment_id)
    )
    assert result == {"error": "TypeError: Failed to fetch"}
    path = f"/api/v1/attachments/{attachment_id}/download"
    # Lines are written in the order requests end: once a request sent now is logged, a
    # GET the browser had sent before its answer would be logged too.
    marker = f"after-{uuid.uuid4().hex}"
    request = urllib.request.Request(f"{gateway.url}/healthz", headers={"X-Request-ID": marker})
    await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=5).close())
    await eventually(lambda: any(line.get("request_id") == marker for line in gateway.json_lines()))
    lines = access_lines(gateway, path)
    # The preflight got its 204 without permissions, so the browser never sent the GET.
    assert [(line["method"], line["status"]) for line in lines] == [("OPTIONS", 204)]
    assert list(downloads.iterdir()) == []


async def test_a_page_can_read_why_it_failed(gateway, pages, browser, make_tenant):
    driver, _ = browser
    allowed, _ = pages
    tenant = await make_tenant()
    driver.get(f"{allowed}/index.html")
    unknown_key = "ixk_" + "A" * 40
    result = await call(driver, "downloadAttachment", gateway.url, unknown_key, str(uuid.uuid4()))
    assert result["status"] == 401
    assert result["problem"]["problem"] == "unauthorized"
    assert result["requestId"] == result["problem"]["request_id"]
    result = await call(driver, "challengeFor", gateway.url, unknown_key, str(uuid.uuid4()))
    assert result == {"status": 401, "challenge": 'Bearer realm="api", error="invalid_token"'}
    result = await call(driver, "challengeFor", gateway.url, None, str(uuid.uuid4()))
    assert result == {"status": 401, "challenge": 'Bearer realm="api"'}
    result = await call(
        driver, "downloadAttachment", gateway.url, tenant.read_token, str(uuid.uuid4())
    )
    assert result["status"] == 404
    assert result["problem"]["problem"] == "not_found"
    assert result["requestId"] == result["problem"]["request_id"]


async def test_a_fetch_that_follows_the_redirect_reads_the_file_where_the_store_allows(
    gateway, storage, pages, browser, make_tenant, make_attachment, seaweed_client
):
    """SeaweedFS answers CORS for any origin when a bucket has no rule of its own (AWS S3
    answers none); the dev stack's rule also exposes Content-Disposition to the page."""
    driver, _ = browser
    allowed, _ = pages
    tenant = await make_tenant()
    body = os.urandom(10_000)
    object_key = f"objects/{uuid.uuid4()}"
    attachment_id = await make_attachment(
        tenant.workspace_id, body, filename="notes.txt", key=object_key
    )
    await asyncio.to_thread(driver.get, f"{allowed}/index.html")
    args = (gateway.url, tenant.read_token, str(attachment_id))

    result = await call(driver, "fetchFollowingTheRedirect", *args)
    assert result["status"] == 200 and result["redirected"], result.get("error")
    assert bytes(result["bytes"]) == body
    assert result["disposition"] is None  # SeaweedFS's default does not expose it
    # Chromium dropped the key on the hop to another origin and sent the opaque origin.
    [(method, _, sent)] = storage.requests
    assert method == "GET" and "Authorization" not in sent
    assert sent["Origin"] == "null"

    s3 = seaweed_client
    # The dev stack's rule (make dev and compose's seed give their bucket the same one).
    await asyncio.to_thread(s3.put_bucket_cors, Bucket=BUCKET, CORSConfiguration=BROWSER_CORS)
    try:
        # SeaweedFS's S3 server learns a bucket's new configuration from its filer a
        # moment later: until it answers with the rule, the browser would see the old one.
        probe = await asyncio.to_thread(
            s3.generate_presigned_url, "get_object", {"Bucket": BUCKET, "Key": object_key}
        )
        await eventually(lambda: asyncio.to_thread(exposed_headers, probe), timeout=10)
        result = await call(driver, "fetchFollowingTheRedirect", *args)
    finally:
        await asyncio.to_thread(s3.delete_bucket_cors, Bucket=BUCKET)
    assert result["status"] == 200 and bytes(result["bytes"]) == body
    assert result["disposition"] == content_disposition("notes.txt")


def try_it_out(driver, operation_id, **parameters):
    """Swagger UI's "Try it out" on one operation, with these parameter values (the
    others as the page fills them, "" to clear one): (status, body text, request URL)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.wait import WebDriverWait

    wait = WebDriverWait(driver, 20)
    operation = driver.find_element(By.ID, f"operations-attachments-{operation_id}")
    if not operation.find_elements(By.CSS_SELECTOR, ".try-out__btn"):
        operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        wait.until(lambda _: operation.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
    operation.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    for name, value in parameters.items():
        field = operation.find_element(By.CSS_SELECTOR, f"tr[data-param-name='{name}'] input")
        field.send_keys(Keys.CONTROL, "a")  # over the document's example
        field.send_keys(value or Keys.DELETE)
    operation.find_element(By.CSS_SELECTOR, ".execute").click()
    answer = wait.until(
        lambda _: operation.find_elements(By.CSS_SELECTOR, ".live-responses-table .response")
    )[0]
    status = answer.find_element(By.CSS_SELECTOR, ".response-col_status").text.split()[0]
    bodies = answer.find_elements(By.CSS_SELECTOR, ".response-col_description pre")
    text = driver.execute_script("return arguments[0].textContent", bodies[0]) if bodies else ""
    request_url = operation.find_element(By.CSS_SELECTOR, ".request-url pre").text
    return int(status), text, request_url


async def test_the_api_page_renders_from_its_own_origin_and_tries_every_route(
    gateway, browser, make_tenant, make_attachment
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.wait import WebDriverWait

    driver, _ = browser
    tenant = await make_tenant()
    body = os.urandom(4096)
    attachment_id = await make_attachment(tenant.workspace_id, body, filename="page.bin")
    requested_urls(driver)  # what the browser did before: its own new-tab page
    driver.get(f"{gateway.url}/api/v1/docs")
    wait = WebDriverWait(driver, 20)
    wait.until(
        ready.presence_of_element_located((By.ID, "operations-attachments-downloadAttachment"))
    )
    operations = driver.find_elements(By.CSS_SELECTOR, ".opblock")
    assert len(operations) >= 13  # every operation of the document, preflights included

    # Authorize with a key (a write key, which may read too) ...
    driver.find_element(By.CSS_SELECTOR, "button.authorize").click()
    key_input = wait.until(
        ready.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux input"))
    )
    key_input.send_keys(tenant.write_token)
    driver.find_element(By.CSS_SELECTOR, ".modal-ux .auth-btn-wrapper .authorize").click()
    driver.find_element(By.CSS_SELECTOR, ".modal-ux .btn-done").click()

    # ... then try the download: the page asks for the link, which works as it is.
    status, text, request_url = try_it_out(driver, "downloadAttachment", id=str(attachment_id))
    assert status == 200 and request_url.endswith("/download?redirect=false")
    assert await asyncio.to_thread(fetch, json.loads(text)["url"]) == body
    # The metadata, the list, a new upload and a deletion.
    status, text, _ = try_it_out(driver, "getAttachment", id=str(attachment_id))
    assert status == 200 and json.loads(text)["filename"] == "page.bin"
    status, text, _ = try_it_out(driver, "listAttachments", cursor="")
    assert status == 200
    assert [item["id"] for item in json.loads(text)["items"]] == [str(attachment_id)]
    status, text, _ = try_it_out(driver, "createAttachment")  # the document's example body
    assert status == 201 and json.loads(text)["status"] == "upload_pending"
    status, _, _ = try_it_out(driver, "deleteAttachment", id=str(attachment_id))
    assert status == 204

    # The preflights are documented, but not offered to try: a page cannot send one.
    preflight = driver.find_element(By.ID, "operations-attachments-preflightDownload")
    preflight.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(lambda _: preflight.find_elements(By.CSS_SELECTOR, ".opblock-body"))
    assert preflight.find_elements(By.CSS_SELECTOR, ".try-out__btn") == []

    # Nothing the page did left the gateway's origin (no CDN, no validator.swagger.io),
    # and the CSP refused nothing it needed.
    urls = requested_urls(driver)
    assert urls and f"{gateway.url}/api/v1/docs" in urls
    elsewhere = [url for url in urls if not url.startswith((gateway.url + "/", "data:"))]
    assert elsewhere == [], elsewhere[:5]
    assert console_errors(driver) == []
