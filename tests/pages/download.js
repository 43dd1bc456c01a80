// The browser recipe of docs/api.md ("From a browser"), as tests/test_browser.py runs it.

// Ask for the link, not the redirect: a browser drops Authorization when it follows a
// redirect to another origin (whatwg/fetch#1544), so the 307 cannot carry the key to S3.
async function downloadAttachment(gateway, key, id) {
  const response = await fetch(`${gateway}/api/v1/attachments/${id}/download?redirect=false`, {
    headers: { Authorization: `Bearer ${key}` },
  });
  const requestId = response.headers.get("X-Request-ID"); // exposed by the gateway's CORS
  if (!response.ok) {
    const problem = await response.json(); // errors are readable too: 401, 404, 429 ...
    return { status: response.status, requestId, problem };
  }
  const { url, expires_at } = await response.json();
  // Navigating to the URL saves the file under the name its Content-Disposition gives.
  const link = document.createElement("a");
  link.href = url;
  link.download = "";
  document.body.append(link);
  link.click();
  link.remove();
  return { status: response.status, requestId, expiresAt: expires_at };
}

// Following the 307 from a page works only where the object store answers CORS itself
// (docs/api.md says which do); the key is not forwarded to it.
async function fetchFollowingTheRedirect(gateway, key, id) {
  const response = await fetch(`${gateway}/api/v1/attachments/${id}/download`, {
    headers: { Authorization: `Bearer ${key}` },
    cache: "no-store", // the test fetches the same URL twice, under two bucket rules
  });
  const bytes = new Uint8Array(await response.arrayBuffer());
  return {
    status: response.status,
    redirected: response.redirected,
    disposition: response.headers.get("Content-Disposition"), // only if the store exposes it
    bytes: Array.from(bytes),
  };
}

// RFC 6750's reason for a 401, from its challenge, which the gateway's CORS exposes.
async function challengeFor(gateway, key, id) {
  const response = await fetch(`${gateway}/api/v1/attachments/${id}/download?redirect=false`, {
    headers: key ? { Authorization: `Bearer ${key}` } : {},
  });
  return { status: response.status, challenge: response.headers.get("WWW-Authenticate") };
}
