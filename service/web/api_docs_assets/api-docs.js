// The gateway's API page: Swagger UI on the gateway's own OpenAPI document.
"use strict";

// A download answers 307 to object storage, which a page cannot follow and show
// (swagger-api/swagger-ui#4619): "Try it out" asks for the URL as JSON instead.
const DOWNLOAD = /\/api\/v1\/attachments\/[^/?#]+\/download$/;

function askForTheLink(request) {
  const url = new URL(request.url, window.location.href);
  if (DOWNLOAD.test(url.pathname) && !url.searchParams.has("redirect")) {
    url.searchParams.set("redirect", "false");
    request.url = url.toString();
  }
  return request;
}

window.addEventListener("load", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: new URL(root.dataset.specUrl, window.location.href).toString(),
    domNode: root,
    deepLinking: true,
    // Nothing leaves this origin: no call to validator.swagger.io.
    validatorUrl: null,
    // The key lives only in this tab's memory, never in localStorage.
    persistAuthorization: false,
    requestInterceptor: askForTheLink,
    // No "Try it out" on the CORS preflights: a page may not set Origin or
    // Access-Control-Request-Method (forbidden request headers), so the browser would
    // send a bare OPTIONS, which is no preflight, and show its 401.
    supportedSubmitMethods: ["get", "put", "post", "delete", "head", "patch"],
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
